"""Train ONE LoRA adapter on several tasks at once (multi-task), each task validated and profiled first.

Per task (fan-out): export → validate → profile (Feast). Then one training step (GPU) over every task:
tasks sampled at `temperature` (p ∝ n^(1/T)), one task per step (`mixing=task`) or every task in every
step (`mixed`), a head per task. Each task's base vs tuned lands in the step's Metrics and in Feast
under `adapter_id`. The alternative to training one adapter per task and merging them
(train_merge_deploy); BENCHMARKS.md compares the two.

    taskloom pipeline run train_joint -p tasks=rt-sentiment,chatterbot-topic -p max_steps=50
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Model

from taskloom_components.task_list import task_list
from taskloom_components.train import train_joint_adapter
from taskloom_pipelines.placement import FEATURE_REPO, offline, on_cpu, on_gpu, with_shared_volume
from taskloom_pipelines.staging import stage_task


class Outputs(NamedTuple):
    adapter: Model


@dsl.pipeline(
    name="train-joint",
    description="Validate and profile every task, then train one multi-task LoRA adapter on all of them.",
)
def train_joint(
    tasks: str = "rt-sentiment,chatterbot-topic",
    max_steps: int = 0,
    epochs: int = 0,
    rank: int = 0,
    base: str = "",
    device: str = "auto",
    seed: int = 0,
    sampling: str = "",
    temperature: float = 2.0,
    mixing: str = "task",
    adapter_id: str = "",
    feature_repo: str = FEATURE_REPO,
    nodes: int = 1,
    gpus_per_node: int = 1,
) -> Outputs:
    """`tasks`: comma-separated built-in names or task.yaml paths, all on one base. 0 or "" means the
    default. `adapter_id`: the Feast id of the adapter ("" = the task names joined by "+").
    `nodes`, `gpus_per_node`: more than one GPU hands the training to the Kubeflow Trainer (a TrainJob)."""
    names = on_cpu(offline(task_list(tasks=tasks)), memory="1Gi").set_display_name("tasks")
    with dsl.ParallelFor(names.output, name="per-task") as task:
        staged, checked = stage_task(task, feature_repo)
    trained = train_joint_adapter(
        datasets=dsl.Collected(staged.outputs["dataset"]),
        max_steps=max_steps,
        epochs=epochs,
        rank=rank,
        base=base,
        device=device,
        seed=seed,
        sampling=sampling,
        temperature=temperature,
        mixing=mixing,
        feature_repo=feature_repo,
        adapter_id=adapter_id,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )
    with_shared_volume(on_gpu(offline(trained))).set_display_name("train").set_caching_options(False)
    trained.after(checked)
    return Outputs(adapter=trained.outputs["model"])
