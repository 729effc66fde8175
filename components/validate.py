"""Check the staged task's data with Great Expectations; a failure stops the pipeline before training."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from taskloom_components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def validate_task(dataset: Input[Dataset], report: Output[Artifact], metrics: Output[Metrics], page: Output[HTML]):
    """Validate the staged task.

    Inputs: dataset (a staged task). Outputs: report (validation.json, validation.txt), metrics (checks,
    errors, warnings), page (the report as HTML, shown in the KFP UI); a failure stops the run. Calls:
    taskloom.steps.validate_step."""
    from pathlib import Path

    from taskloom.artifacts import write_bytes
    from taskloom.steps import metric_values, validate_step

    result = validate_step(dataset.path, report.path)
    write_bytes(page.path, Path(result["page"]).read_bytes(), digest=False)
    for k, v in metric_values(result).items():
        metrics.log_metric(k, v)
