"""Two-sample drift test (MMD on embeddings) between a reference and a current window of inputs."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from taskloom_components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False, packages_to_install=[])
def drift_check(
    reference: str,
    current: str,
    result: Output[Artifact],
    metrics: Output[Metrics],
    page: Output[HTML],
    field: str = "text",
    method: str = "mmd",
    alpha: float = 0.05,
    permutations: int = 200,
    seed: int = 0,
) -> bool:
    """Test a current window against a reference.

    Inputs: reference, current (files: JSONL/Parquet rows or .npy embeddings). Outputs: result
    (drift.json), metrics (statistic, p_value, sizes), page (the verdict and numbers as HTML); returns
    the verdict. Calls: taskloom.steps.drift_step (DriftSpec)."""
    from pathlib import Path

    from taskloom.artifacts import write_bytes
    from taskloom.specs import DriftSpec
    from taskloom.steps import drift_step

    out = drift_step(
        reference,
        current,
        result.path,
        DriftSpec(field=field, method=method, alpha=alpha, permutations=permutations, seed=seed),
    )
    write_bytes(page.path, Path(out["page"]).read_bytes(), digest=False)
    for k in ("statistic", "p_value", "n_reference", "n_current"):
        if isinstance(out.get(k), (int, float)):
            metrics.log_metric(k, out[k])
    return bool(out["drift"])
