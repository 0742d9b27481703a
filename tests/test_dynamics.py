"""Training loops and the exact one-step laws (T4, T5, T6): exact checks and their negative controls."""

import numpy as np
import pytest

from conftest import random_bandit, random_token_mdp
from oblr_theory import dynamics, estimators, exact, onestep, snr, theory
from oblr_theory.problems import SoftmaxBandit

UNBIASED = [n for n in estimators.names() if estimators.spec(n).unbiased]


class _Opaque:
    """A bandit hidden behind delegation, so ``run`` takes the generic (enumerating) path."""

    def __init__(self, bandit):
        self._b = bandit

    def __getattr__(self, name):
        return getattr(self._b, name)

    def with_theta(self, theta):
        return _Opaque(self._b.with_theta(theta))


@pytest.mark.parametrize("rule", ["constant", "snr"])
def test_bandit_fast_path_equals_generic_path(rule):
    b = random_bandit(5, X=2, K=3)
    cfg = dynamics.RunConfig("optimal_loo", 3, 2, 15, rule, eta=1.0, eta_min=0.1)
    fast, slow = dynamics.run(b, cfg, [3, 4]), dynamics.run(_Opaque(b), cfg, [3, 4])
    np.testing.assert_allclose(fast.objective, slow.objective, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.lr, slow.lr, rtol=0, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: random_bandit(6, X=2, K=3), lambda: random_token_mdp(7, V=3, H=2)])
def test_seed_streams_do_not_depend_on_the_other_seeds(make):
    P = make()
    cfg = dynamics.RunConfig("rloo", 3, 2, 10, "snr", eta=0.8)
    both, alone = dynamics.run(P, cfg, [11, 12]), dynamics.run(P, cfg, [12])
    np.testing.assert_allclose(both.objective[1], alone.objective[0], rtol=0, atol=1e-12)  # rounding only
    assert not np.allclose(both.objective[0], both.objective[1])


def test_recorded_quantities_are_exact():
    b = random_bandit(8, X=2, K=3)
    cfg = dynamics.RunConfig("rloo", 3, 2, 6, "oracle")
    tr = dynamics.run(b, cfg, [1], keep_theta=True)
    L = b.smoothness_bound()
    for t in range(6):
        P = b.with_theta(tr.thetas[0, t])
        m = exact.estimator_moments(P, "rloo", 3, batch_size=2)
        assert tr.objective[0, t] == pytest.approx(exact.objective(P), rel=1e-12)
        assert tr.exact_var[0, t] == pytest.approx(m.trace_var, rel=1e-12)
        assert tr.lr[0, t] == pytest.approx(snr.oracle_lr(m.grad @ m.grad / m.trace_var, L), rel=1e-10)


def test_lr_rules_respect_their_ranges():
    b = random_bandit(9, X=2, K=3)
    tr = dynamics.run(b, dynamics.RunConfig("rloo", 3, 3, 20, "snr", eta=2.0, eta_min=0.2), [0, 1, 2])
    assert np.all((tr.lr >= 0.2) & (tr.lr <= 2.0))
    tr = dynamics.run(b, dynamics.RunConfig("rloo", 3, 3, 5, "constant", eta=0.7), [0])
    assert np.all(tr.lr == 0.7)


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


def test_t6_oracle_steps_never_decrease_expected_objective():
    b = random_bandit(30, X=2, K=3)
    tr = dynamics.run(b, dynamics.RunConfig("rloo", 3, 2, 8, "oracle"), [0, 1], keep_theta=True)
    for s in range(2):
        for t in range(8):
            P = b.with_theta(tr.thetas[s, t])
            law = onestep.batch_law(onestep.unit_law(P, "rloo", 3), 2)
            assert onestep.expected_objective(P, law, tr.lr[s, t]) >= tr.objective[s, t]


def test_local_smoothness_dominates_the_hessian_at_theta():
    P = random_token_mdp(3, V=3, H=2, X=1)
    law = onestep.unit_law(P, "rloo", 2)
    L = onestep.local_smoothness(P, law, 0.5, num_points=2)
    assert L >= np.max(np.abs(np.linalg.eigvalsh(exact.hessian(P))))


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="lr_rule"):
        dynamics.RunConfig("rloo", lr_rule="adam")
    with pytest.raises(ValueError, match="batch_size"):
        dynamics.RunConfig("rloo", batch_size=1)
    with pytest.raises(ValueError, match="unknown estimator"):
        dynamics.RunConfig("nope")
    with pytest.raises(ValueError, match="smoothness"):
        dynamics.run(random_token_mdp(1, V=3, H=2), dynamics.RunConfig("rloo", 2, 2, 2, "oracle"), [0])
    with pytest.raises(ValueError, match="batch_size"):
        onestep.batch_law(onestep.unit_law(random_bandit(1), "rloo", 2), 0)
