"""Evaluate the merged model on every task; promote it only if each task keeps its share of the gain.

Promoted: each task's merged score is recorded in Feast under the model's id. Not promoted: the log
names the failing task and the pipeline skips deploy, so the served model stays the previous one."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from taskloom_components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def gate_model(
    datasets: Input[List[Dataset]],
    adapters: Input[List[Model]],
    merged: Input[Model],
    report: Output[Artifact],
    metrics: Output[Metrics],
    share: float = 0.9,
    feature_repo: str = "",
    model_name: str = "taskloom",
) -> bool:
    """Gate the merged model.

    Inputs: datasets (the staged tasks), adapters (their training runs), merged (the merged model).
    Outputs: report (gate.json), metrics (per task base, single, merged, kept_share; promote); returns
    the decision. Calls: taskloom.steps.gate_step (GateSpec)."""
    from taskloom.specs import GateSpec
    from taskloom.steps import gate_step

    result = gate_step(
        [d.path for d in datasets],
        [a.path for a in adapters],
        merged.path,
        report.path,
        GateSpec(share=share, feature_repo=feature_repo, model_name=model_name),
    )
    print(result["message"])
    report.metadata.update({"model_id": result["model_id"], "failed": ",".join(result["failed"])})
    for task, row in result["tasks"].items():
        for k in ("base", "single", "merged", "kept_share"):
            if isinstance(row.get(k), (int, float)):
                metrics.log_metric(f"{task}.{k}", row[k])
    metrics.log_metric("promote", int(bool(result["promote"])))
    return bool(result["promote"])
