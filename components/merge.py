"""Merge the trained adapters into one full model (exact LoRA algebra, one tensor at a time)."""

from typing import List

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def merge_adapters(
    adapters: Input[List[Model]],
    method: str,
    parameters: str,
    merged: Output[Model],
    metrics: Output[Metrics],
):
    from taskloom.steps import metric_values, merge_step

    report = merge_step([a.path for a in adapters], merged.path, method=method, parameters=parameters)
    merged.metadata["method"] = method
    metrics.log_metric("adapters", len(adapters))
    for k, v in metric_values(report).items():
        metrics.log_metric(k, v)
