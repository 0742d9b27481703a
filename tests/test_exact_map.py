"""The exact estimator map (`oblr_theory.exact_map`) and the shrinkage variant (T1, T2, T5)."""

import numpy as np
import pytest

from conftest import random_bandit, random_token_mdp
from oblr_theory import estimators, exact, exact_map


@pytest.fixture(scope="module")
def rows():
    return exact_map.map_rows(random_bandit(3, X=2, K=3), "bandit", [2, 3, 5])


def test_unbiased_estimators_have_zero_bias(rows):
    for r in rows:
        if estimators.spec(r["estimator"]).unbiased:
            assert r["bias_sq"] <= 1e-24 * max(r["grad_sq_norm"], 1.0)
            assert r["mse"] == pytest.approx(r["trace_var"], rel=1e-12)


def test_dr_grpo_gain_equals_rloo_gain(rows):
    """T5: a pure scale bias leaves the gain at the optimal step unchanged."""
    by = {(r["group_size"], r["estimator"]): r for r in rows}
    for G in (2, 3, 5):
        assert by[(G, "dr_grpo")]["gain"] == pytest.approx(by[(G, "rloo")]["gain"], rel=1e-10)
        assert by[(G, "dr_grpo")]["eta_star"] == pytest.approx(G / (G - 1) * by[(G, "rloo")]["eta_star"], rel=1e-10)


@pytest.mark.parametrize("make", [lambda: random_bandit(4, X=2, K=4),
                                  lambda: random_token_mdp(5, V=3, H=2, reward="short_answer")])
def test_shrinkage_variance_is_exactly_quadratic_in_lambda(make):
    """The derivation in optimal_loo_shrink's docstring: V(λ) is a quadratic (control variate), so
    three evaluations predict every other λ exactly, and λ* minimises it."""
    P, G = make(), 4
    V = {lam: exact.estimator_moments(P, estimators.get("optimal_loo_shrink", lam=lam), G).trace_var
         for lam in (0.0, 0.5, 1.0, 0.25, -0.7, 1.8)}
    lam_star, v_star, a, b = exact_map.shrinkage_quadratic(V[0.0], V[0.5], V[1.0])
    for lam in (0.25, -0.7, 1.8):
        assert V[lam] == pytest.approx(V[0.0] + a * lam + b * lam * lam, rel=1e-10)
    assert V[0.0] == pytest.approx(exact.estimator_moments(P, "rloo", G).trace_var, rel=1e-12)
    assert V[1.0] == pytest.approx(exact.estimator_moments(P, "optimal_loo", G).trace_var, rel=1e-12)
    v_at = exact.estimator_moments(P, estimators.get("optimal_loo_shrink", lam=lam_star), G).trace_var
    assert v_at == pytest.approx(v_star, rel=1e-10)
    assert v_star <= min(V.values()) * (1 + 1e-12)


def test_shrink_variant_is_unbiased_and_registry_conformant():
    P = random_token_mdp(6, V=3, H=2, reward="short_answer")
    m = exact.estimator_moments(P, "optimal_loo_shrink", 3)
    assert np.max(np.abs(m.bias)) <= 1e-12 * max(1.0, np.max(np.abs(m.grad)))
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    r, S = rng.uniform(size=(4, 5)), rng.uniform(size=(4, 5))
    e = estimators.get("optimal_loo_shrink", lam=0.3)
    np.testing.assert_allclose(e.advantages(r, S), e.advantages(torch.tensor(r), torch.tensor(S)).numpy(), rtol=1e-12)
    perm = rng.permutation(5)
    np.testing.assert_allclose(e.advantages(r[:, perm], S[:, perm]), e.advantages(r, S)[:, perm], rtol=1e-12)
    with pytest.raises(ValueError, match="lam"):
        estimators.get("optimal_loo_shrink", lam=float("nan")).advantages(r, S)


def test_shrinkage_rows_and_errors(rows):
    out = exact_map.shrinkage_rows(rows)
    by = {r["group_size"]: r for r in out}
    assert np.isnan(by[2]["lam_star"])  # G = 2: both baselines are the other response's reward
    assert by[5]["v_lam_star"] <= min(by[5]["v_rloo"], by[5]["v_half"], by[5]["v_optimal_loo"]) * (1 + 1e-12)
    with pytest.raises(ValueError, match="convex"):
        exact_map.shrinkage_quadratic(1.0, 1.0, 1.0)
