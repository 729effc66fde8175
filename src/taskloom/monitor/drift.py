"""Drift between a reference and a current sample: check the input, embed if needed, run a detector.

    taskloom drift --reference ref.jsonl --current cur.jsonl --field text --method mmd

Rows (JSONL or Parquet) are embedded with the shared encoder (`embed_texts`); `.npy` files are
taken as embeddings already. A "labels" detector (chi2) takes the field's strings as labels as they
are (e.g. `--field label`), or a `.npy` of labels or class probabilities. Every mistake names the
file, the row or the option, in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from taskloom.errors import UserError
from taskloom.jsonfiles import read_numbered
from taskloom.models.encoder import embed_texts
from taskloom.monitor.detectors import DETECTORS

MIN_ROWS = 10  # per side: below this no test has power and the median bandwidth is noise
ROW_SUFFIXES = (".jsonl", ".json", ".parquet")


def check_options(method: str, alpha: float, permutations: int) -> None:
    if method not in DETECTORS:
        raise UserError(f"unknown drift method '{method}' (known: {', '.join(DETECTORS)})")
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise UserError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    if not isinstance(permutations, int) or isinstance(permutations, bool) or permutations < 1:
        raise UserError(f"permutations must be an integer >= 1, got {permutations}")


# A pair's own min_effect per part where measured (bench/drift_power.py, selection pool): each part's p
# is doubled (Bonferroni), so MMD can ask for a smaller effect than alone and keep false alarms <= 5 %.
PAIR_MIN_EFFECTS = {("mmd", "bbsd"): (0.0225, 0.05)}


def pair_min_effects(first: str, second: str) -> tuple[float, float]:
    return PAIR_MIN_EFFECTS.get((first, second), (DETECTORS[first].min_effect, DETECTORS[second].min_effect))


def pair_parts(method: str) -> tuple[str, str] | None:
    """("mmd", "bbsd") for "mmd+bbsd": an input detector paired with one on the served head's answers."""
    if "+" not in method:
        return None
    first, _, second = method.partition("+")
    if first not in DETECTORS or DETECTORS[first].inputs != "embeddings":
        raise UserError(f"drift method '{method}': '{first}' is not a detector on embeddings")
    if second not in DETECTORS or DETECTORS[second].inputs == "embeddings":
        raise UserError(f"drift method '{method}': '{second}' is not a detector on the head's answers (bbsd, chi2)")
    if min(pair_min_effects(first, second)) <= 0:
        raise UserError(f"drift method '{method}': a pair needs a min_effect > 0 on both detectors")
    return first, second


def drift_pair(
    reference,
    current,
    method: str,
    alpha: float = 0.05,
    permutations: int = 200,
    seed: int = 0,
    names: tuple[str, str] = ("reference", "current"),
) -> dict:
    """Both detectors of a pair, each on its own view: (embeddings, class probabilities) per side.

    p = Bonferroni over the two (2 · the smaller p), so the pair keeps the false-alarm rate of one
    test; effect = the larger of each part's effect over that part's min_effect in the pair
    (`pair_min_effects`; 1 = the smallest change worth an alarm in either view), so one --min-effect
    means the same for both."""
    parts = pair_parts(method)
    if parts is None:
        raise UserError(f"drift method '{method}' is not a pair (first+second)")
    results = [
        drift_embeddings(reference[i], current[i], part, alpha, permutations, seed, names)
        for i, part in enumerate(parts)
    ]
    p = min(1.0, 2 * min(r["p_value"] for r in results))
    effect = max(r["effect"] / m for r, m in zip(results, pair_min_effects(*parts)))
    out = {
        "method": method,
        "statistic": effect,
        "p_value": p,
        "effect": effect,
        "drift": bool(p < alpha),
        "n_reference": results[0]["n_reference"],
        "n_current": results[0]["n_current"],
        "alpha": float(alpha),
    }
    for r, part in zip(results, parts):
        out.update({f"p_{part}": r["p_value"], f"effect_{part}": r["effect"], f"n_reference_{part}": r["n_reference"]})
    return out


