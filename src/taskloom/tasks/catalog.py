"""Built-in tasks made from the offline corpora: fixed, seeded train/validation/eval splits with no overlap.

    taskloom tasks list
    taskloom tasks export rt-sentiment --out runs/tasks/rt-sentiment

Each builder reads its corpus, removes duplicates (and texts that carry conflicting labels), and
splits so that no eval or validation text appears in train. The validation split is cut the way the
eval split is (per label; by document for Lee; by question for the chatterbot pairs): from the
corpus's unused rows for rt-sentiment, else from the rows that were train. Options are chosen on it,
so the eval split stays a report, never a choice. Nothing is cached on disk: building is fast.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from taskloom.artifacts import write_text
from taskloom.data.rows import write_rows
from taskloom.errors import UserError
from taskloom.tasks import corpora

SEED = 20240611
BASE_MODEL = "minilm"
GEN_BASE_MODEL = "smollm2"  # generation tasks need a causal LM
DATA_FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "eval": "eval.jsonl"}
VALIDATION_SHARE = 0.15  # of a small task's train rows (per label), held out for choosing options

# rt-sentiment
RT_TRAIN_PER_LABEL = 1500
RT_EVAL_PER_LABEL = 500
RT_VALIDATION_PER_LABEL = 500  # the corpus has ~5,400 unique texts of the smaller label: no need to cut train
# chatterbot-topic
TOPIC_MIN_ROWS = 40  # a topic needs this many unique utterances to be kept
TOPIC_MAX_ROWS = 200  # larger topics are sampled down so no topic dominates
TOPIC_MIN_WORDS = 2  # single words ("Yes.", "1963") say little about a topic
# chatterbot-topic, chatterbot-qa
EVAL_SHARE = 0.25
# lee-similarity
LEE_EVAL_DOCS = 15  # 15 eval documents -> 105 eval pairs
LEE_VALIDATION_DOCS = 6  # of the other 35: 6 -> 15 validation pairs, 29 -> 406 train pairs (no shared document)

Rows = list[dict]


def _key(text: str) -> str:
    """What counts as the same text: case and runs of whitespace ignored."""
    return " ".join(text.split()).casefold()


def _spec(name: str, task_type: str, description: str, labels: list[str] | None = None) -> dict:
    spec: dict[str, object] = {"name": name, "type": task_type, "description": description}
    if labels is not None:
        spec["labels"] = labels
    spec["data"] = dict(DATA_FILES)
    spec["base_model"] = BASE_MODEL
    return spec


def _unique_labelled(pairs: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """key -> (text, label) for texts that appear under exactly one label (first spelling kept)."""
    labels_of: dict[str, set[str]] = defaultdict(set)
    first: dict[str, str] = {}
    for text, label in pairs:
        text = text.strip()
        if not text:
            continue
        k = _key(text)
        labels_of[k].add(label)
        first.setdefault(k, text)
    return {k: (first[k], next(iter(ls))) for k, ls in labels_of.items() if len(ls) == 1}


def _n_validation(n_train: int) -> int:
    return round(n_train * VALIDATION_SHARE)


def _stratified_split(by_label: dict[str, list[str]], rng: random.Random, n_train, n_val, n_eval) -> dict[str, Rows]:
    """Per label (each count a function of the label's size): shuffle, take n_eval for eval, the next
    n_train for train and the next n_val for validation; then shuffle each split."""
    splits: dict[str, Rows] = {"train": [], "validation": [], "eval": []}
    for label in sorted(by_label):
        texts = sorted(by_label[label])
        rng.shuffle(texts)
        start = 0
        for split, count in (("eval", n_eval), ("train", n_train), ("validation", n_val)):
            k = count(len(texts))
            splits[split] += [{"text": t, "label": label} for t in texts[start : start + k]]
            start += k
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def build_rt_sentiment() -> tuple[dict, dict[str, Rows]]:
    unique = _unique_labelled(corpora.rotten_tomatoes())
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label in unique.values():
        by_label[label].append(text)
    splits = _stratified_split(
        by_label,
        random.Random(SEED),
        lambda n: RT_TRAIN_PER_LABEL,
        lambda n: RT_VALIDATION_PER_LABEL,
        lambda n: RT_EVAL_PER_LABEL,
    )
    spec = _spec(
        "rt-sentiment",
        "classification",
        "Decide whether a short movie review from Rotten Tomatoes is positive (fresh) or negative "
        "(rotten). English critic snippets of one or two sentences; sentiment classification.",
        ["fresh", "rotten"],
    )
    return spec, splits


def build_chatterbot_topic() -> tuple[dict, dict[str, Rows]]:
    pairs = [(u, topic) for topic, conv in corpora.chatterbot_conversations() for u in conv]
    unique = _unique_labelled(pairs)
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label in unique.values():
        if len(text.split()) >= TOPIC_MIN_WORDS:
            by_label[label].append(text)
    by_label = {t: texts for t, texts in by_label.items() if len(texts) >= TOPIC_MIN_ROWS}
    rng = random.Random(SEED + 1)

    def n_eval(n: int) -> int:
        return round(min(n, TOPIC_MAX_ROWS) * EVAL_SHARE)

    def n_val(n: int) -> int:
        return _n_validation(min(n, TOPIC_MAX_ROWS) - n_eval(n))

    splits = _stratified_split(by_label, rng, lambda n: min(n, TOPIC_MAX_ROWS) - n_eval(n) - n_val(n), n_val, n_eval)
    labels = sorted(by_label)
    spec = _spec(
        "chatterbot-topic",
        "classification",
        "Name the topic of one line of casual chatbot conversation (a user's question or the bot's "
        f"reply), choosing among {len(labels)} topics: {', '.join(labels)}. Short informal English "
        "utterances; topic classification.",
        labels,
    )
    return spec, splits


def build_chatterbot_qa() -> tuple[dict, dict[str, Rows]]:
    seen: set[str] = set()
    rows: list[dict] = []
    for _topic, conv in corpora.chatterbot_conversations():
        if len(conv) < 2:
            continue
        query, answer = conv[0].strip(), conv[1].strip()
        q, a = _key(query), _key(answer)
        if not q or not a or q == a or q in seen or a in seen:
            continue  # one answer per question; no text is both a question and an answer
        seen.update((q, a))
        rows.append({"query": query, "positive": answer})
    rng = random.Random(SEED + 2)
    rng.shuffle(rows)
    n_eval = round(len(rows) * EVAL_SHARE)
    n_val = _n_validation(len(rows) - n_eval)
    spec = _spec(
        "chatterbot-qa",
        "retrieval",
        "Given a user's question or remark to a chatbot, find the bot's fitting reply among many "
        "candidate replies. Short English chit-chat, trivia, coding and AI questions; question to "
        "answer retrieval.",
    )
    return spec, {"train": rows[n_eval + n_val :], "validation": rows[n_eval : n_eval + n_val], "eval": rows[:n_eval]}


def build_chatterbot_gen() -> tuple[dict, dict[str, Rows]]:
    """chatterbot-qa's unique question/answer pairs and split, as instruction pairs for a causal LM.

    Sharing the split keeps every eval question of either task out of both tasks' training rows.
    """
    _qa_spec, qa_splits = build_chatterbot_qa()
    spec = _spec(
        "chatterbot-gen",
        "generation",
        "Reply to a user's question or remark the way the chatbot does: write its short answer as "
        "free text. English chit-chat, trivia, coding and AI questions; instruction following, "
        "scored by the answer's negative log-likelihood per token.",
    )
    spec["base_model"] = GEN_BASE_MODEL

    def pairs(rows: Rows) -> Rows:
        return [{"prompt": r["query"], "response": r["positive"]} for r in rows]

    return spec, {split: pairs(rows) for split, rows in qa_splits.items()}


def build_lee_similarity() -> tuple[dict, dict[str, Rows]]:
    docs, ratings = corpora.lee_corpus()
    ids = list(range(len(docs)))
    random.Random(SEED + 3).shuffle(ids)
    eval_docs, train_docs = sorted(ids[:LEE_EVAL_DOCS]), ids[LEE_EVAL_DOCS:]  # train_docs keep the shuffle

    def pairs(group: list[int]) -> Rows:
        return [
            {"text_a": docs[i], "text_b": docs[j], "score": round(float(ratings[i, j]), 6)}
            for a, i in enumerate(group)
            for j in group[a + 1 :]
        ]

    spec = _spec(
        "lee-similarity",
        "pair_similarity",
        "Rate how similar two Australian news articles are in meaning, from 0 (unrelated) to 1 "
        "(about the same story), matching the average judgement of human readers (Lee corpus). "
        "Document-level semantic similarity of English news.",
    )
    val_docs, train_docs = sorted(train_docs[:LEE_VALIDATION_DOCS]), sorted(train_docs[LEE_VALIDATION_DOCS:])
    return spec, {"train": pairs(train_docs), "validation": pairs(val_docs), "eval": pairs(eval_docs)}


BUILDERS: dict[str, Callable[[], tuple[dict, dict[str, Rows]]]] = {
    "rt-sentiment": build_rt_sentiment,
    "chatterbot-topic": build_chatterbot_topic,
    "chatterbot-qa": build_chatterbot_qa,
    "lee-similarity": build_lee_similarity,
    "chatterbot-gen": build_chatterbot_gen,
}
TASK_NAMES: list[str] = list(BUILDERS)


def build_splits(name: str) -> tuple[dict, dict[str, Rows]]:
    """(spec_dict, {"train", "validation", "eval": rows}) of a built-in task; the same every time."""
    if name not in BUILDERS:
        raise UserError(f"unknown task {name!r}: use one of [{', '.join(TASK_NAMES)}]")
    return BUILDERS[name]()


def build_task(name: str) -> tuple[dict, Rows, Rows]:
    """(spec_dict, train_rows, eval_rows) of a built-in task: the spec names these two files only (the
    validation rows are in neither; `build_splits` has all three)."""
    spec, splits = build_splits(name)
    spec["data"] = {split: DATA_FILES[split] for split in ("train", "eval")}
    return spec, splits["train"], splits["eval"]


def _sample(rows: Rows, n: int | None, seed: int) -> Rows:
    """A seeded subset of at most `n` rows, in their original order (None keeps all)."""
    if n is None or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def export_task(
    name: str, out_dir: str | Path, max_train_rows: int | None = None, max_eval_rows: int | None = None
) -> Path:
    """Write `task.yaml` + train.jsonl + validation.jsonl + eval.jsonl into `out_dir`; returns the task.yaml path.

    Each file is written atomically (sha256 beside it); task.yaml comes last, so it never points
    at data that is not there yet. `max_*_rows` keep a seeded subset (short runs, e.g. tests); the
    validation split is cut like eval.
    """
    import yaml

    spec, splits = build_splits(name)
    cap = {"train": (max_train_rows, 1), "validation": (max_eval_rows, 3), "eval": (max_eval_rows, 2)}
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    for split, (n, seed) in cap.items():
        write_rows(out / DATA_FILES[split], _sample(splits[split], n, seed=seed))
    body = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)
    return write_text(out / "task.yaml", body)


def print_catalog() -> None:
    """A table of the built-in tasks: name, type, rows per split, description."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="taskloom built-in tasks", show_lines=True)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("train rows", justify="right")
    table.add_column("validation rows", justify="right")
    table.add_column("eval rows", justify="right")
    table.add_column("description")
    for name in TASK_NAMES:
        spec, splits = build_splits(name)
        counts = [str(len(splits[s])) for s in ("train", "validation", "eval")]
        table.add_row(name, spec["type"], *counts, escape(spec["description"]))
    Console().print(table)
