"""Train a LoRA adapter on the staged task (or one adapter on several tasks); base vs tuned on the eval
split become Metrics.

nodes x gpus_per_node > 1 hands the run to the Kubeflow Trainer (a TrainJob this step creates and waits
for); `run_id` is the KFP run's id (dsl.PIPELINE_JOB_ID_PLACEHOLDER), which labels that TrainJob."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from taskloom_components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def train_adapter(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    page: Output[HTML],
    classification: Output[ClassificationMetrics],
    max_steps: int = 0,
    epochs: int = 0,
    rank: int = 0,
    base: str = "",
    device: str = "auto",
    seed: int = 0,
    sampling: str = "",
    feature_repo: str = "",
    adapter_id: str = "",
    nodes: int = 1,
    gpus_per_node: int = 0,
    run_id: str = "",
):
    """Train one adapter on the staged task.

    Inputs: dataset (a staged task). Outputs: model (adapter/, metrics.json; metadata task, type,
    metric), metrics (base vs tuned), page (loss curves, base vs tuned as HTML), classification (the
    tuned adapter's confusion matrix on the eval split; other task types: no matrix, a `note`). Calls:
    taskloom.steps.train_step (TrainRunSpec)."""
    from pathlib import Path

    from taskloom.artifacts import write_bytes
    from taskloom.specs import TrainRunSpec
    from taskloom.steps import metric_values, train_step

    result = train_step(
        dataset.path,
        model.path,
        TrainRunSpec(
            max_steps=max_steps,
            epochs=epochs,
            rank=rank,
            base=base,
            device=device,
            seed=seed,
            sampling=sampling,
            feature_repo=feature_repo,
            adapter_id=adapter_id,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            run_id=run_id,
        ),
    )
    model.metadata.update({k: result[k] for k in ("task", "type", "metric") if k in result})
    for k, v in metric_values(result).items():
        metrics.log_metric(k, v)
    write_bytes(page.path, Path(result["page"]).read_bytes(), digest=False)
    if "confusion" in result:
        classification.log_confusion_matrix(result["confusion"]["labels"], result["confusion"]["matrix"])
    else:
        classification.metadata["note"] = f"a {result['type']} task: no confusion matrix (classification only)"


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def train_joint_adapter(
    datasets: Input[List[Dataset]],
    model: Output[Model],
    metrics: Output[Metrics],
    page: Output[HTML],
    max_steps: int = 0,
    epochs: int = 0,
    rank: int = 0,
    base: str = "",
    device: str = "auto",
    seed: int = 0,
    sampling: str = "",
    feature_repo: str = "",
    adapter_id: str = "",
    nodes: int = 1,
    gpus_per_node: int = 0,
    run_id: str = "",
    temperature: float = 0.0,
    mixing: str = "",
):
    """Train ONE adapter on every staged task (a head per task; tasks sampled at `temperature`, `mixing`
    task|mixed).

    Inputs: datasets (the staged tasks). Outputs: model (adapter/ with heads/<task>/, metrics.json),
    metrics (`<task>.<key>` per task; steps, train_seconds, tokens_per_s), page (loss curves per task,
    base vs tuned as HTML). Calls: taskloom.steps.train_step (JointTrainRunSpec)."""
    from pathlib import Path

    from taskloom.artifacts import write_bytes
    from taskloom.specs import JointTrainRunSpec
    from taskloom.steps import metric_values, train_step

    result = train_step(
        [d.path for d in datasets],
        model.path,
        JointTrainRunSpec(
            max_steps=max_steps,
            epochs=epochs,
            rank=rank,
            base=base,
            device=device,
            seed=seed,
            sampling=sampling,
            feature_repo=feature_repo,
            adapter_id=adapter_id,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            run_id=run_id,
            temperature=temperature,
            mixing=mixing,
        ),
    )
    model.metadata.update({"task": result["task"], "type": result["type"]})
    per_task = result.get("tasks") or {result["task"]: result}
    for task, row in per_task.items():
        for k, v in metric_values(row, prefix=f"{task}.").items():
            metrics.log_metric(k, v)
    for k in ("steps", "train_seconds", "tokens_per_s"):
        metrics.log_metric(k, result[k])
    write_bytes(page.path, Path(result["page"]).read_bytes(), digest=False)
