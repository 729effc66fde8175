"""Train one LoRA adapter per task, merge them, gate the merge, deploy it to Triton.

Per task (fan-out): export → validate → profile (Feast) → train (GPU). Then: merge → gate (every
task keeps its share of the gain) → deploy (GPU; only when the gate promotes).

    taskloom pipeline run train_merge_deploy -p tasks=rt-sentiment,chatterbot-qa -p max_steps=50
    taskloom pipeline compile train_merge_deploy --out train_merge_deploy.yaml
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Model

from taskloom_components.merge import merge_adapters
from taskloom_components.task_list import task_list
from taskloom_components.train import train_adapter
from taskloom_pipelines.placement import FEATURE_REPO, MODEL_REPOSITORY, offline, on_cpu, on_gpu, with_shared_volume
from taskloom_pipelines.release import gate_then_deploy
from taskloom_pipelines.staging import stage_task


class Outputs(NamedTuple):
    promoted: bool
    gate: Artifact
    merged: Model


@dsl.pipeline(
    name="train-merge-deploy",
    description="Validate, profile and train a LoRA adapter per task; merge; gate; deploy to Triton.",
)
def train_merge_deploy(
    tasks: str = "rt-sentiment,chatterbot-qa",
    max_steps: int = 0,
    epochs: int = 0,
    rank: int = 0,
    base: str = "",
    device: str = "auto",
    seed: int = 0,
    sampling: str = "",
    merge_method: str = "task_arithmetic",
    merge_parameters: str = "",
    share: float = 0.9,
    head_task: str = "",
    model_name: str = "taskloom",
    feature_repo: str = FEATURE_REPO,
    model_repository: str = MODEL_REPOSITORY,
    server_url: str = "",
    model_deployment: str = "",
    model_deployment_namespace: str = "",
    nodes: int = 1,
    gpus_per_node: int = 1,
) -> Outputs:
    """`tasks`: comma-separated built-in names or task.yaml paths. 0 or "" means the default.
    `server_url`: the running Triton (e.g. http://taskloom-triton:8000) to hot-load the promoted model into,
    with canary and rollback; "" writes the model repository only.
    `model_deployment`: instead, declare the promoted model in this ModelDeployment (in
    `model_deployment_namespace`, "" = the run's own) and wait until its operator reports it Ready.
    `nodes`, `gpus_per_node`: the training step trains on its own GPU when both are 1; more hands each
    task's training to the Kubeflow Trainer as a TrainJob (torchrun on every node; the chart's runtime)."""
    names = on_cpu(offline(task_list(tasks=tasks)), memory="1Gi").set_display_name("tasks")
    with dsl.ParallelFor(names.output, name="per-task") as task:
        staged, checked = stage_task(task, feature_repo)
        trained = train_adapter(
            dataset=staged.outputs["dataset"],
            max_steps=max_steps,
            epochs=epochs,
            rank=rank,
            base=base,
            device=device,
            seed=seed,
            sampling=sampling,
            feature_repo=feature_repo,
            adapter_id="",
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        with_shared_volume(on_gpu(offline(trained))).set_display_name("train").set_caching_options(False)
        trained.after(checked)
    merged = merge_adapters(
        adapters=dsl.Collected(trained.outputs["model"]), method=merge_method, parameters=merge_parameters
    )
    on_cpu(offline(merged), cpu="2", memory="8Gi").set_display_name("merge")
    gated = gate_then_deploy(
        staged,
        trained,
        merged,
        share=share,
        feature_repo=feature_repo,
        model_name=model_name,
        head_task=head_task,
        model_repository=model_repository,
        server_url=server_url,
        model_deployment=model_deployment,
        model_deployment_namespace=model_deployment_namespace,
    )
    return Outputs(promoted=gated.outputs["Output"], gate=gated.outputs["report"], merged=merged.outputs["merged"])
