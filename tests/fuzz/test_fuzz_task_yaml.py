"""task.yaml (taskloom.specs.load_task): a real catalog task, mutated field by field and byte by byte."""

from __future__ import annotations

import pytest
from conftest import TIERS
from hypothesis import strategies as st
from mutations import Case, byte_mutations, doc_mutations, to_yaml

from taskloom.data.rows import write_rows
from taskloom.specs import load_task
from taskloom.tasks.catalog import build_task

VALIDATION = {
    "duplicates": {"severity": "warning"},
    "conflicts": {"severity": "error", "max_share": 0.01},
    "bad_rows": {"severity": "error", "max_share": 0.02},
    "min_rows": {"train": 20, "eval": 10},
    "text_lengths": {"max_chars": 5000},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    spec, train, eval_ = build_task("rt-sentiment")
    write_rows(root / "train.jsonl", train[:30])
    write_rows(root / "eval.parquet", eval_[:15])
    return root, {**spec, "data": {"train": "train.jsonl", "eval": "eval.parquet"}, "validation": VALIDATION}


def cases(valid: dict) -> st.SearchStrategy[Case]:
    data = to_yaml(valid)
    return st.one_of(
        st.just(Case("unchanged", (), valid, data, valid=True)),
        doc_mutations(valid).map(lambda c: Case(c.kind, c.path, c.doc, to_yaml(c.doc))),
        doc_mutations(valid).map(lambda c: Case(c.kind, c.path, c.doc, to_yaml(c.doc))),
        byte_mutations(data).map(lambda kb: Case(kb[0], (), None, kb[1])),
        st.sampled_from([b"", b"- a\n- b\n", b"just text", b"{", b"name: [1, 2", b"? : :"]).map(
            lambda b: Case("not a mapping", (), None, b, valid=False)
        ),
        targeted(valid),
    )


def targeted(valid: dict) -> st.SearchStrategy[Case]:
    """Values the generic mutations rarely reach: data paths that exist but are not row files, the other
    task types with and without labels, each validation check's severity."""
    data_paths = st.sampled_from([".", "task.yaml", "missing.jsonl", "train.JSONL", "../task0", "eval.parquet"])
    labelled = st.tuples(
        st.sampled_from(["classification", "pair_similarity", "retrieval", "generation"]), st.booleans()
    )
    severity = st.tuples(
        st.sampled_from(sorted(VALIDATION)), st.sampled_from(["error", "warning", "off", "fatal", 1, None])
    )

    def data(split_value):
        split, value = split_value
        doc = {**valid, "data": {**valid["data"], split: value}}
        return Case("data path", ("data", split), doc, to_yaml(doc))

    def task_type(t):
        name, with_labels = t
        doc = {k: v for k, v in valid.items() if with_labels or k != "labels"} | {"type": name}
        return Case("task type", ("type",), doc, to_yaml(doc), valid=(name == "classification") == with_labels)

    def check_severity(t):
        check, value = t
        doc = {**valid, "validation": {**VALIDATION, check: {**VALIDATION[check], "severity": value}}}
        return Case(
            "severity", ("validation", check, "severity"), doc, to_yaml(doc), valid=value in ("error", "warning", "off")
        )

    return st.one_of(
        st.tuples(st.sampled_from(["train", "eval"]), data_paths).map(data),
        labelled.map(task_type),
        severity.map(check_severity),
    )


@pytest.mark.parametrize("tier", TIERS)
def test_task_yaml(fuzz, folder, tier):
    root, valid = folder
    path = root / "task.yaml"

    def check(case):
        path.write_bytes(case.data)
        spec = load_task(path)
        assert spec.train_path.exists() and spec.eval_path.exists()

    fuzz("task.yaml", cases(valid), check, tier, names=lambda case, msg: msg.startswith(f"{path}: "))
