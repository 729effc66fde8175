"""Publish the promoted model where Triton serves from: hot-loaded with canary and rollback when
`server_url` names the running Triton, else built and swapped in as files (local runs)."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def deploy_model(
    merged: Input[Model],
    model_name: str,
    head_task: str,
    model_repository: str,
    repository: Output[Model],
    server_url: str = "",
) -> str:
    from taskloom.steps import deploy_step

    result = deploy_step(merged.path, repository.path, name=model_name, head_task=head_task,
                         publish_to=model_repository, server_url=server_url)
    repository.metadata.update({"model": result["model"], "head_task": result["head_task"]})
    if "version" in result:
        repository.metadata["version"] = result["version"]
    return result["model"]
