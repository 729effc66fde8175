"""Train one LoRA adapter on the staged task; base vs tuned on the eval split become Metrics."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def train_adapter(
    dataset: Input[Dataset],
    max_steps: int,
    epochs: int,
    rank: int,
    base: str,
    device: str,
    seed: int,
    feature_repo: str,
    adapter_id: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    from taskloom.steps import train_step

    result = train_step(
        dataset.path, model.path, max_steps=max_steps, epochs=epochs, rank=rank, base=base,
        device=device, seed=seed, feature_repo=feature_repo, adapter_id=adapter_id,
    )
    model.metadata.update({k: result[k] for k in ("task", "type", "metric") if k in result})
    for k, v in result.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics.log_metric(k, v)
