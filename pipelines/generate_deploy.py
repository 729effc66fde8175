"""Serve a new task without training when a meta-LoRA generator can: generate its adapter, gate it, deploy.

export → validate → profile (Feast) → generate (from the description and `shots` examples) → if the
generated adapter beats the base on the task's eval split: deploy it; else: train one (GPU) and deploy that.

    taskloom pipeline run generate_deploy -p task=rt-sentiment -p generator=/path/to/generator
    taskloom pipeline compile generate_deploy --out generate_deploy.yaml
"""

from kfp import dsl

from taskloom_components.deploy import deploy_adapter
from taskloom_components.generate import generate_adapter
from taskloom_components.train import train_adapter
from taskloom_pipelines.placement import (
    FEATURE_REPO,
    MODEL_REPOSITORY,
    SHARED_MOUNT,
    offline,
    on_cpu,
    on_gpu,
    with_shared_volume,
    with_triton_admin_key,
)
from taskloom_pipelines.staging import stage_task

GENERATOR = f"{SHARED_MOUNT}/generators/minilm"


def _deploy(adapter, *, model_name, model_repository, server_url, model_deployment, model_deployment_namespace):
    deployed = deploy_adapter(
        adapter=adapter,
        model_name=model_name,
        model_repository=model_repository,
        server_url=server_url,
        model_deployment=model_deployment,
        namespace=model_deployment_namespace,
    )
    with_triton_admin_key(with_shared_volume(on_cpu(offline(deployed))))
    return deployed.set_caching_options(False)


@dsl.pipeline(
    name="generate-deploy",
    description="Generate a task's LoRA adapter with a meta-LoRA generator; deploy it if it beats the base, else train one.",
)
def generate_deploy(
    task: str = "rt-sentiment",
    generator: str = GENERATOR,
    shots: int = 0,
    seed: int = 0,
    min_gain: float = 0.0,
    max_steps: int = 0,
    epochs: int = 0,
    device: str = "auto",
    model_name: str = "taskloom",
    feature_repo: str = FEATURE_REPO,
    model_repository: str = MODEL_REPOSITORY,
    server_url: str = "",
    model_deployment: str = "",
    model_deployment_namespace: str = "",
) -> bool:
    """`task`: a built-in name or a task.yaml path. `generator`: the generator folder on the shared volume.
    `shots`: labelled train examples the generator conditions on (0: the description alone); `min_gain`:
    the margin over the base the generated adapter needs on the eval split to ship.
    `max_steps`, `epochs`, `device`: the fallback training run. `server_url` / `model_deployment`: as for
    train_merge_deploy (hot-load into a running Triton, or declare in a ModelDeployment); neither: the
    adapter is added as the next version of `model_repository`. Returns whether the generated adapter shipped."""
    staged, checked = stage_task(task, feature_repo)
    generated = generate_adapter(
        dataset=staged.outputs["dataset"], generator=generator, shots=shots, seed=seed, min_gain=min_gain
    )
    with_shared_volume(on_cpu(offline(generated), cpu="1", memory="4Gi")).set_display_name("generate")
    generated.set_caching_options(False).after(checked)
    where = dict(
        model_name=model_name,
        model_repository=model_repository,
        server_url=server_url,
        model_deployment=model_deployment,
        model_deployment_namespace=model_deployment_namespace,
    )
    with dsl.If(generated.outputs["Output"] == True, name="generated-beats-base"):  # noqa: E712 (a KFP condition)
        _deploy(generated.outputs["model"], **where).set_display_name("deploy generated")
    with dsl.Else(name="fallback-train"):
        trained = train_adapter(
            dataset=staged.outputs["dataset"],
            max_steps=max_steps,
            epochs=epochs,
            device=device,
            seed=seed,
            feature_repo=feature_repo,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        with_shared_volume(on_gpu(offline(trained))).set_display_name("train").set_caching_options(False)
        _deploy(trained.outputs["model"], **where).set_display_name("deploy trained")
    return generated.outputs["Output"]
