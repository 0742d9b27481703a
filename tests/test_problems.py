"""Problems: probabilities, scores and ∇J against finite differences; enumeration limits."""

import numpy as np
import pytest

from oblr_theory import exact
from oblr_theory.problems import SoftmaxBandit, TokenMDP
from oblr_theory.problems import rewards as R


def _fd(f, theta, h=1e-6):
    out = []
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        out.append((f(theta + e) - f(theta - e)) / (2 * h))
    return np.array(out).T


def test_probabilities_sum_to_one(small_problem):
    for x in range(small_problem.num_prompts):
        o = small_problem.outcomes(x)
        assert o.probs.sum() == pytest.approx(1.0, abs=1e-13)
        np.testing.assert_allclose(np.exp(o.log_probs), o.probs, rtol=1e-13)


def test_scores_match_finite_differences_of_log_prob(small_problem):
    theta = small_problem.theta
    for x in range(small_problem.num_prompts):
        fd = _fd(lambda t: small_problem.with_theta(t).outcomes(x).log_probs, theta)
        o = small_problem.outcomes(x)
        np.testing.assert_allclose(o.scores, fd, atol=1e-8)
        np.testing.assert_allclose(o.sq_norms, (o.scores ** 2).sum(1), rtol=1e-12)


def test_score_has_mean_zero(small_problem):
    """E[s | x] = 0, the identity behind T1."""
    for x in range(small_problem.num_prompts):
        o = small_problem.outcomes(x)
        np.testing.assert_allclose(o.probs @ o.scores, 0, atol=1e-13)


def test_gradient_matches_finite_differences_of_objective(small_problem):
    fd = _fd(lambda t: np.array([exact.objective(small_problem.with_theta(t))]), small_problem.theta)[0]
    np.testing.assert_allclose(exact.gradient(small_problem), fd, atol=1e-8)


def test_bandit_closed_forms():
    b = SoftmaxBandit([0.3, -1.0, 2.0], [1.0, 0.0, 0.5])
    pi = b.policy(0)
    o = b.outcomes(0)
    np.testing.assert_allclose(o.sq_norms, 1 - 2 * pi + pi @ pi, rtol=1e-14)
    np.testing.assert_allclose(exact.gradient(b), pi * (b.rewards[0] - pi @ b.rewards[0]), atol=1e-15)


def test_bandit_hessian_matches_finite_differences():
    rng = np.random.default_rng(5)
    b = SoftmaxBandit(rng.normal(size=(2, 3)), rng.uniform(size=(2, 3)), prompt_probs=[0.4, 0.6])
    fd = _fd(lambda t: exact.gradient(b.with_theta(t)), b.theta)
    np.testing.assert_allclose(b.hessian(), fd, atol=1e-8)
    assert np.abs(np.linalg.eigvalsh(b.hessian())).max() <= b.smoothness_bound()


def test_token_mdp_counts_and_lengths():
    m = TokenMDP(3, 3, "contains", reward_kwargs={"token": 1})
    assert m.num_sequences == 1 + 2 + 4 + 8
    o = m.outcomes(0)
    seqs = m.sequences(0)
    assert o.size == m.num_sequences == len(seqs)
    np.testing.assert_array_equal(o.lengths, (seqs >= 0).sum(1))
    np.testing.assert_array_equal(o.rewards, (seqs == 1).any(1))


def test_tabular_martingale_orthogonality_per_sample():
    """T8: without shared parameters, per-step scores are orthogonal per sample, so S = Σ_t ||s_t||²;
    the log-linear (shared) parametrisation breaks it per sample."""
    for param, holds in (("tabular", True), ("loglinear", False)):
        m = TokenMDP(3, 3, "contains", reward_kwargs={"token": 1}, parametrization=param, seed=1)
        seqs, o = m.sequences(0), m.outcomes(0)
        per_step = np.zeros(o.size)
        for t in range(m.horizon):
            alive = seqs[:, t] >= 0  # recompute ||e_y − π_t||² step by step
            for i in np.flatnonzero(alive):
                prev = seqs[i, t - 1] if t else 0
                code = sum((v - 1) * 2 ** (t - 1 - j) for j, v in enumerate(seqs[i, :t]))
                rows = m.param_rows(np.array([0]), t, np.array([prev]), np.array([code]))
                z = m.step_logits(rows)[0]
                pi = np.exp(z - z.max()); pi /= pi.sum()
                per_step[i] += 1 - 2 * pi[seqs[i, t]] + pi @ pi
        assert np.allclose(per_step, o.sq_norms, rtol=1e-12) == holds


def test_rewards_builtins():
    toks = np.array([[1, 2, 0], [2, 2, 2], [0, -1, -1]])
    lens = np.array([3, 3, 1])
    pr = np.array([1, 0, 0])
    np.testing.assert_array_equal(R.sum_mod(2)(pr, toks, lens), [1, 0, 1])
    np.testing.assert_array_equal(R.contains(2)(pr, toks, lens), [1, 1, 0])
    np.testing.assert_array_equal(R.exact_match([[0 + 2], [1, 2]])(pr, toks, lens), [1, 0, 0])
    np.testing.assert_array_equal(R.short_answer(2, 3)(pr, toks, lens), [1, 0, 0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(logits=[0.0], rewards=[1.0]), "K >= 2"),
    (dict(logits=[0.0, 1.0], rewards=[1.0]), "rewards must have"),
    (dict(logits=[0.0, np.nan], rewards=[1.0, 0.0]), "logits contains non-finite"),
    (dict(logits=[[0.0, 1.0]] * 2, rewards=[[1.0, 0.0]] * 2, prompt_probs=[0.5]), "prompt_probs"),
])
def test_bandit_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoftmaxBandit(**kwargs)


def test_token_mdp_refuses_too_large():
    m = TokenMDP(16, 12, "contains", parametrization="loglinear", reward_kwargs={"token": 1})
    with pytest.raises(ValueError, match="too large to enumerate"):
        m.outcomes(0)
    with pytest.raises(ValueError, match="use parametrization='loglinear'"):
        TokenMDP(16, 12, "contains", parametrization="tabular", reward_kwargs={"token": 1})
    with pytest.raises(ValueError, match="unknown reward"):
        TokenMDP(3, 2, "nope")
    with pytest.raises(ValueError, match="prompt index"):
        TokenMDP(3, 2, "contains", reward_kwargs={"token": 1}).outcomes(1)
