"""Two-sample drift test (MMD on embeddings) between a reference and a current window of inputs."""

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def drift_check(
    reference: str,
    current: str,
    field: str,
    method: str,
    alpha: float,
    result: Output[Artifact],
    metrics: Output[Metrics],
) -> bool:
    """`reference` and `current` are files (JSONL/Parquet rows or .npy embeddings); returns the verdict."""
    from taskloom.steps import drift_step

    out = drift_step(reference, current, result.path, field=field, method=method, alpha=alpha)
    for k in ("statistic", "p_value", "n_reference", "n_current"):
        if isinstance(out.get(k), (int, float)):
            metrics.log_metric(k, out[k])
    return bool(out["drift"])
