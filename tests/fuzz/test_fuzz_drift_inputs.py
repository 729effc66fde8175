"""Drift inputs: the monitor's files and rows. Reference/current samples (taskloom.monitor.drift.read_sample
and drift_embeddings: JSONL and Parquet texts, .npy embeddings and labels) and the served-request log
(taskloom.requestlog.LogReader: v1 and v2 rows), each a real valid example with one thing changed."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import TIERS
from hypothesis import strategies as st
from mutations import Case, byte_mutations, doc_mutations, to_json
from rows_cases import to_parquet

from taskloom.monitor.drift import drift_embeddings, read_sample
from taskloom.requestlog import LogReader
from taskloom.tasks.catalog import build_task

_spec, _train, _eval = build_task("rt-sentiment")
TEXT_ROWS = [{"text": r["text"], "label": r["label"]} for r in _train[:16]]
LOG_ROWS = [
    {"ts": 1718000000.0 + i, "task": "rt-sentiment", "text": r["text"]}
    if i % 2
    else {
        "v": 2,
        "ts": 1718000000.0 + i,
        "task": "rt-sentiment",
        "model": "taskloom",
        "version": "3",
        "adapter": "rt-sentiment",
        "label": r["label"],
        "probs": [0.9, 0.1],
        "text": r["text"],
    }
    for i, r in enumerate(TEXT_ROWS)
]
RNG = np.random.default_rng(0)
EMB = RNG.normal(size=(16, 8)).astype(np.float32)
LABELS = np.array([r["label"] for r in TEXT_ROWS])


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


BAD_ARRAYS = {
    "nan": lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a) if a.dtype.kind == "f" else a,
    "1-d": lambda a: a.reshape(-1),
    "3-d": lambda a: a[None],
    "few rows": lambda a: a[:3],
    "strings": lambda a: a.astype(str),
    "objects (pickle)": lambda a: np.array([{"x": 1}] * len(a), dtype=object),
    "floats as labels": lambda a: np.linspace(0, 1, len(a)),
    "empty": lambda a: a[:0],
    "wide": lambda a: np.tile(a, (1, 3)) if a.ndim == 2 else a,
}


@st.composite
def drift_case(draw) -> Case:
    what = draw(
        st.sampled_from(["jsonl", "parquet", "npy embeddings", "npy labels", "request log", "log follow", "options"])
    )
    if what == "options":  # the test's own settings and a probability sample beside labels
        method = draw(st.sampled_from(["mmd", "chi2", "ks_pca", "nope", "", "MMD"]))
        alpha = draw(st.sampled_from([0.05, 0.0, 1.0, -0.1, float("nan"), 0.5]))
        permutations = draw(st.sampled_from([5, 0, -1, 2.5, True]))
        current = draw(st.sampled_from(["same", "probs", "other width", "suffix"]))
        return Case("options", (method, alpha, permutations, current), extra={"what": "npy embeddings"})
    if what == "log follow":
        return draw(follow_case())
    if what == "request log" and draw(st.booleans()):
        return draw(log_field_case())
    rows = LOG_ROWS if what == "request log" else TEXT_ROWS
    if what.startswith("npy"):
        base = EMB if what == "npy embeddings" else LABELS
        how = draw(st.sampled_from(["unchanged", *BAD_ARRAYS, "bytes"]))
        if how == "unchanged":
            return Case(how, (), data=npy(base), valid=True, extra={"what": what})
        if how == "bytes":
            kind, data = draw(byte_mutations(npy(base)))
            return Case(kind, (), data=data, extra={"what": what})
        return Case(how, (), data=npy(BAD_ARRAYS[how](base)), extra={"what": what})
    at = draw(st.integers(min_value=0, max_value=len(rows) - 1))
    if draw(st.integers(min_value=0, max_value=7)) == 0:
        case = Case("unchanged", (), list(rows), valid=True)
    else:
        m = draw(doc_mutations(rows[at]))
        case = Case(m.kind, (at + 1, *m.path), [*rows[:at], m.doc, *rows[at + 1 :]])
    if what == "parquet":
        case.data = to_parquet(case.doc)
    else:
        lines = [to_json(r) for r in case.doc]
        if case.kind != "unchanged" and draw(st.booleans()):
            kind, lines[at] = draw(byte_mutations(lines[at]))
            case.kind = kind
        case.data = b"\n".join(lines) + b"\n"
    case.extra = {"what": what}
    return case


V2_VALUES = {
    "v": [0, 3, True, "2", None, 2.0],
    "model": [3, ["m"], None, ""],
    "version": [3, "7", 1.5, [], None],
    "adapter": [None, 0, {"a": 1}, "x"],
    "label": [1, None, "fresh", ["fresh"]],
    "probs": [[0.5, "x"], [float("nan")], "0.5", None, [], [1e308, -1e308]],
    "text": [None, 5, "", "\x00", ["t"]],
    "ts": [None, "1718000000", float("inf"), -1, True, 1e300],
    "task": ["", None, 7, "t" * 1000],
}


@st.composite
def log_field_case(draw) -> Case:
    """A v2 request-log row with one field set to a value of the wrong kind (or a right one)."""
    key = draw(st.sampled_from(sorted(V2_VALUES)))
    value = draw(st.sampled_from(V2_VALUES[key]))
    rows = [dict(r) for r in LOG_ROWS]
    rows[0] = {**rows[0], key: value}
    data = b"\n".join(to_json(r) for r in rows) + b"\n"
    return Case("v2 field", (1, key), rows, data, extra={"what": "request log"})


@st.composite
def follow_case(draw) -> Case:
    """The log followed as the monitor does: read, then the file is rotated, truncated, removed or a line
    finished, then read again."""
    event = draw(st.sampled_from(["rotated", "truncated", "removed", "partial line", "rotated bad"]))
    at = draw(st.integers(min_value=1, max_value=len(LOG_ROWS) - 1))
    return Case(event, (), extra={"what": "log follow", "at": at}, valid=True if event != "rotated bad" else None)


def follow(path, case: Case) -> list[dict]:
    lines = [to_json(r) + b"\n" for r in LOG_ROWS]
    at, event = case.extra["at"], case.kind
    path.write_bytes(b"".join(lines[:at]) + (lines[at][:5] if event == "partial line" else b""))
    with LogReader(path) as reader:
        rows = reader.poll()
        if event.startswith("rotated"):
            path.rename(path.with_name(path.name + ".1"))
            path.write_bytes(b"".join(lines[at:]) + (b"{not json\n" if event == "rotated bad" else b""))
        elif event == "truncated":
            path.write_bytes(b"".join(lines[:1]))
        elif event == "removed":
            path.unlink()
        else:
            path.write_bytes(b"".join(lines[: at + 1]))
        rows += reader.poll(final=True)
    return rows


@pytest.mark.parametrize("tier", TIERS)
def test_drift_inputs(fuzz, tmp_path, tier):
    ref_rows = tmp_path / "reference.jsonl"
    ref_rows.write_text("".join(json.dumps(r) + "\n" for r in TEXT_ROWS))
    paths = {
        "jsonl": tmp_path / "current.jsonl",
        "parquet": tmp_path / "current.parquet",
        "npy embeddings": tmp_path / "current.npy",
        "npy labels": tmp_path / "labels.npy",
        "request log": tmp_path / "requests.jsonl",
        "log follow": tmp_path / "followed.jsonl",
    }

    def check(case):
        what = case.extra["what"]
        path = paths[what]
        if what == "log follow":
            for old in path.parent.glob(path.name + "*"):
                old.unlink()
            rows = follow(path, case)
            assert len(rows) >= case.extra["at"] and all(r["task"] for r in rows)
            return
        path.write_bytes(case.data)
        if what == "request log":
            with LogReader(path) as reader:
                rows = reader.poll(final=True)
            assert all(isinstance(r["ts"], float) and r["task"] for r in rows)
            return
        if case.kind == "options":
            method, alpha, permutations, current = case.path
            labels = method == "chi2"
            ref = LABELS if labels else EMB
            cur = {"same": ref, "probs": np.full((16, 2), 0.5), "other width": EMB[:, :4]}.get(current, ref)
            if current == "suffix":
                odd = path.with_suffix(".csv")
                odd.write_text("text\na\n")
                read_sample(odd, "text")
            np.save(path, cur)
            sample = read_sample(path, "text", "labels" if labels else "embeddings")[1]
            out = drift_embeddings(
                ref, sample, method=method, alpha=alpha, permutations=permutations, names=("reference", str(path))
            )
            assert 0.0 <= out["p_value"] <= 1.0
            return
        inputs = "labels" if what == "npy labels" else "embeddings"
        kind, sample = read_sample(path, "text", inputs)
        if kind == "texts":
            assert len(sample) >= 10 and all(isinstance(t, str) for t in sample)
            return
        reference = EMB if inputs == "embeddings" else LABELS
        method = "mmd" if inputs == "embeddings" else "chi2"
        out = drift_embeddings(reference, sample, method=method, permutations=5, names=("reference", str(path)))
        assert 0.0 <= out["p_value"] <= 1.0

    def names(case, message):  # the file, or the setting at fault
        return str(paths[case.extra["what"]]) in message or message.startswith(
            ("unknown drift method", "alpha", "permutations", str(tmp_path))
        )

    fuzz("drift inputs", drift_case(), check, tier, names=names)
