"""The registry: contract, zero-denominator rules, numpy/torch agreement, property tests."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from oblr_theory import estimators
from tolerances import U, gamma, rounding_tol

EXPECTED = ["reinforce", "constant", "dr_grpo", "grpo", "rloo", "opo", "opo_loo", "optimal",
            "optimal_loo", "oracle_optimal"]


#: Hand-written groups: every value has magnitude ≤ 2 and each side takes ≤ 16 correctly rounded
#: operations (a G = 3 mean, one square root, one division), so the sides differ by ≤ 2γ_16 · 2.
HAND = rounding_tol(16, 2.0)


def hand(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=HAND)


def adv_tol(est, r):
    """The largest difference of two float64 evaluations of ``est.advantages`` on rewards ``r``
    (any summation order: numpy or torch, permuted groups, default aggregation).

    Every baseline is a mean or a weighted mean whose weights are scaled into [0, 1] with the
    largest equal to 1 and summed directly (``_weighted_baseline``), so its denominator is ≥ 1
    and its error is ≤ e_c = γ_{G+4} · 2 max|r|; ``A_j = r_j − b`` adds one rounding. grpo divides
    the centred rewards (error e_c) by ``den = std + eps`` (std's error ≤ √G e_c + γ_{G+8} std),
    so ``|δA| ≤ (e_c (1 + |A| √G) + |A| γ_{G+8} std) / den``. Two routes: twice the bound.
    """
    r = np.asarray(r, dtype=np.float64)
    G = r.shape[-1]
    e_c = gamma(G + 4) * 2 * float(np.abs(r).max(initial=0.0)) + gamma(1) * float(np.abs(r).max(initial=0.0))
    if est.name != "grpo":
        return 2 * e_c
    c = r - r.mean(-1, keepdims=True)
    std = np.sqrt((c * c).sum(-1) / (G - est.params["ddof"]))
    den = std + est.params["eps"]
    amax = np.abs(c).max(-1) / np.where(den > 0, den, 1.0)
    bound = (e_c * (1 + amax * np.sqrt(G)) + amax * gamma(G + 8) * std) / np.where(den > 0, den, np.inf)
    return 2 * float(bound.max())


def input_rounding_tol(est, r, rel):
    """The change of the advantages when every reward (or every weight, for the weighted
    baselines) is perturbed by a relative ``rel``: ≤ 2 rel max|r| for a (weighted) mean baseline,
    amplified by ``(1 + |A| √G) / den`` for grpo."""
    r = np.asarray(r, dtype=np.float64)
    G = r.shape[-1]
    base = 2 * rel * float(np.abs(r).max(initial=0.0))
    if est.name != "grpo":
        return base
    c = r - r.mean(-1, keepdims=True)
    den = np.sqrt((c * c).sum(-1) / (G - est.params["ddof"])) + est.params["eps"]
    amax = np.abs(c).max(-1) / den
    return base * float(((1 + amax * np.sqrt(G)) / den).max())


def _get(name, **kw):
    return estimators.get(name, **({"b_star": 0.3} if name == "oracle_optimal" else {}), **kw)


def _inputs(rng, shape):
    return rng.uniform(size=shape), rng.uniform(0.1, 2, size=shape), rng.integers(1, 9, size=shape).astype(float)


def test_registry_matches_the_documented_table():
    """docs/theory.md's estimator table (name, unbiased?) is the registry's: every documented name
    is registered with the documented unbiasedness, and every registered name is documented or is
    a declared variant of a documented one."""
    import os
    import re

    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "theory.md"), encoding="utf-8").read()
    table = text[text.index("## The estimators"):].split("\n## ")[0]
    documented = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        m = re.match(r"`(\w+)`", cells[0]) if len(cells) == 3 else None
        if m:
            documented[m.group(1)] = cells[2].startswith("yes")
    assert set(EXPECTED) <= set(documented)
    for name, unbiased in documented.items():
        assert estimators.spec(name).unbiased == unbiased, name
    undocumented = set(estimators.names()) - set(documented)
    assert all(any(n.startswith(d + "_") for d in documented) for n in undocumented), undocumented


def test_formulas_by_hand():
    r, S, ell = np.array([1.0, 0.0, 0.5]), np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0, 1.0])
    A = lambda n, **k: estimators.get(n, **k).advantages(r, S, ell)
    hand(A("reinforce"), r)
    hand(A("constant", b=0.25), r - 0.25)
    hand(A("dr_grpo"), r - 0.5)
    hand(A("grpo", eps=0.0), (r - 0.5) / 0.5)  # Bessel std of (1, 0, .5) = .5
    hand(A("grpo", eps=0.0, ddof=0), (r - 0.5) / np.sqrt(1 / 6))
    hand(A("rloo"), [1 - 0.25, 0 - 0.75, 0.5 - 0.5])
    hand(A("opo"), r - (2 + 0.5) / 4)
    hand(A("opo_loo"), [1 - 0.25, 0 - 2.5 / 3, 0.5 - 2 / 3])
    hand(A("optimal"), r - (1 + 1.5) / 6)
    hand(A("optimal_loo"), [1 - 1.5 / 5, 0 - 2.5 / 4, 0.5 - 1 / 3])
    hand(A("oracle_optimal", b_star=0.4), r - 0.4)


def test_aggregations_are_length_weights():
    r, ell = np.array([1.0, 0.0, 0.5]), np.array([2.0, 1.0, 1.0])
    base = estimators.get("rloo").advantages(r)
    agg = lambda m, **k: estimators.get("rloo", aggregation=m, **k).advantages(r, lengths=ell)
    hand(agg("seq-mean-token-mean"), base / ell)
    hand(agg("token-mean"), base * 3 / 4)
    hand(agg("constant", max_length=8), base / 8)
    assert not estimators.get("rloo", aggregation="token-mean").unbiased


def test_zero_denominator_rules():
    r = np.array([0.3, 0.3, 0.3])
    np.testing.assert_array_equal(estimators.get("grpo", eps=0.0).advantages(r), 0.0)
    r, zero = np.array([1.0, 0.0, 0.5]), np.zeros(3)
    hand(estimators.get("optimal").advantages(r, sq_norms=zero), r - 0.5)
    hand(estimators.get("optimal_loo").advantages(r, sq_norms=zero), estimators.get("rloo").advantages(r))
    hand(estimators.get("opo_loo").advantages(r, lengths=np.array([0.0, 0, 1])), [1 - 0.5, 0 - 0.5, 0.5 - 0.5])
    assert np.all(np.isfinite(estimators.get("optimal_loo").advantages(r, sq_norms=np.array([0.0, 0, 1]))))


@pytest.mark.parametrize("call, match", [
    (lambda: estimators.get("nope"), "unknown estimator name='nope'"),
    (lambda: estimators.get("rloo", b=1.0), "unknown parameter"),
    (lambda: estimators.get("oracle_optimal"), "needs parameter"),
    (lambda: estimators.get("rloo", aggregation="x"), "aggregation="),
    (lambda: estimators.get("rloo", aggregation="constant"), "max_length"),
    (lambda: estimators.get("optimal_loo").advantages(np.ones(3)), "needs sq_norms"),
    (lambda: estimators.get("opo").advantages(np.ones(3)), "needs lengths"),
    (lambda: estimators.get("rloo", aggregation="token-mean").advantages(np.ones(3)), "needs lengths"),
    (lambda: estimators.get("rloo").advantages(np.ones((2, 1))), "G >= 2"),
    (lambda: estimators.get("rloo").advantages(np.array([1.0, np.nan])), "rewards contains non-finite"),
    (lambda: estimators.get("optimal").advantages(np.ones(3), sq_norms=np.ones(2)), "sq_norms must have"),
    (lambda: estimators.get("optimal").advantages(np.ones(3), sq_norms=-np.ones(3)), "sq_norms must be >= 0"),
    (lambda: estimators.get("grpo", ddof=2).advantages(np.ones(3)), "ddof"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("name", EXPECTED)
def test_numpy_and_torch_agree(name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    r, S, ell = _inputs(rng, (4, 5, 6))
    est = _get(name)
    a_np = est.advantages(r, S, ell)
    a_t = est.advantages(torch.from_numpy(r), torch.from_numpy(S), torch.from_numpy(ell))
    assert isinstance(a_t, torch.Tensor) and a_t.shape == a_np.shape
    # same source; torch and numpy may sum in another order: the rounding bound of adv_tol
    np.testing.assert_allclose(a_t.numpy(), a_np, rtol=0, atol=adv_tol(est, r))


groups = st.integers(2, 8).flatmap(lambda G: st.tuples(
    arrays(np.float64, (3, G), elements=st.floats(-5, 5)),
    # no subnormal S: scaling one by k < 1 can underflow it to exactly 0, which switches an
    # estimator to its zero-weight fallback and breaks the scale invariance it is tested for
    arrays(np.float64, (3, G), elements=st.floats(0, 10, allow_subnormal=False)),
    arrays(np.float64, (3, G), elements=st.floats(1, 20)),
))


@settings(max_examples=60, deadline=None)
@given(groups, st.sampled_from(EXPECTED))
def test_property_shape_and_finiteness(data, name):
    r, S, ell = data
    A = _get(name).advantages(r, S, ell)
    assert A.shape == r.shape and np.all(np.isfinite(A))


@settings(max_examples=60, deadline=None)
@given(groups, st.floats(-100, 100))
def test_property_shift_invariance(data, c):
    """Adding c to every reward leaves the centred estimators' advantages unchanged."""
    r, S, ell = data
    for name in ("rloo", "dr_grpo", "optimal_loo", "optimal", "opo", "opo_loo", "grpo"):
        est = estimators.get(name)
        # each side's rounding, plus rounding r + c itself (a relative u perturbation of r + c)
        tol = adv_tol(est, r + c) + adv_tol(est, r) + input_rounding_tol(est, r + c, U)
        np.testing.assert_allclose(est.advantages(r + c, S, ell), est.advantages(r, S, ell), rtol=0, atol=tol)


@settings(max_examples=60, deadline=None)
@given(groups, st.randoms(use_true_random=False))
def test_property_permutation_equivariance(data, rnd):
    """Permuting the group permutes the advantages (what lets the exact engine use multisets)."""
    r, S, ell = data
    perm = list(range(r.shape[-1]))
    rnd.shuffle(perm)
    for name in EXPECTED:
        est = _get(name)
        # a permutation changes only the order of the sums: the rounding bound of adv_tol
        np.testing.assert_allclose(est.advantages(r[:, perm], S[:, perm], ell[:, perm]),
                                   est.advantages(r, S, ell)[:, perm], rtol=0, atol=adv_tol(est, r))


@settings(max_examples=40, deadline=None)
@given(groups, st.floats(0.1, 10))
def test_property_weight_scale_invariance(data, k):
    """Gradient-weighted and length-weighted baselines ignore a common scale of their weights."""
    r, S, ell = data
    for name in ("optimal", "optimal_loo", "opo", "opo_loo"):
        est = estimators.get(name)
        # rounding k·w is a relative u perturbation of every weight
        tol = 2 * adv_tol(est, r) + input_rounding_tol(est, r, U)
        np.testing.assert_allclose(est.advantages(r, k * S, k * ell), est.advantages(r, S, ell), rtol=0, atol=tol)


@settings(max_examples=40, deadline=None)
@given(groups)
def test_property_dr_grpo_rescaled_is_rloo(data):
    r, _, _ = data
    G = r.shape[-1]
    # r_j − r̄ scaled by G/(G−1) against r_j − Σ_{k≠j} r_k/(G−1): G-term sums of terms ≤ max|r|·G/(G−1)
    tol = rounding_tol(G + 6, 2 * float(np.abs(r).max()) * G / (G - 1))
    np.testing.assert_allclose(estimators.get("dr_grpo").advantages(r) * G / (G - 1),
                               estimators.get("rloo").advantages(r), rtol=0, atol=tol)


def test_check_values_false_skips_only_the_value_checks():
    """``check_values=False`` (a GPU caller that validates elsewhere) still checks shapes and
    needs, and gives the same advantages on valid input."""
    r, S = np.array([1.0, 0.0, 1.0]), np.array([1.0, 2.0, 3.0])
    est = estimators.get("optimal_loo")
    np.testing.assert_array_equal(est.advantages(r, sq_norms=S, check_values=False),
                                  est.advantages(r, sq_norms=S))
    assert np.isnan(est.advantages(np.array([1.0, np.nan, 0.0]), sq_norms=S, check_values=False)).any()
    with pytest.raises(ValueError, match="sq_norms must have"):
        est.advantages(r, sq_norms=S[:2], check_values=False)
    with pytest.raises(ValueError, match="needs sq_norms"):
        est.advantages(r, check_values=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), True, None, "1", 1j,
                                 np.array([1.0, np.nan]), np.array([True]), np.array([1j])])
