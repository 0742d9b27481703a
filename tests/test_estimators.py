"""The registry: contract, zero-denominator rules, numpy/torch agreement, property tests."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from oblr_theory import estimators

EXPECTED = ["reinforce", "constant", "dr_grpo", "grpo", "rloo", "opo", "opo_loo", "optimal",
            "optimal_loo", "oracle_optimal"]


def _get(name, **kw):
    return estimators.get(name, **({"b_star": 0.3} if name == "oracle_optimal" else {}), **kw)


def _inputs(rng, shape):
    return rng.uniform(size=shape), rng.uniform(0.1, 2, size=shape), rng.integers(1, 9, size=shape).astype(float)


def test_names_cover_theory_section_2():
    assert set(EXPECTED) <= set(estimators.names())


def test_formulas_by_hand():
    r, S, ell = np.array([1.0, 0.0, 0.5]), np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0, 1.0])
    A = lambda n, **k: estimators.get(n, **k).advantages(r, S, ell)
    np.testing.assert_allclose(A("reinforce"), r)
    np.testing.assert_allclose(A("constant", b=0.25), r - 0.25)
    np.testing.assert_allclose(A("dr_grpo"), r - 0.5)
    np.testing.assert_allclose(A("grpo", eps=0.0), (r - 0.5) / 0.5)  # Bessel std of (1, 0, .5) = .5
    np.testing.assert_allclose(A("grpo", eps=0.0, ddof=0), (r - 0.5) / np.sqrt(1 / 6))
    np.testing.assert_allclose(A("rloo"), [1 - 0.25, 0 - 0.75, 0.5 - 0.5])
    np.testing.assert_allclose(A("opo"), r - (2 + 0.5) / 4)
    np.testing.assert_allclose(A("opo_loo"), [1 - 0.25, 0 - 2.5 / 3, 0.5 - 2 / 3])
    np.testing.assert_allclose(A("optimal"), r - (1 + 1.5) / 6)
    np.testing.assert_allclose(A("optimal_loo"), [1 - 1.5 / 5, 0 - 2.5 / 4, 0.5 - 1 / 3])
    np.testing.assert_allclose(A("oracle_optimal", b_star=0.4), r - 0.4)


def test_aggregations_are_length_weights():
    r, ell = np.array([1.0, 0.0, 0.5]), np.array([2.0, 1.0, 1.0])
    base = estimators.get("rloo").advantages(r)
    agg = lambda m, **k: estimators.get("rloo", aggregation=m, **k).advantages(r, lengths=ell)
    np.testing.assert_allclose(agg("seq-mean-token-mean"), base / ell)
    np.testing.assert_allclose(agg("token-mean"), base * 3 / 4)
    np.testing.assert_allclose(agg("constant", max_length=8), base / 8)
    assert not estimators.get("rloo", aggregation="token-mean").unbiased


def test_zero_denominator_rules():
    r = np.array([0.3, 0.3, 0.3])
    np.testing.assert_array_equal(estimators.get("grpo", eps=0.0).advantages(r), 0.0)
    r, zero = np.array([1.0, 0.0, 0.5]), np.zeros(3)
    np.testing.assert_allclose(estimators.get("optimal").advantages(r, sq_norms=zero), r - 0.5)
    np.testing.assert_allclose(estimators.get("optimal_loo").advantages(r, sq_norms=zero),
                               estimators.get("rloo").advantages(r))
    np.testing.assert_allclose(estimators.get("opo_loo").advantages(r, lengths=np.array([0.0, 0, 1])),
                               [1 - 0.5, 0 - 0.5, 0.5 - 0.5])
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
    # same source; torch and numpy may sum in a different order, so agreement is to a few ulps
    np.testing.assert_allclose(a_t.numpy(), a_np, rtol=1e-14, atol=1e-15)


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
        np.testing.assert_allclose(est.advantages(r + c, S, ell), est.advantages(r, S, ell), atol=1e-9 * (1 + abs(c)))


@settings(max_examples=60, deadline=None)
@given(groups, st.randoms(use_true_random=False))
def test_property_permutation_equivariance(data, rnd):
    """Permuting the group permutes the advantages (what lets the exact engine use multisets)."""
    r, S, ell = data
    perm = list(range(r.shape[-1]))
    rnd.shuffle(perm)
    for name in EXPECTED:
        est = _get(name)
        # A permutation changes only the order of floating-point sums: differences of a few ulps
        # of |r|, which grpo divides by std + eps (up to 1/eps = 1e6 for a constant group).
        amp = 1.0
        if name == "grpo":
            amp = float(np.max(1.0 / (r.std(axis=-1, ddof=est.params["ddof"]) + est.params["eps"])))
        atol = 1e-12 * (1.0 + float(np.abs(r).max())) * max(1.0, amp)
        np.testing.assert_allclose(est.advantages(r[:, perm], S[:, perm], ell[:, perm]),
                                   est.advantages(r, S, ell)[:, perm], rtol=1e-12, atol=atol)


@settings(max_examples=40, deadline=None)
@given(groups, st.floats(0.1, 10))
def test_property_weight_scale_invariance(data, k):
    """Gradient-weighted and length-weighted baselines ignore a common scale of their weights."""
    r, S, ell = data
    for name in ("optimal", "optimal_loo", "opo", "opo_loo"):
        est = estimators.get(name)
        np.testing.assert_allclose(est.advantages(r, k * S, k * ell), est.advantages(r, S, ell), atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(groups)
def test_property_dr_grpo_rescaled_is_rloo(data):
    r, _, _ = data
    G = r.shape[-1]
    np.testing.assert_allclose(estimators.get("dr_grpo").advantages(r) * G / (G - 1),
                               estimators.get("rloo").advantages(r), atol=1e-12)


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
