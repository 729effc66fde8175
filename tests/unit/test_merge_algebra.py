"""The merge methods as algebra on small tensors: property tests (hypothesis) against float64
formulas, and TIES / DARE / re-factoring on hand-made tensors whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from taskloom.errors import UserError
from taskloom.merge import sparsify
from taskloom.merge.factor import refactor
from taskloom.merge.methods import METHODS, Delta, TensorContext, get_method

SHAPE = (3, 4)
finite = st.floats(-3, 3, allow_nan=False, allow_subnormal=False, width=32)  # w·x of a subnormal x underflows to 0 in float32
vectors = st.lists(arrays(np.float32, SHAPE, elements=finite), min_size=1, max_size=4)
weight = st.floats(0.1, 2.0)


def run(name, xs, ws, **params):
    """Merge the hand-given task vectors of one tensor; returns float64 numpy."""
    method = get_method(name)
    p = method.parameters(params)
    method.check(ws, p)
    deltas = [Delta((lambda t=torch.from_numpy(np.array(x)): t) if x is not None else None, SHAPE, f"in{i}", "w")
              for i, x in enumerate(xs)]
    return method.merge(deltas, ws, p, TensorContext("w", SHAPE, seed=params.get("seed", 0))).double().numpy()


def test_registry_is_one_entry_per_named_method():
    assert list(METHODS) == ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune",
                             "delta_guided", "greedy_soup", "self_positioning"]
    assert all(m.name == k for k, m in METHODS.items())
    with pytest.raises(UserError, match="known: linear, task_arithmetic"):
        get_method("nope")


@settings(max_examples=60, deadline=None)
@given(xs=vectors, data=st.data())
def test_task_arithmetic_and_linear_are_the_weighted_sums(xs, data):
    ws = data.draw(st.lists(weight, min_size=len(xs), max_size=len(xs)))
    lam = data.draw(st.floats(-2, 2))
    ref = sum(w * x.astype(np.float64) for w, x in zip(ws, xs))
    np.testing.assert_allclose(run("task_arithmetic", xs, ws, **{"lambda": lam}), lam * ref, atol=1e-5)
    np.testing.assert_allclose(run("linear", xs, ws), ref / sum(ws), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(x=arrays(np.float32, SHAPE, elements=finite), n=st.integers(1, 4), w=weight)
def test_merging_copies_of_one_vector_gives_it_back(x, n, w):
    """Soups of identical models are that model; TIES/DARE at density 1 agree everywhere."""
    xs, ws = [x] * n, [w] * n
    for name, params in [("linear", {}), ("ties", {"density": 1.0}), ("delta_guided", {}),
                         ("dare_ties", {"density": 1.0, "normalize": True})]:
        np.testing.assert_allclose(run(name, xs, ws, **params), x, atol=1e-5, err_msg=name)


@settings(max_examples=40, deadline=None)
@given(xs=vectors, data=st.data())
def test_deterministic_methods_do_not_depend_on_input_order(xs, data):
    ws = data.draw(st.lists(weight, min_size=len(xs), max_size=len(xs)))
    perm = data.draw(st.permutations(range(len(xs))))
    for name, params in [("linear", {}), ("task_arithmetic", {}), ("ties", {"density": 0.5}),
                         ("magnitude_prune", {"density": 0.5}), ("delta_guided", {"gamma": 2.0})]:
        a = run(name, xs, ws, **params)
        b = run(name, [xs[i] for i in perm], [ws[i] for i in perm], **params)
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


@settings(max_examples=40, deadline=None)
@given(xs=vectors, data=st.data())
def test_density_one_without_sign_election_is_task_arithmetic(xs, data):
    ws = data.draw(st.lists(weight, min_size=len(xs), max_size=len(xs)))
    ta = run("task_arithmetic", xs, ws, **{"lambda": 0.7})
    for name in ("dare_linear", "magnitude_prune"):
        np.testing.assert_allclose(run(name, xs, ws, density=1.0, **{"lambda": 0.7}), ta, atol=1e-5, err_msg=name)


@settings(max_examples=40, deadline=None)
@given(xs=vectors, data=st.data())
def test_delta_guided_is_a_per_parameter_convex_combination(xs, data):
    ws = data.draw(st.lists(weight, min_size=len(xs), max_size=len(xs)))
    normalize, gamma = data.draw(st.booleans()), data.draw(st.sampled_from([1.0, 2.0]))
    out = run("delta_guided", xs, ws, normalize=normalize, gamma=gamma)
    stack = np.stack(xs).astype(np.float64)
    assert np.all(out >= stack.min(0) - 1e-5) and np.all(out <= stack.max(0) + 1e-5)
    # each |Δᵢ| in units of its RMS over the tensor (normalize) or as it is
    rms = [np.sqrt((x**2).mean()) if normalize and (x**2).mean() > 0 else 1.0 for x in stack]
    a = np.stack([w * (np.abs(x) / r) ** gamma for w, x, r in zip(ws, stack, rms)])
    den = a.sum(0)
    ref = np.where(den > 0, (a * stack).sum(0) / np.where(den > 0, den, 1), 0)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_delta_guided_normalize_stops_the_largest_input_claiming_every_entry():
    """b moved every entry far more than a did overall. In column 0, a moved the weight by twice its own
    RMS and b by 2 % of its own: raw magnitudes give the entry to b (|−2| > |1|), normalised ones to a."""
    a = np.array([[1.0, 0.01, 0.01, 0.01]] * 3, dtype=np.float32)
    b = np.array([[-2.0, 100.0, 100.0, 100.0]] * 3, dtype=np.float32)
    raw = run("delta_guided", [a, b], [1.0, 1.0], normalize=False)
    np.testing.assert_allclose(raw[:, 0], (1 * 1 + 2 * -2) / 3, atol=1e-6)  # αᵢ ∝ |Δᵢ|: −1
    normed = run("delta_guided", [a, b], [1.0, 1.0])
    ra, rb = np.sqrt((1 + 3e-4) / 4), np.sqrt((4 + 3e4) / 4)
    want = (1 / ra * 1 + 2 / rb * -2) / (1 / ra + 2 / rb)  # ≈ 0.955
    np.testing.assert_allclose(normed[:, 0], want, rtol=1e-5)
    assert normed[0, 0] > 0.9


@settings(max_examples=40, deadline=None)
@given(xs=vectors, data=st.data())
def test_ties_at_full_density_is_the_sign_agreeing_mean(xs, data):
    ws = data.draw(st.lists(weight, min_size=len(xs), max_size=len(xs)))
    stack = np.stack([w * x.astype(np.float64) for w, x in zip(ws, xs)])
    elected = np.where(stack.sum(0) >= 0, 1.0, -1.0)
    agree = np.sign(stack) == elected
    wsum = (agree * np.array(ws)[:, None, None]).sum(0)
    ref = np.where(agree, stack, 0).sum(0) / np.where(wsum == 0, 1, wsum)
    np.testing.assert_allclose(run("ties", xs, ws, density=1.0), ref, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(xs=vectors, data=st.data())
def test_ties_never_mixes_signs(xs, data):
    """Each merged entry is 0 or a mean of same-signed inputs: never beyond them, never a cancellation."""
    ws = data.draw(st.lists(weight, min_size=len(xs), max_size=len(xs)))
    out = run("ties", xs, ws, density=data.draw(st.floats(0.1, 1.0)))
    stack = np.stack(xs).astype(np.float64)
    same_sign = (np.sign(stack) == np.sign(out)[None]).any(0)
    assert np.all((out == 0) | same_sign)
    assert np.all(np.abs(out) <= np.abs(stack).max(0) + 1e-5)


def test_inputs_that_leave_a_tensor_alone_count_as_zero():
    x = np.ones(SHAPE, np.float32)
    np.testing.assert_allclose(run("linear", [x, None], [1.0, 3.0]), x / 4)
    np.testing.assert_allclose(run("task_arithmetic", [None, x], [1.0, 3.0]), 3 * x)
    np.testing.assert_allclose(run("ties", [x, None], [1.0, 1.0], density=1.0), x)  # disjoint mean skips zeros


def test_ties_by_hand():
    # trim to 2 of 4: a keeps 3 and 2, b keeps -2 and -2 → sums [1, -2, 0, 2] → signs [+, -, +, +]
    a = np.array([[3.0, -1.0, 0.5, 2.0]], np.float32)
    b = np.array([[-2.0, -2.0, 1.0, 0.1]], np.float32)
    shape = (1, 4)
    method = get_method("ties")

    def ties(xs, ws, **params):
        p = method.parameters({"density": 0.5, **params})
        ds = [Delta(lambda t=torch.from_numpy(x): t, shape, "in", "w") for x in xs]
        return method.merge(ds, ws, p, TensorContext("w", shape)).numpy()

    np.testing.assert_allclose(ties([a, b], [1.0, 1.0]), [[3.0, -2.0, 0.0, 2.0]])
    c = np.array([[1.0, -4.0, 0.0, 4.0]], np.float32)  # keeps -4 and 4: agrees with a on the last entry
    np.testing.assert_allclose(ties([a, c], [1.0, 1.0]), [[3.0, -4.0, 0.0, 3.0]])  # disjoint mean (2+4)/2
    np.testing.assert_allclose(ties([a, c], [1.0, 1.0], normalize=False, **{"lambda": 0.5}), [[1.5, -2.0, 0.0, 3.0]])
    np.testing.assert_allclose(ties([a, c], [3.0, 1.0]), [[3.0, -4.0, 0.0, 2.5]])  # (3·2 + 1·4) / 4


def test_trim_keeps_exactly_the_largest_magnitudes():
    x = torch.tensor([0.1, -5.0, 2.0, -0.3, 4.0, 0.0, -1.0, 3.0])
    np.testing.assert_array_equal(sparsify.trim_by_magnitude(x, 0.5).numpy(), [0, -5.0, 2.0, 0, 4.0, 0, 0, 3.0])
    np.testing.assert_array_equal(sparsify.trim_by_magnitude(x, 0.25, rescale=True).numpy(), [0, -20.0, 0, 0, 16.0, 0, 0, 0])
    assert sparsify.kept_count(8, 0.01) == 1 and sparsify.kept_count(8, 1.0) == 8


def test_dare_drops_at_the_density_and_keeps_the_expectation():
    x = torch.full((200, 200), 2.0)
    out = sparsify.drop_at_random(x, 0.3, torch.Generator().manual_seed(5))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    assert torch.all(out[kept] == 2.0 / 0.3)
    assert abs(out.mean().item() - 2.0) < 0.05
    again = sparsify.drop_at_random(x, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)


def test_dare_masks_are_seeded_per_tensor_and_input():
    xs = [np.ones((40, 40), np.float32)] * 2
    shape = (40, 40)
    m = get_method("dare_linear")

    def dare(seed, key):
        ds = [Delta(lambda t=torch.from_numpy(x): t, shape, "in", key) for x in xs]
        return m.merge(ds, [1.0, 1.0], m.parameters({"density": 0.5, "seed": seed}), TensorContext(key, shape, seed)).numpy()

    assert np.array_equal(dare(0, "w"), dare(0, "w"))
    assert not np.array_equal(dare(0, "w"), dare(1, "w")) and not np.array_equal(dare(0, "w"), dare(0, "v"))
    # two inputs get different masks: the sum takes values 0, 2 and 4 (not only 0 and 4)
    assert set(np.unique(dare(0, "w"))) == {0.0, 2.0, 4.0}


def test_refactor_by_hand():
    d = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0]))
    b, a, rel, _ = refactor(d, 1)
    np.testing.assert_allclose((b @ a).numpy(), np.diag([3.0, 0, 0, 0]), atol=1e-6)
    assert rel == pytest.approx(np.sqrt(5 / 14))
    b, a, rel, _ = refactor(d, 6)  # more rank than the matrix has: zero-padded, exact
    assert b.shape == (4, 6) and a.shape == (6, 4) and rel < 1e-12


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(2, 12), cols=st.integers(2, 12), r=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_refactor_recovers_any_low_rank_matrix(rows, cols, r, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(rows, r, generator=g) @ torch.randn(r, cols, generator=g)
    b, a, rel, _ = refactor(m, r)
    assert rel < 1e-5 and torch.allclose(b @ a, m, atol=1e-4)


@pytest.mark.parametrize(
    "name,params,msg",
    [("ties", {"density": 0}, "must be in (0, 1]"), ("dare_linear", {"density": -0.5}, "must be in (0, 1]"),
     ("ties", {"densty": 0.5}, "not a parameter of ties"), ("linear", {"lambda": 2}, "it takes: none"),
     ("task_arithmetic", {"lambda": "big"}, "parameters.lambda"), ("delta_guided", {"gamma": 0}, "parameters.gamma")],
)
def test_bad_parameters_name_the_field(name, params, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace("]", r"\]")):
        get_method(name).parameters(params)


def test_weights_each_method_refuses():
    with pytest.raises(UserError, match="sum to zero"):
        get_method("linear").check([1.0, -1.0], get_method("linear").parameters({}))
    with pytest.raises(UserError, match="positive"):
        get_method("delta_guided").check([1.0, -1.0], get_method("delta_guided").parameters({}))
    get_method("task_arithmetic").check([1.0, -1.0], get_method("task_arithmetic").parameters({}))  # negation is fine


def test_a_nan_task_vector_is_a_user_error():
    x = np.ones(SHAPE, np.float32)
    x[1, 2] = np.nan
    with pytest.raises(UserError, match="in1: tensor w has NaN"):
        run("linear", [np.ones(SHAPE, np.float32), x], [1.0, 1.0])


def test_trim_keeps_exactly_k_when_magnitudes_tie_and_leaves_its_input_alone():
    x = torch.tensor([[1.0, -2.0, 2.0], [-2.0, 0.5, 2.0]])
    before = x.clone()
    out = sparsify.trim_by_magnitude(x, 0.5)  # k = 3 of four entries with |x| = 2: the first three by index
    np.testing.assert_array_equal(out.numpy(), [[0, -2.0, 2.0], [-2.0, 0, 0]])
    assert torch.equal(x, before)
    t = torch.randn(7, 5).T  # a non-contiguous view
    kept = sparsify.trim_by_magnitude(t, 0.4)
    assert int((kept != 0).sum()) == 14 and torch.equal(kept[kept != 0], t[kept != 0])
    assert float(kept.abs()[kept != 0].min()) >= float(t.abs()[kept == 0].max())
