"""Profile the task's training rows and write the profile and drift reference to Feast."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def profile_task(
    dataset: Input[Dataset],
    feature_repo: str,
    adapter_id: str,
    profile: Output[Artifact],
    metrics: Output[Metrics],
):
    from taskloom.steps import metric_values, profile_step

    result = profile_step(dataset.path, profile.path, feature_repo=feature_repo, adapter_id=adapter_id)
    for k, v in metric_values(result).items():
        metrics.log_metric(k, v)
