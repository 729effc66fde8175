"""Build the Triton model repository for the promoted model and publish it where Triton serves from."""

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
) -> str:
    from taskloom.steps import deploy_step

    result = deploy_step(merged.path, repository.path, name=model_name, head_task=head_task, publish_to=model_repository)
    repository.metadata.update({"model": result["model"], "head_task": result["head_task"]})
    return result["model"]
