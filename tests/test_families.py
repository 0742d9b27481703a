"""The toy families of the comparison: each has the property its docstring claims."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tolerances import rounding_tol
from oblr_theory import dynamics, exact, families


def _exact_ascent(P, eta, steps):
    """Deterministic ascent ``θ ← θ + η ∇J(θ)`` with the exact gradient; returns the final J."""
    theta = P.theta
    for _ in range(steps):
        st = dynamics.exact_state(P.with_theta(theta))
        theta = theta + eta * st.grad
    return st.objective


def test_every_family_builds_and_has_optimum_one():
    for name in families.FAMILIES:
        P = families.make(name)
        # Σ_x p_x · max r, max r = 1: X prompt weights summing to 1, so within 2γ_X of 1
        assert abs(families.optimum(P) - 1.0) <= rounding_tol(P.num_prompts + 1)
    with pytest.raises(ValueError, match="family"):
        families.make("nope")


@pytest.mark.parametrize("name, lo, hi", [("length_mdp", 1e-3, 0.02), ("sparse_mdp", 1e-3, 0.05)])
def test_token_families_start_with_rare_success(name, lo, hi):
    p = families.initial_success(families.make(name))
    assert np.all((p >= lo) & (p <= hi)), p


def test_length_mdp_prefers_long_answers_and_b_star_differs_from_the_mean():
    """T3: b* = m_rS/m_S ≠ μ (by more than half of μ at θ_0); most mass on truncated answers."""
    P = families.length_mdp()
    gap = families.baseline_gap(P)
    assert np.all(gap["gap"] > 0.5 * gap["mu"]), gap
    for o in exact.all_outcomes(P):
        assert o.probs @ (o.lengths == P.horizon) > 0.5  # long answers dominate
        assert set(np.unique(o.rewards)) == {0.0, families.LONG_CREDIT, 1.0}


@pytest.mark.parametrize("name", ["length_mdp", "sparse_mdp"])
def test_optimum_is_attainable_by_exact_ascent(name):
    """J* = 1 is not only a supremum over deterministic policies: exact gradient ascent reaches it
    (negative control below: the earlier sparse targets stall at 0.5)."""
    assert _exact_ascent(families.make(name), 20.0, 400) > 0.99


def test_negative_control_interfering_sparse_targets_stall_exact_ascent():
    from oblr_theory.problems import TokenMDP

    P = TokenMDP(4, 3, "exact_match", num_prompts=2, parametrization="loglinear", seed=2, init_scale=0.3,
                 reward_kwargs={"targets": [(2, 3), (3, 1)]})
    assert _exact_ascent(P, 20.0, 400) < 0.6


def _comparison():
    path = Path(__file__).resolve().parents[1] / "experiments" / "comparison.py"
    spec = importlib.util.spec_from_file_location("_comparison", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_collapse_flags_a_deterministic_wrong_answer_only():
    cmp = _comparison()
    b = families.hard_arm_bandit()
    X, K = b.num_prompts, b.num_arms
    best = np.zeros((X, K)); best[:, 0] = 30.0  # deterministic on the best arm: not collapsed
    decoy = best.copy(); decoy[1] = 0.0; decoy[1, 1] = 30.0  # prompt 1 on the 0.5 decoy
    assert not cmp.collapse(b, best.ravel()).any()
    assert cmp.collapse(b, decoy.ravel()).tolist() == [False, True, False]
    assert not cmp.collapse(b, np.zeros(X * K)).any()  # uniform policy: not deterministic


def test_setting_id_changes_with_the_family_and_the_method():
    cmp = _comparison()
    P = families.length_mdp()
    a = cmp.setting_id(P, "rloo", 10)
    assert a == cmp.setting_id(families.length_mdp(), "rloo", 10)
    assert a != cmp.setting_id(P, "rloo+snr", 10) != cmp.setting_id(P, "rloo", 11)
    assert a != cmp.setting_id(P.with_theta(P.theta + 1e-3), "rloo", 10)
    assert cmp.FULL["eval_seeds"] >= 16
    assert cmp.FULL["eval_seeds"] <= 10_000  # evaluation seeds 0..S−1 never reach the tuning seeds 10000+
