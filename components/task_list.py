"""Split the comma-separated `tasks` parameter into the list a pipeline fans out over."""

from typing import List

from kfp import dsl

from taskloom_components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def task_list(tasks: str) -> List[str]:
    """Split the task list.

    Inputs: tasks (comma-separated built-in names or task.yaml paths). Outputs: the list, one item per
    task. Calls: taskloom.steps.parse_task_list."""
    from taskloom.steps import parse_task_list

    return parse_task_list(tasks)