@pytest.mark.parametrize("name, key", [("constant", "b"), ("grpo", "eps"), ("grpo", "ddof"),
                                       ("optimal_loo_shrink", "lam"), ("oracle_optimal", "b_star")])
def test_bad_parameter_is_refused_by_name(name, key, bad):
    """A parameter that is not a finite real number never reaches the formula (``constant`` with
    ``b=nan`` would give NaN advantages); the error names the parameter."""
    with pytest.raises(ValueError, match=rf"estimator '{name}' parameter {key}\b"):
        estimators.get(name, **{key: bad})
    with pytest.raises(ValueError, match=rf"parameter {key}\b"):  # the same check, built directly
        estimators.Estimator(name, {**estimators.spec(name).defaults, key: bad})


def test_bad_max_length_is_refused_by_name():
    for bad in (float("nan"), float("inf"), True, "8", None, 0.0):
        with pytest.raises(ValueError, match="max_length"):
            estimators.get("rloo", aggregation="constant", max_length=bad)


@pytest.mark.parametrize("value", [0, 2.5, np.float32(-1.5), np.int64(3), np.array([[0.5], [1.0]])])
def test_finite_real_parameters_pass(value):
    """Negative control: ints, floats, numpy scalars and real arrays are accepted unchanged."""
    est = estimators.get("constant", b=value)
    r = np.ones((2, 3))
    np.testing.assert_array_equal(est.advantages(r), r - np.asarray(value, dtype=np.float64))
    torch = pytest.importorskip("torch")
    est = estimators.get("oracle_optimal", b_star=torch.tensor([[0.25]], dtype=torch.float64))
    assert torch.equal(est.advantages(torch.ones(1, 3, dtype=torch.float64)),
                       torch.full((1, 3), 0.75, dtype=torch.float64))
