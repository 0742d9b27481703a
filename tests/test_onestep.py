"""The exact one-step laws (``onestep.py``; T4, T5): the law of ``ĝ`` against the exact engine, T4
with the global and a local smoothness constant, T5's best step, and a negative control."""

import numpy as np
import pytest

from conftest import random_bandit, random_token_mdp
from oblr_theory import estimators, exact, onestep, theory
from oblr_theory.problems import SoftmaxBandit

UNBIASED = [n for n in estimators.names() if estimators.spec(n).unbiased]


@pytest.mark.parametrize("name", UNBIASED + ["grpo", "dr_grpo"])
def test_unit_and_batch_laws_match_the_exact_engine(name):
    b = random_bandit(10, X=2, K=3)
    for B in (1, 2):
        law = onestep.batch_law(onestep.unit_law(b, name, 3), B)
        m = exact.estimator_moments(b, name, 3, batch_size=B)
        assert law.weights.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(law.mean, m.mean, atol=1e-13)
        assert law.trace_var == pytest.approx(m.trace_var, rel=1e-10)


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
        assert np.all(lhs >= rhs), (name, lhs - rhs)


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
