"""Built-in tasks made from the offline corpora: fixed, seeded train/eval splits with no overlap.

    taskloom tasks list
    taskloom tasks export rt-sentiment --out runs/tasks/rt-sentiment

Each builder reads its corpus, removes duplicates (and texts that carry conflicting labels), and
splits so that no eval text appears in train. Nothing is cached on disk: building is fast.
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
DATA_FILES = {"train": "train.jsonl", "eval": "eval.jsonl"}

# rt-sentiment
RT_TRAIN_PER_LABEL = 1500
RT_EVAL_PER_LABEL = 500
# chatterbot-topic
TOPIC_MIN_ROWS = 40  # a topic needs this many unique utterances to be kept
TOPIC_MAX_ROWS = 200  # larger topics are sampled down so no topic dominates
TOPIC_MIN_WORDS = 2  # single words ("Yes.", "1963") say little about a topic
# chatterbot-topic, chatterbot-qa
EVAL_SHARE = 0.25
# lee-similarity
LEE_EVAL_DOCS = 15  # 15 eval documents -> 105 eval pairs; 35 train documents -> 595 train pairs

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


def _stratified_split(by_label: dict[str, list[str]], rng: random.Random, n_train, n_eval) -> tuple[Rows, Rows]:
    """Per label: shuffle, take n_eval(label) for eval and n_train(label) for train, then shuffle both."""
    train, eval_ = [], []
    for label in sorted(by_label):
        texts = sorted(by_label[label])
        rng.shuffle(texts)
        k_eval, k_train = n_eval(len(texts)), n_train(len(texts))
        eval_ += [{"text": t, "label": label} for t in texts[:k_eval]]
        train += [{"text": t, "label": label} for t in texts[k_eval : k_eval + k_train]]
    rng.shuffle(train)
    rng.shuffle(eval_)
    return train, eval_


def build_rt_sentiment() -> tuple[dict, Rows, Rows]:
    unique = _unique_labelled(corpora.rotten_tomatoes())
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label in unique.values():
        by_label[label].append(text)
    train, eval_ = _stratified_split(
        by_label, random.Random(SEED), lambda n: RT_TRAIN_PER_LABEL, lambda n: RT_EVAL_PER_LABEL
    )
    spec = _spec(
        "rt-sentiment",
        "classification",
        "Decide whether a short movie review from Rotten Tomatoes is positive (fresh) or negative "
        "(rotten). English critic snippets of one or two sentences; sentiment classification.",
        ["fresh", "rotten"],
    )
    return spec, train, eval_


def build_chatterbot_topic() -> tuple[dict, Rows, Rows]:
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

    train, eval_ = _stratified_split(by_label, rng, lambda n: min(n, TOPIC_MAX_ROWS) - n_eval(n), n_eval)
    labels = sorted(by_label)
    spec = _spec(
        "chatterbot-topic",
        "classification",
        "Name the topic of one line of casual chatbot conversation (a user's question or the bot's "
        f"reply), choosing among {len(labels)} topics: {', '.join(labels)}. Short informal English "
        "utterances; topic classification.",
        labels,
    )
    return spec, train, eval_


def build_chatterbot_qa() -> tuple[dict, Rows, Rows]:
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
    spec = _spec(
        "chatterbot-qa",
        "retrieval",
        "Given a user's question or remark to a chatbot, find the bot's fitting reply among many "
        "candidate replies. Short English chit-chat, trivia, coding and AI questions; question to "
        "answer retrieval.",
    )
    return spec, rows[n_eval:], rows[:n_eval]


def build_chatterbot_gen() -> tuple[dict, Rows, Rows]:
    """chatterbot-qa's unique question/answer pairs and split, as instruction pairs for a causal LM.

    Sharing the split keeps every eval question of either task out of both tasks' training rows.
    """
    _qa_spec, train, eval_ = build_chatterbot_qa()
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

    return spec, pairs(train), pairs(eval_)


def build_lee_similarity() -> tuple[dict, Rows, Rows]:
    docs, ratings = corpora.lee_corpus()
    ids = list(range(len(docs)))
    random.Random(SEED + 3).shuffle(ids)
    eval_docs, train_docs = sorted(ids[:LEE_EVAL_DOCS]), sorted(ids[LEE_EVAL_DOCS:])

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
    return spec, pairs(train_docs), pairs(eval_docs)


BUILDERS: dict[str, Callable[[], tuple[dict, Rows, Rows]]] = {
    "rt-sentiment": build_rt_sentiment,
    "chatterbot-topic": build_chatterbot_topic,
    "chatterbot-qa": build_chatterbot_qa,
    "lee-similarity": build_lee_similarity,
    "chatterbot-gen": build_chatterbot_gen,
}
TASK_NAMES: list[str] = list(BUILDERS)


def build_task(name: str) -> tuple[dict, Rows, Rows]:
    """(spec_dict, train_rows, eval_rows) of a built-in task; the same every time."""
    if name not in BUILDERS:
        raise UserError(f"unknown task {name!r}: use one of [{', '.join(TASK_NAMES)}]")
    return BUILDERS[name]()


def _sample(rows: Rows, n: int | None, seed: int) -> Rows:
    """A seeded subset of at most `n` rows, in their original order (None keeps all)."""
    if n is None or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def export_task(
    name: str, out_dir: str | Path, max_train_rows: int | None = None, max_eval_rows: int | None = None
) -> Path:
    """Write `task.yaml` + train.jsonl + eval.jsonl into `out_dir`; returns the task.yaml path.

    Each file is written atomically (sha256 beside it); task.yaml comes last, so it never points
    at data that is not there yet. `max_*_rows` keep a seeded subset (short runs, e.g. tests).
    """
    import yaml

    spec, train, eval_ = build_task(name)
    train, eval_ = _sample(train, max_train_rows, seed=1), _sample(eval_, max_eval_rows, seed=2)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    write_rows(out / DATA_FILES["train"], train)
    write_rows(out / DATA_FILES["eval"], eval_)
    body = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)
    return write_text(out / "task.yaml", body)


def print_catalog() -> None:
    """A table of the built-in tasks: name, type, train rows, eval rows, description."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="taskloom built-in tasks", show_lines=True)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("train rows", justify="right")
    table.add_column("eval rows", justify="right")
    table.add_column("description")
    for name in TASK_NAMES:
        spec, train, eval_ = build_task(name)
        table.add_row(name, spec["type"], str(len(train)), str(len(eval_)), escape(spec["description"]))
    Console().print(table)
