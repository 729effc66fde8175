"""Stage a task (built-in name or task.yaml path) as a self-contained Dataset: task.yaml + its rows."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from taskloom_components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def export_task(task: str, dataset: Output[Dataset]):
    """Stage one task.

    Inputs: task (a built-in name or a task.yaml path). Outputs: dataset (task.yaml + its rows; metadata
    task, type). Calls: taskloom.steps.stage_task."""
    from taskloom.steps import stage_task

    dataset.metadata.update(stage_task(task, dataset.path))
