"""CLI arguments (taskloom.cli.main(argv), in-process): real, cheap command lines (validate, drift on
embeddings, tasks dedup) changed one argument at a time: dropped, replaced by a wrong value (NUL
bytes, huge, negative, NaN, a missing path, a folder), an unknown option, a repeated option, an unknown
command. The answer is exit 0, or exit 2 with exactly one line on stderr; never a traceback."""

from __future__ import annotations

import contextlib
import io
import itertools
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT, TIERS_E2E, Refused
from hypothesis import strategies as st
from mutations import HUGE_TEXT, Case

from taskloom.cli import main
from taskloom.data.rows import write_rows
from taskloom.tasks.catalog import build_task

sys.path.insert(0, str(ROOT / "tests"))

OUT = "{out}"  # replaced per case by a fresh folder
WRONG = [
    "",
    "\x00",
    "a\x00b",
    "-",
    "--",
    "-1",
    "0",
    "nan",
    "inf",
    "1e999",
    "x" * 5000,
    HUGE_TEXT[:100_000],
    "/nonexistent/file.yaml",
    "/",
    ".",
    "../..",
    "é\u2028",
    "--help",
    "-h",
    "true",
]


@pytest.fixture(scope="module")
def command_lines(tmp_path_factory) -> list[list[str]]:
    root = tmp_path_factory.mktemp("cli")
    spec, train, eval_ = build_task("rt-sentiment")
    write_rows(root / "train.jsonl", train[:30])
    write_rows(root / "eval.jsonl", eval_[:15])
    (root / "task.yaml").write_text(yaml.safe_dump(spec))
    rng = np.random.default_rng(0)
    np.save(root / "ref.npy", rng.normal(size=(20, 8)).astype(np.float32))
    np.save(root / "cur.npy", rng.normal(size=(20, 8)).astype(np.float32))
    return [
        ["validate", str(root / "task.yaml"), "--out", OUT],
        [
            "drift",
            "--reference",
            str(root / "ref.npy"),
            "--current",
            str(root / "cur.npy"),
            "--method",
            "mmd",
            "--permutations",
            "5",
            "--alpha",
            "0.05",
            "--seed",
            "1",
        ],
        ["tasks", "dedup", str(root / "task.yaml"), "--out", OUT],
    ]


@st.composite
def argv_case(draw, lines: list[list[str]]) -> Case:
    argv = list(draw(st.sampled_from(lines)))
    kind = draw(
        st.sampled_from(
            [
                "unchanged",
                "drop",
                "wrong value",
                "unknown option",
                "repeat option",
                "unknown command",
                "swap",
                "extra positional",
                "no arguments",
                "bad output folder",
            ]
        )
    )
    at = draw(st.integers(min_value=0, max_value=len(argv) - 1))
    if kind == "unchanged":
        return Case(kind, (), argv, valid=True)
    if kind == "no arguments":  # the program or a command group alone: its help, exit 0
        return Case(kind, (), draw(st.sampled_from([[], ["tasks"], ["events"], ["repo"], ["pipeline"]])))
    if kind == "bad output folder":  # a --out the file system refuses: too long, under a file, not allowed
        argv = list(draw(st.sampled_from([a for a in lines if OUT in a])))
        value = draw(st.sampled_from(["o" * 300, "/etc/hostname/out", "/proc/self/out", "/dev/null/out"]))
        return Case(kind, (argv.index(OUT),), [value if a == OUT else a for a in argv], valid=False)
    if kind == "drop":
        del argv[at]
    elif kind == "wrong value":
        argv[at] = draw(st.one_of(st.sampled_from(WRONG), st.text(max_size=20)))
    elif kind == "unknown option":
        argv.insert(at + 1, draw(st.sampled_from(["--bogus", "--out=", "-x", "--permutations=-3", "---"])))
    elif kind == "repeat option":
        argv += argv[at : at + 2]
    elif kind == "unknown command":
        argv[0] = draw(st.sampled_from(["validat", "VALIDATE", "", "\x00", "drift;rm", "tasks/../x"]))
    elif kind == "swap":
        j = draw(st.integers(min_value=0, max_value=len(argv) - 1))
        argv[at], argv[j] = argv[j], argv[at]
    else:
        argv.append(draw(st.sampled_from(WRONG)))
    return Case(kind, (at,), argv)


@pytest.mark.parametrize("tier", TIERS_E2E)
def test_cli_args(fuzz, command_lines, tmp_path, monkeypatch, tier):
    monkeypatch.chdir(tmp_path)  # anything a command writes by default lands here
    fresh = itertools.count()

    def check(case):
        out = str(tmp_path / f"out{next(fresh)}")
        argv = [out if a == OUT else a for a in case.doc]
        err, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
            rc = main(argv)
        text = err.getvalue()
        assert "Traceback" not in text + stdout.getvalue()
        if rc == 0:
            return
        assert rc == 2, (rc, text)
        raise Refused(text.rstrip("\n"))

    def names(case, message):  # the argument, option, file or command at fault is quoted or named
        return message.startswith("error: ") and len(message) > len("error: ")

    fuzz("CLI arguments", argv_case(command_lines), check, tier, names=names)
