"""Evaluate the merged model on every task; promote it only if each task keeps its share of the gain."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def gate_model(
    datasets: Input[List[Dataset]],
    adapters: Input[List[Model]],
    merged: Input[Model],
    share: float,
    report: Output[Artifact],
    metrics: Output[Metrics],
) -> bool:
    from taskloom.steps import gate_step

    result = gate_step([d.path for d in datasets], [a.path for a in adapters], merged.path, report.path, share=share)
    for task, row in result["tasks"].items():
        for k in ("base", "single", "merged", "kept_share"):
            if isinstance(row.get(k), (int, float)):
                metrics.log_metric(f"{task}.{k}", row[k])
    metrics.log_metric("promote", int(bool(result["promote"])))
    return bool(result["promote"])
