"""The per-task head every pipeline shares: export → validate → profile (Feast).

Called inside a pipeline's `dsl.ParallelFor`, so the tasks it creates belong to that loop.
"""

from taskloom_components.export import export_task
from taskloom_components.profile import profile_task
from taskloom_components.validate import validate_task
from taskloom_pipelines.placement import offline, on_cpu, with_shared_volume


def stage_task(task, feature_repo, adapter_id=""):
    """Export the task, validate its data (a failure stops the run), profile it after validation;
    returns (export task, validate task): training reads the first and runs after the second."""
    staged = on_cpu(offline(export_task(task=task))).set_display_name("export")
    checked = on_cpu(offline(validate_task(dataset=staged.outputs["dataset"]))).set_display_name("validate")
    profiled = profile_task(dataset=staged.outputs["dataset"], feature_repo=feature_repo, adapter_id=adapter_id)
    with_shared_volume(on_cpu(offline(profiled))).set_display_name("profile").set_caching_options(False)
    profiled.after(checked)
    return staged, checked
