"""Mutations of valid inputs, field by field: each strategy starts from a real, valid example and changes one
thing (drop a field, a wrong type, a huge value, invalid UTF-8, NUL bytes, deep nesting, truncation, an extra
field), so a case gets past the first parser and reaches the checks behind it.

A drawn case is a `Case`: what was done (`kind`, the field `path`), the mutated document or bytes, and
`valid`: True when the mutation leaves the input valid (it must be accepted), None when it may go either way.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from hypothesis import strategies as st

DEEP = "__fuzz_deep__"  # replaced in the serialised text by DEEP_LEVELS nested lists
DEEP_LEVELS = 5_000
HUGE_TEXT = "x" * 200_000


@dataclass(repr=False)
class Case:
    kind: str
    path: tuple = ()
    doc: Any = None
    data: bytes = b""
    valid: bool | None = None
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints this on failure: short and telling
        where = ".".join(map(str, self.path)) or "-"
        return f"Case({self.kind} at {where}, {len(self.data)} bytes)"


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON-like document (dict keys and list indices), parents before children."""
    out: list[tuple] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out.extend(paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((*prefix, i))
            out.extend(paths(v, (*prefix, i)))
    return out


def _parent(doc: Any, path: tuple):
    for p in path[:-1]:
        doc = doc[p]
    return doc


def set_at(doc: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    _parent(doc, path)[path[-1]] = value
    return doc


def drop_at(doc: Any, path: tuple) -> Any:
    doc = copy.deepcopy(doc)
    parent = _parent(doc, path)
    del parent[path[-1]]
    return doc


# Values that are wrong somewhere: types, sizes, special numbers, control characters, nesting.
WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 10**30, 1e308, -1e308, float("nan"), float("inf"), 0.5]),
    st.text(max_size=30),
    st.sampled_from(["", " ", "\x00", "a\x00b", "\u2028", "../../etc/passwd", "\ufeff", HUGE_TEXT, DEEP]),
    st.lists(st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
)


def doc_mutations(doc: Any, protected: tuple = ()) -> st.SearchStrategy[Case]:
    """One change at one key path of `doc`; `protected` path prefixes are left alone."""
    keys = [p for p in paths(doc) if not any(p[: len(q)] == q for q in protected)]

    @st.composite
    def one(draw) -> Case:
        kind = draw(st.sampled_from(["drop", "wrong", "extra"]))
        if kind == "extra":
            dicts = [(), *[p for p in paths(doc) if isinstance(_get(doc, p), dict)]]
            where = draw(st.sampled_from(dicts))
            name = draw(st.sampled_from(["zzz_extra", "", "a\x00b", "nAmE"]))
            value = draw(WRONG_VALUES)
            return Case(
                "extra field", (*where, name), set_at(doc, (*where, name), value) if where else {**doc, name: value}
            )
        path = draw(st.sampled_from(keys))
        if kind == "drop":
            return Case("drop field", path, drop_at(doc, path))
        return Case("wrong value", path, set_at(doc, path, draw(WRONG_VALUES)))

    return one()


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def deepen(text: str) -> str:
    """Swap the DEEP placeholder (quoted as YAML or JSON writes it) for DEEP_LEVELS nested lists."""
    nested = "[" * DEEP_LEVELS + "]" * DEEP_LEVELS
    for quoted in (f'"{DEEP}"', f"'{DEEP}'", DEEP):
        text = text.replace(quoted, nested)
    return text


def to_json(doc: Any) -> bytes:
    return deepen(json.dumps(doc, ensure_ascii=False)).encode("utf-8", "surrogatepass")


def to_yaml(doc: Any) -> bytes:
    return deepen(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)).encode("utf-8", "surrogatepass")


def byte_mutations(data: bytes) -> st.SearchStrategy[tuple[str, bytes]]:
    """Damage the serialised bytes: truncate, insert invalid UTF-8 or a NUL byte, a BOM, repeat a line."""

    @st.composite
    def one(draw) -> tuple[str, bytes]:
        kind = draw(st.sampled_from(["truncate", "invalid utf-8", "nul byte", "bom", "repeat", "binary"]))
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if kind == "truncate":
            return kind, data[:at]
        if kind == "invalid utf-8":
            return kind, data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + data[at:]
        if kind == "nul byte":
            return kind, data[:at] + b"\x00" + data[at:]
        if kind == "bom":
            return kind, b"\xef\xbb\xbf" + data
        if kind == "repeat":
            return kind, data + data
        return kind, draw(st.binary(min_size=1, max_size=64))

    return one()