def check_embeddings(arr, name: str) -> np.ndarray:
    """A finite 2-D float array with at least MIN_ROWS rows, or a UserError naming `name`."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiu":
        raise UserError(f"{name}: embeddings must be numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise UserError(f"{name}: embeddings must be a 2-D array (rows × dims), got shape {arr.shape}")
    if len(arr) < MIN_ROWS:
        raise UserError(f"{name}: {len(arr)} rows, need at least {MIN_ROWS}")
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise UserError(f"{name}: row {bad + 1} contains NaN or infinite values")
    return arr


def check_labels(values, name: str) -> np.ndarray:
    """Labels (1-D) or class probabilities (2-D, finite numbers) with at least MIN_ROWS rows."""
    arr = np.asarray(values)
    if arr.ndim not in (1, 2):
        raise UserError(f"{name}: expected a list of labels or an array of class probabilities, got shape {arr.shape}")
    if arr.ndim == 2:
        if arr.dtype.kind not in "fiu":
            raise UserError(f"{name}: class probabilities must be numbers, got dtype {arr.dtype}")
        if not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr))[0][0])
            raise UserError(f"{name}: row {bad + 1} contains NaN or infinite values")
    elif arr.dtype.kind == "f":
        raise UserError(f"{name}: labels must be strings or integers, got floats")
    if len(arr) < MIN_ROWS:
        raise UserError(f"{name}: {len(arr)} rows, need at least {MIN_ROWS}")
    return arr


def drift_embeddings(
    reference,
    current,
    method: str = "mmd",
    alpha: float = 0.05,
    permutations: int = 200,
    seed: int = 0,
    names: tuple[str, str] = ("reference", "current"),
) -> dict:
    """Test current against reference; drift when p < alpha.

    {"method", "statistic", "p_value", "effect", "drift", "n_reference", "n_current", "alpha", ...detector extras}
    """
    check_options(method, alpha, permutations)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be an integer >= 0, got {seed!r}")
    detector = DETECTORS[method]
    if detector.inputs in ("labels", "probs"):
        ref, cur = check_labels(reference, names[0]), check_labels(current, names[1])
        if detector.inputs == "probs" and ref.ndim == 1:
            raise UserError(f"{names[0]}: method '{method}' tests class probabilities (rows × classes), not labels")
        if ref.ndim != cur.ndim:
            kinds = {1: "labels", 2: "class probabilities"}
            raise UserError(
                f"{names[1]}: gives {kinds[cur.ndim]} but {names[0]} gives {kinds[ref.ndim]}: give both the same way"
            )
        if ref.ndim == 2 and ref.shape[1] != cur.shape[1]:
            raise UserError(f"{names[1]}: {cur.shape[1]} classes differ from {names[0]}'s {ref.shape[1]}")
    else:
        ref = check_embeddings(reference, names[0])
        cur = check_embeddings(current, names[1])
        if ref.shape[1] != cur.shape[1]:
            raise UserError(f"{names[1]}: embedding dimension {cur.shape[1]} differs from {names[0]}'s {ref.shape[1]}")
    result = detector(ref, cur, permutations=permutations, seed=seed)
    out = {
        "method": method,
        "statistic": float(result["statistic"]),
        "p_value": float(result["p_value"]),
        "effect": float(result["effect"]),
        "drift": bool(result["p_value"] < alpha),
        "n_reference": len(ref),
        "n_current": len(cur),
        "alpha": float(alpha),
    }
    out.update({k: v for k, v in result.items() if k not in out})
    return out


def read_texts(path: Path, field: str) -> list[str]:
    """The `field` string of every row of a JSONL or Parquet file."""
    if path.suffix.lower() == ".parquet":
        import pandas as pd

        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise UserError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
        if field not in df.columns:
            raise UserError(f"{path}: missing field '{field}' (columns: {', '.join(map(str, df.columns))})")
        values = df[field].tolist()
    else:
        values = []
        for lineno, row in read_numbered(path):
            if not isinstance(row, dict):
                raise UserError(f"{path}: row {lineno}: expected a JSON object, got {type(row).__name__}")
            if field not in row:
                raise UserError(f"{path}: row {lineno}: missing field '{field}'")
            values.append((lineno, row[field]))
        for lineno, v in values:
            if not isinstance(v, str):
                raise UserError(f"{path}: row {lineno}: field '{field}' must be a string, got {type(v).__name__}")
        return [v for _, v in values]
    for i, v in enumerate(values, 1):
        if not isinstance(v, str):
            raise UserError(f"{path}: row {i}: field '{field}' must be a string, got {type(v).__name__}")
    return values


def read_sample(path, field: str, inputs: str = "embeddings"):
    """('texts', list[str]) for row files, ('embeddings', ndarray) for .npy; checked, never modified.

    For a "labels" detector a .npy holds labels or class probabilities (kind 'labels'); a "probs"
    detector (bbsd) takes class probabilities only, from a .npy."""
    path = Path(path)
    try:
        found = path.is_file()
    except OSError as e:  # e.g. a name too long for the file system
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not found:
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise UserError(f"{path}: not a readable .npy array ({type(e).__name__})") from None
        if inputs in ("labels", "probs"):
            return "labels", check_labels(arr, str(path))
        return "embeddings", check_embeddings(arr, str(path))
    if suffix not in ROW_SUFFIXES:
        raise UserError(f"{path}: unknown file type '{suffix}' (use .jsonl, .json, .parquet or .npy)")
    if inputs == "probs":
        raise UserError(
            f"{path}: this method tests the served head's class probabilities: give a .npy (rows × classes)"
        )
    texts = read_texts(path, field)
    if len(texts) < MIN_ROWS:
        raise UserError(f"{path}: {len(texts)} rows, need at least {MIN_ROWS}")
    return "texts", texts


def drift_files(
    reference,
    current,
    field: str = "text",
    method: str = "mmd",
    alpha: float = 0.05,
    permutations: int = 200,
    seed: int = 0,
) -> dict:
    """`drift_embeddings` on two files (rows are embedded with the shared encoder first)."""
    check_options(method, alpha, permutations)
    inputs = DETECTORS[method].inputs
    samples = [read_sample(reference, field, inputs), read_sample(current, field, inputs)]
    texts = [s for kind, s in samples if kind == "texts"]
    if texts and inputs == "embeddings":  # one encoder pass for both sides (labels: the strings are tested as they are)
        emb = embed_texts([t for group in texts for t in group])
        start = 0
        for i, (kind, s) in enumerate(samples):
            if kind == "texts":
                samples[i] = ("embeddings", emb[start : start + len(s)])
                start += len(s)
    out = drift_embeddings(
        samples[0][1],
        samples[1][1],
        method=method,
        alpha=alpha,
        permutations=permutations,
        seed=seed,
        names=(str(reference), str(current)),
    )
    out.update({"reference": str(reference), "current": str(current)})
    if texts:
        out["field"] = field
    return out
