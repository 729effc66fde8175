"""The tail both pipelines share: gate the merged model against every task, deploy it only when promoted.

Called inside a pipeline function, so the tasks it creates belong to that pipeline.
"""

from kfp import dsl

from taskloom_components.deploy import deploy_model
from taskloom_components.gate import gate_model
from taskloom_pipelines.placement import offline, on_gpu, with_shared_volume, with_triton_admin_key


def gate_then_deploy(
    staged,
    trained,
    merged,
    *,
    share,
    feature_repo,
    model_name,
    head_task,
    model_repository,
    server_url,
    model_deployment,
    model_deployment_namespace,
):
    """Gate (GPU: it evaluates the merged model) → deploy (GPU) under `dsl.If(promoted)`; returns the gate task."""
    gated = gate_model(
        datasets=dsl.Collected(staged.outputs["dataset"]),
        adapters=dsl.Collected(trained.outputs["model"]),
        merged=merged.outputs["merged"],
        share=share,
        feature_repo=feature_repo,
        model_name=model_name,
    )
    with_shared_volume(on_gpu(offline(gated))).set_display_name("gate").set_caching_options(False)
    with dsl.If(gated.outputs["Output"] == True, name="promoted"):  # noqa: E712 (a KFP condition, not Python)
        deployed = deploy_model(
            merged=merged.outputs["merged"],
            model_name=model_name,
            head_task=head_task,
            model_repository=model_repository,
            server_url=server_url,
            model_deployment=model_deployment,
            namespace=model_deployment_namespace,
        )
        with_triton_admin_key(with_shared_volume(on_gpu(offline(deployed))))
        deployed.set_display_name("deploy").set_caching_options(False)
    return gated
