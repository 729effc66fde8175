"""Publish the promoted model where Triton serves from: declared in a ModelDeployment (its operator
loads it) when `model_deployment` names one, hot-loaded with canary and rollback when `server_url` names
the running Triton, else built and swapped in as files (local runs)."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from taskloom_components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def deploy_model(
    merged: Input[Model],
    repository: Output[Model],
    model_name: str = "taskloom",
    head_task: str = "",
    model_repository: str = "",
    server_url: str = "",
    model_deployment: str = "",
    namespace: str = "",
    timeout: float = 900.0,
) -> str:
    """Publish the merged model for Triton.

    Inputs: merged (a full model folder). Outputs: repository (the built model repository; deploy.json
    after a hot load or a ModelDeployment's rollout); returns the model name. Calls: taskloom.steps.deploy_step (DeploySpec)."""
    from taskloom.specs import DeploySpec
    from taskloom.steps import deploy_step

    result = deploy_step(
        merged.path,
        repository.path,
        DeploySpec(
            model_name=model_name,
            head_task=head_task,
            model_repository=model_repository,
            server_url=server_url,
            model_deployment=model_deployment,
            namespace=namespace,
            timeout=timeout,
        ),
    )
    repository.metadata.update({"model": result["model"], "head_task": result["head_task"]})
    if "version" in result:
        repository.metadata["version"] = result["version"]
    return result["model"]


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def deploy_adapter(
    adapter: Input[Model],
    repository: Output[Model],
    model_name: str = "taskloom",
    head_task: str = "",
    model_repository: str = "",
    server_url: str = "",
    model_deployment: str = "",
    namespace: str = "",
    timeout: float = 900.0,
) -> int:
    """Add a trained or generated adapter to the served model.

    Inputs: adapter (adapter/ and metrics.json). Outputs: repository (deploy.json); returns the version now
    served. Calls: taskloom.steps.deploy_adapter_step (DeploySpec)."""
    from taskloom.specs import DeploySpec
    from taskloom.steps import deploy_adapter_step

    result = deploy_adapter_step(
        adapter.path,
        repository.path,
        DeploySpec(
            model_name=model_name,
            head_task=head_task,
            model_repository=model_repository,
            server_url=server_url,
            model_deployment=model_deployment,
            namespace=namespace,
            timeout=timeout,
        ),
    )
    repository.metadata.update({"model": result["model"], "adapter": result["adapter"], "version": result["version"]})
    return int(result["version"])
