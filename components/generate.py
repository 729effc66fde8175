"""Generate a LoRA adapter for the staged task from its description (and k examples) with a meta-LoRA
generator; base vs generated on the eval split become Metrics, and the returned flag says whether the
generated adapter beats the base (generate_deploy trains one instead when it does not)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from taskloom_components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def generate_adapter(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    generator: str = "",
    shots: int = 0,
    seed: int = 0,
    min_gain: float = 0.0,
) -> bool:
    """Generate one adapter for the staged task.

    Inputs: dataset (a staged task). Outputs: model (adapter/, metrics.json, as train_adapter lays them
    out; metadata task, type, metric), metrics (base vs generated); returns whether the generated adapter
    beats the base on the eval split. Calls: taskloom.steps.generate_step (GenerateSpec)."""
    from taskloom.specs import GenerateSpec
    from taskloom.steps import generate_step, metric_values

    result = generate_step(
        dataset.path, model.path, GenerateSpec(generator=generator, shots=shots, seed=seed, min_gain=min_gain)
    )
    model.metadata.update({k: result[k] for k in ("task", "type", "metric") if k in result})
    for key, value in metric_values(result).items():
        metrics.log_metric(key, value)
    return result["beats_base"]
