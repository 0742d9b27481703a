"""Problems: probabilities, scores and ∇J against finite differences; enumeration limits."""

import numpy as np
import pytest

from oblr_theory import exact
from oblr_theory.problems import SoftmaxBandit, TokenMDP
from oblr_theory.problems import rewards as R
from tolerances import U, gamma, logp_tol, rounding_tol
from tolerances import problem_shape as _shape


def fd_tol(f_max, h, third, slope, theta_max, n_ops):
    """Central difference ``(f(θ+h) − f(θ−h)) / 2h`` against the derivative: truncation
    ``third · h²/6`` (``third`` bounds the third derivative), the two evaluations' rounding
    ``γ_n f_max / h``, and rounding θ ± h (a step off by ≤ u|θ|, times |f'| ≤ ``slope``, over h)."""
    return third * h * h / 6 + gamma(n_ops) * f_max / h + U * (theta_max + h) * slope / h


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
        # each probability is exp of a log-probability (relative error e^δ − 1), summed over n
        rel = np.expm1(logp_tol(small_problem))
        assert abs(o.probs.sum() - 1) <= rel + gamma(o.size) * (1 + rel)
        np.testing.assert_allclose(np.exp(o.log_probs), o.probs, rtol=2 * rel + 2 * U, atol=0)


def test_scores_match_finite_differences_of_log_prob(small_problem):
    theta = small_problem.theta
    for x in range(small_problem.num_prompts):
        fd = _fd(lambda t: small_problem.with_theta(t).outcomes(x).log_probs, theta)
        o = small_problem.outcomes(x)
        H, V, k = _shape(small_problem)
        # log π(y) = Σ_t (z_t[y_t] − logsumexp z_t), θ_i entering ≤ H logits with coefficient 1:
        # |∂_i log π| ≤ H, and |∂³_i log π| ≤ H · max Bernoulli third cumulant (1/(6√3) < 0.1)
        f_max = float(np.abs(o.log_probs).max()) + 1
        tol = fd_tol(f_max, 1e-6, 0.1 * H, H, float(np.abs(theta).max()), H * (V + k + 8))
        np.testing.assert_allclose(o.scores, fd, rtol=0, atol=tol)
        # a d-term sum of squares; a bandit's S is the closed form 1 − 2π_a + ||π||² (terms ≤ 4)
        np.testing.assert_allclose(o.sq_norms, (o.scores ** 2).sum(1), rtol=0,
                                   atol=rounding_tol(small_problem.dim + 8, 4 * max(1.0, float(o.sq_norms.max()))))


def test_score_has_mean_zero(small_problem):
    """E[s | x] = 0, the identity behind T1."""
    for x in range(small_problem.num_prompts):
        o = small_problem.outcomes(x)
        # n-term sums of p·s with |s| ≤ H, plus each probability's own rounding
        H = _shape(small_problem)[0]
        tol = (gamma(o.size) + np.expm1(logp_tol(small_problem))) * H
        np.testing.assert_allclose(o.probs @ o.scores, 0, rtol=0, atol=tol)


def test_gradient_matches_finite_differences_of_objective(small_problem):
    fd = _fd(lambda t: np.array([exact.objective(small_problem.with_theta(t))]), small_problem.theta)[0]
    H, V, k = _shape(small_problem)
    # J = Σ_y π(y) r(y), r ∈ [0, 1]: |∂_i J| ≤ H, |∂³_i J| ≤ H³ + 3H² + H (score powers and their
    # derivatives, |∂_i s_i| ≤ H/4, |∂²_i s_i| ≤ 0.1H); J sums n = #responses products
    n = small_problem.outcomes(0).size
    tol = fd_tol(1.0, 1e-6, H**3 + 3 * H**2 + H, H, float(np.abs(small_problem.theta).max()),
                 n + H * (V + k + 8))
    np.testing.assert_allclose(exact.gradient(small_problem), fd, rtol=0, atol=tol)


def test_bandit_closed_forms():
    b = SoftmaxBandit([0.3, -1.0, 2.0], [1.0, 0.0, 0.5])
    pi = b.policy(0)
    o = b.outcomes(0)
    # K = 3 terms of size ≤ 2 per side, a few operations each
    np.testing.assert_allclose(o.sq_norms, 1 - 2 * pi + pi @ pi, rtol=0, atol=rounding_tol(16, 2.0))
    np.testing.assert_allclose(exact.gradient(b), pi * (b.rewards[0] - pi @ b.rewards[0]), rtol=0,
                               atol=rounding_tol(16, 1.0))


def test_bandit_hessian_matches_finite_differences():
    rng = np.random.default_rng(5)
    b = SoftmaxBandit(rng.normal(size=(2, 3)), rng.uniform(size=(2, 3)), prompt_probs=[0.4, 0.6])
    fd = _fd(lambda t: exact.gradient(b.with_theta(t)), b.theta)
    # f = ∇J (|f| ≤ 1, |f'| ≤ L ≤ 5/2); its second derivative (J's fourth) is a sum of products of
    # ≤ 4 factors (δ − π) of size ≤ 1 times r ∈ [0, 1], at most 4! terms
    tol = fd_tol(1.0, 1e-6, 24.0, b.smoothness_bound(), float(np.abs(b.theta).max()), 64)
    np.testing.assert_allclose(b.hessian(), fd, rtol=0, atol=tol)
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
        # H = 3 steps of a few ops on terms ≤ 2 against a d-term squared norm of terms ≤ H·2
        tol = rounding_tol(m.dim + 3 * (m.vocab_size + 8), 4.0 * m.horizon**2)
        assert np.allclose(per_step, o.sq_norms, rtol=0, atol=tol) == holds
        if not holds:  # the shared case misses by far more than rounding
            assert np.abs(per_step - o.sq_norms).max() > 2 * tol


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
