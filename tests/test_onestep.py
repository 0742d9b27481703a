"""The exact one-step laws (``onestep.py``; T4, T5): the law of ``ĝ`` against the exact engine, T4
with the global and a local smoothness constant, T5's best step, and a negative control."""

import math

import numpy as np
import pytest

from conftest import random_bandit, random_token_mdp
from oblr_theory import estimators, exact, onestep, theory
from oblr_theory.problems import SoftmaxBandit
from tolerances import engine_scale, engine_tol, gamma, rounding_tol

UNBIASED = [n for n in estimators.names() if estimators.spec(n).unbiased]


@pytest.mark.parametrize("name", UNBIASED + ["grpo", "dr_grpo"])
def test_unit_and_batch_laws_match_the_exact_engine(name):
    b = random_bandit(10, X=2, K=3)
    for B in (1, 2):
        law = onestep.batch_law(onestep.unit_law(b, name, 3), B)
        m = exact.estimator_moments(b, name, 3, batch_size=B)
        # the law's N^B-point sums against the engine's multiset sums (weights: exp of log-weights
        # with ≤ 2G + 2 rounded terms, then products of B of them)
        n = len(law.weights)
        log_p = max(float(np.abs(np.log(b.outcomes(x).probs)).max()) for x in range(b.num_prompts))
        w_rel = np.expm1(gamma(2 * 3 + 2) * (3 * log_p + math.lgamma(4))) + gamma(2)  # one unit weight
        assert abs(law.weights.sum() - 1) <= gamma(n) + B * w_rel * (1 + gamma(n))
        tol = engine_tol(b, 3) + rounding_tol(n + 9 + b.dim + 16, engine_scale(b, 3))
        np.testing.assert_allclose(law.mean, m.mean, rtol=0, atol=tol)
        assert abs(law.trace_var - m.trace_var) <= tol


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_t4_holds_exactly_on_bandits(seed):
    """T4 with the global L, every unbiased estimator, η from η* to 10/L (exact enumeration)."""
    b = random_bandit(20 + seed, X=2, K=3)
    L, J, grad = b.smoothness_bound(), exact.objective(b), exact.gradient(b)
    for name in UNBIASED:
        law = onestep.batch_law(onestep.unit_law(b, name, 3), 2)
        m, V = law.mean, law.trace_var
        etas = np.array([theory.optimal_step_size(grad @ m, m @ m, V, L), 1 / L, 3 / L, 10 / L])
        lhs = onestep.expected_objective(b, law, etas)
        rhs = np.array([theory.one_step_bound(J, grad, m, V, L, e) for e in etas])
        # lhs: N-point sum of J values (each a K-term softmax sum, |J| ≤ 1); rhs: a few ops on
        # the law's moments, whose terms are η-scaled (η ≤ 10/L) engine-size quantities
        tol = rounding_tol(len(law.weights) + 3 * 8, 1.0) + \
            rounding_tol(len(law.weights) + b.dim + 16, engine_scale(b, 3)) * (1 + etas * (1 + L * etas))
        assert np.all(lhs >= rhs - tol), (name, lhs - rhs)


def test_t4_negative_control_too_small_L_fails():
    """The same exact check fails when L is far below the true curvature (it can fail)."""
    b = SoftmaxBandit([2.0, 0.0, -1.0], [1.0, 0.0, 0.5])
    J, grad = exact.objective(b), exact.gradient(b)
    law = onestep.unit_law(b, "rloo", 2)
    m, V = law.mean, law.trace_var
    L_wrong = 1e-3 * b.smoothness_bound()
    etas = np.linspace(0, 2000, 41)
    lhs = onestep.expected_objective(b, law, etas)
    rhs = np.array([theory.one_step_bound(J, grad, m, V, L_wrong, e) for e in etas])
    assert np.any(lhs < rhs)


def test_t5_best_step_is_at_least_eta_star():
    b = SoftmaxBandit([1.0, -0.5, 0.0], [1.0, 0.2, 0.4])
    L, grad = b.smoothness_bound(), exact.gradient(b)
    for name in ("rloo", "optimal_loo"):
        law = onestep.unit_law(b, name, 4)
        m, V = law.mean, law.trace_var
        eta_star = theory.optimal_step_size(grad @ m, m @ m, V, L)
        eta_best, f_best = onestep.best_step(b, law, 100 / L)
        assert eta_best >= eta_star
        gain = theory.guaranteed_gain(grad @ m, m @ m, V, L)
        assert f_best - exact.objective(b) >= gain


def test_local_smoothness_dominates_the_hessian_at_theta():
    P = random_token_mdp(3, V=3, H=2, X=1)
    law = onestep.unit_law(P, "rloo", 2)
    L = onestep.local_smoothness(P, law, 0.5, num_points=2)
    assert L >= np.max(np.abs(np.linalg.eigvalsh(exact.hessian(P))))


def test_batch_law_rejects_a_batch_size_below_one():
    with pytest.raises(ValueError, match="batch_size"):
        onestep.batch_law(onestep.unit_law(random_bandit(1), "rloo", 2), 0)


def test_batch_law_too_large_is_refused_with_the_monte_carlo_route():
    law = onestep.unit_law(random_bandit(10, X=2, K=3), "rloo", 3)
    B = int(np.ceil(np.log(onestep.MAX_SUPPORT + 1) / np.log(len(law.weights))))  # smallest B over the limit
    with pytest.raises(ValueError, match=f"batch_size={B} over .* GiB .*oblr_theory.montecarlo"):
        onestep.batch_law(law, B)
