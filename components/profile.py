"""Profile the task's training rows and write the profile and drift reference to Feast."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from taskloom_components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def profile_task(
    dataset: Input[Dataset],
    profile: Output[Artifact],
    metrics: Output[Metrics],
    feature_repo: str = "",
    adapter_id: str = "",
):
    """Profile the staged task.

    Inputs: dataset (a staged task). Outputs: profile (profile.json, reference.npy), metrics (the
    profile's numbers); Feast: the task's profile and drift reference. Calls: taskloom.steps.profile_step
    (ProfileSpec)."""
    from taskloom.specs import ProfileSpec
    from taskloom.steps import metric_values, profile_step

    result = profile_step(dataset.path, profile.path, ProfileSpec(feature_repo=feature_repo, adapter_id=adapter_id))
    for k, v in metric_values(result).items():
        metrics.log_metric(k, v)
