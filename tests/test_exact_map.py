"""The exact estimator map (`oblr_theory.exact_map`) and the shrinkage variant (T1, T2, T5)."""

import numpy as np
import pytest

from conftest import random_bandit, random_token_mdp
from oblr_theory import estimators, exact, exact_map
from tolerances import engine_tol, rounding_tol

MAP_PROBLEM = lambda: random_bandit(3, X=2, K=3)  # noqa: E731
#: one engine route against the exact gradient or another engine value, largest G of the map
MAP_TOL = engine_tol(MAP_PROBLEM(), 5)


@pytest.fixture(scope="module")
def rows():
    return exact_map.map_rows(MAP_PROBLEM(), "bandit", [2, 3, 5])


def lebesgue(lam, nodes=(0.0, 0.5, 1.0)):
    """Σ_i |ℓ_i(λ)| of the quadratic through ``nodes``: how much the quadratic's prediction at
    ``λ`` can amplify errors of the three values it is built from."""
    total = 0.0
    for i, xi in enumerate(nodes):
        li = 1.0
        for j, xj in enumerate(nodes):
            if j != i:
                li *= (lam - xj) / (xi - xj)
        total += abs(li)
    return total


def test_unbiased_estimators_have_zero_bias(rows):
    for r in rows:
        if estimators.spec(r["estimator"]).unbiased:
            dim = 6  # X·K
            assert r["bias_sq"] <= dim * MAP_TOL**2  # each bias entry within the engine's rounding
            assert abs(r["mse"] - r["trace_var"]) <= dim * MAP_TOL**2 + rounding_tol(2, r["mse"])


def test_dr_grpo_gain_equals_rloo_gain(rows):
    """T5: a pure scale bias leaves the gain at the optimal step unchanged."""
    by = {(r["group_size"], r["estimator"]): r for r in rows}
    for G in (2, 3, 5):
        dr, rl = by[(G, "dr_grpo")], by[(G, "rloo")]
        # gain = (∇J·m)²/(2L(||m||²+V)) from engine values within MAP_TOL: relative error ≤
        # 2·tol/|∇J·m| (squared numerator) + tol/(||m||²+V) per route, two routes, and a few ops
        gm = (G - 1) / G * dr["grad_sq_norm"]
        rel = 2 * (2 * MAP_TOL * np.sqrt(6) / gm + 2 * MAP_TOL / dr["trace_var"]) + rounding_tol(8)
        assert dr["gain"] == pytest.approx(rl["gain"], rel=rel, abs=0)
        assert dr["eta_star"] == pytest.approx(G / (G - 1) * rl["eta_star"], rel=rel, abs=0)


@pytest.mark.parametrize("make", [lambda: random_bandit(4, X=2, K=4),
                                  lambda: random_token_mdp(5, V=3, H=2, reward="short_answer")])
def test_shrinkage_variance_is_exactly_quadratic_in_lambda(make):
    """The derivation in optimal_loo_shrink's docstring: V(λ) is a quadratic (control variate), so
    three evaluations predict every other λ exactly, and λ* minimises it."""
    P, G = make(), 4
    V = {lam: exact.estimator_moments(P, estimators.get("optimal_loo_shrink", lam=lam), G).trace_var
         for lam in (0.0, 0.5, 1.0, 0.25, -0.7, 1.8)}
    lam_star, v_star, a, b = exact_map.shrinkage_quadratic(V[0.0], V[0.5], V[1.0])
    # the baseline λ·b_opt + (1 − λ)·b_rloo is at most (|λ| + |1 − λ|) ≤ 2.6 times the rewards' range
    tol = engine_tol(P, G, max_abs_b=2.6)
    for lam in (0.25, -0.7, 1.8):
        assert abs(V[lam] - (V[0.0] + a * lam + b * lam * lam)) <= tol * (1 + lebesgue(lam))
    assert abs(V[0.0] - exact.estimator_moments(P, "rloo", G).trace_var) <= tol
    assert abs(V[1.0] - exact.estimator_moments(P, "optimal_loo", G).trace_var) <= tol
    v_at = exact.estimator_moments(P, estimators.get("optimal_loo_shrink", lam=lam_star), G).trace_var
    assert abs(v_at - v_star) <= tol * (1 + lebesgue(lam_star))
    assert v_star <= min(V.values()) + tol * (1 + lebesgue(lam_star))


def test_shrink_variant_is_unbiased_and_registry_conformant():
    P = random_token_mdp(6, V=3, H=2, reward="short_answer")
    m = exact.estimator_moments(P, "optimal_loo_shrink", 3)
    assert np.max(np.abs(m.bias)) <= engine_tol(P, 3)
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    r, S = rng.uniform(size=(4, 5)), rng.uniform(size=(4, 5))
    e = estimators.get("optimal_loo_shrink", lam=0.3)
    # two baselines (G-term weighted means, denominators ≥ 1 after scaling, |r| ≤ 1) mixed by λ
    tol = rounding_tol(2 * 5 + 16, 2.0 * (abs(0.3) + abs(1 - 0.3)) + 1.0)
    np.testing.assert_allclose(e.advantages(r, S), e.advantages(torch.tensor(r), torch.tensor(S)).numpy(),
                               rtol=0, atol=tol)
    perm = rng.permutation(5)
    np.testing.assert_allclose(e.advantages(r[:, perm], S[:, perm]), e.advantages(r, S)[:, perm], rtol=0, atol=tol)
    with pytest.raises(ValueError, match="lam"):
        estimators.get("optimal_loo_shrink", lam=float("nan")).advantages(r, S)


def test_shrinkage_rows_and_errors(rows):
    out = exact_map.shrinkage_rows(rows)
    by = {r["group_size"]: r for r in out}
    assert np.isnan(by[2]["lam_star"])  # G = 2: both baselines are the other response's reward
    lam = by[5]["lam_star"]
    assert by[5]["v_lam_star"] <= min(by[5]["v_rloo"], by[5]["v_half"], by[5]["v_optimal_loo"]) + \
        engine_tol(MAP_PROBLEM(), 5, max_abs_b=abs(lam) + abs(1 - lam)) * (1 + lebesgue(lam))
    with pytest.raises(ValueError, match="convex"):
        exact_map.shrinkage_quadratic(1.0, 1.0, 1.0)
