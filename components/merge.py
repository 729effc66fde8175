"""Merge the trained adapters into one full model (exact LoRA algebra, one tensor at a time)."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Input, Metrics, Model, Output

from taskloom_components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def merge_adapters(
    adapters: Input[List[Model]],
    merged: Output[Model],
    metrics: Output[Metrics],
    page: Output[HTML],
    method: str = "task_arithmetic",
    parameters: str = "",
):
    """Merge the adapters.

    Inputs: adapters (training runs, each with adapter/). Outputs: merged (full model +
    merge_report.json), metrics (adapters and the report's numbers), page (the merge report as HTML).
    Calls: taskloom.steps.merge_step (MergeStepSpec)."""
    from pathlib import Path

    from taskloom.artifacts import write_bytes
    from taskloom.specs import MergeStepSpec
    from taskloom.steps import merge_step, metric_values

    report = merge_step([a.path for a in adapters], merged.path, MergeStepSpec(method=method, parameters=parameters))
    write_bytes(page.path, Path(report["page"]).read_bytes(), digest=False)
    merged.metadata["method"] = method
    metrics.log_metric("adapters", len(adapters))
    for k, v in metric_values(report).items():
        metrics.log_metric(k, v)
