"""Monte Carlo moments: calibrated agreement with the exact engine, large problems without
enumeration, chunking, reproducibility and input errors (the sequence sampler: test_sequences.py)."""

import numpy as np
import pytest

from oblr_theory import estimators, exact, montecarlo as mc, stats
from oblr_theory.problems import TokenMDP

from conftest import random_bandit, short_answer_mdp as _mdp

from tolerances import rounding_tol

ALPHA = 1e-6  # family-wise false-failure rate of each statistical test below


def test_bandit_scores_are_analytic():
    P = random_bandit(3, X=2, K=4)
    s = mc.sample_groups(P, np.array([0, 1, 1]), 5, np.random.default_rng(0))
    assert s.scores.shape == (3, 5, P.dim) and s.rewards.shape == (3, 5)
    for b, x in enumerate(s.prompts):
        pi = P.policy(x)
        for j in range(5):
            a = int(s.sequences.tokens[b * 5 + j, 0])
            want = np.zeros(P.dim)
            want[x * 4:(x + 1) * 4] = np.eye(4)[a] - pi
            # e_a − π entrywise (one subtraction of the same π: ≤ u·1 per entry, two routes)
            np.testing.assert_allclose(s.scores[b, j], want, rtol=0, atol=rounding_tol(1, 1.0))
            # S: a K-term sum of squares against the closed form 1 − 2π_a + ||π||² (terms ≤ 2)
            assert abs(s.sq_norms[b, j] - (1 - 2 * pi[a] + pi @ pi)) <= rounding_tol(4 + 8, 4.0)


@pytest.mark.parametrize("make, G", [
    (lambda: random_bandit(1, X=2, K=3), 3),
    (lambda: _mdp("tabular", X=1), 2),
    (lambda: _mdp("loglinear"), 4),
])
@pytest.mark.parametrize("name", ["reinforce", "rloo", "optimal", "grpo", "opo_loo", "oracle_optimal"])
def test_sample_moments_agree_with_exact_engine(make, G, name):
    """The sampled mean (per coordinate) and tr Var agree with the multiset engine, biased
    estimators included (their exact mean is the engine's E ĝ, not ∇J)."""
    P = make()
    em = exact.estimator_moments(P, name, G)
    u = mc.sample_gradients(P, name, G, 1, 20_000, np.random.default_rng(11))[:, 0]
    acc = stats.TraceVarianceMoments(em.mean).update(u)
    assert stats.mean_test(acc.coords, em.mean, ALPHA / 2).passed
    assert stats.trace_variance_test(acc, em.trace_var, ALPHA / 2).passed


def test_batch_gradients_have_the_engine_batch_variance():
    P = random_bandit(4, X=3, K=3)
    em = exact.estimator_moments(P, "rloo", 2, batch_size=5)
    g = mc.sample_gradients(P, "rloo", 2, 5, 8_000, np.random.default_rng(2)).mean(axis=1)
    acc = stats.TraceVarianceMoments(em.mean).update(g)
    assert stats.trace_variance_test(acc, em.trace_var, ALPHA).passed


def test_aggregation_modes_follow_the_engine():
    P = _mdp("loglinear")
    est = estimators.get("rloo", aggregation="token-mean")
    em = exact.estimator_moments(P, est, 2)
    u = mc.sample_gradients(P, est, 2, 1, 20_000, np.random.default_rng(3))[:, 0]
    assert stats.mean_test(stats.SampleMoments.of(u), em.mean, ALPHA).passed
    # token-mean is not unbiased for ∇J: a test against ∇J must reject
    assert not stats.mean_test(stats.SampleMoments.of(u), em.grad, ALPHA).passed


def test_oracle_b_star_per_prompt():
    P = random_bandit(6, X=2, K=3)
    b = exact.optimal_baseline(P)
    s = mc.sample_groups(P, np.array([0, 1, 0]), 3, np.random.default_rng(0))
    got = mc.group_gradients(s, "oracle_optimal", b_star=b)
    want = np.stack([((s.rewards[i] - b[x]) @ s.scores[i]) / 3 for i, x in enumerate(s.prompts)])
    # G = 3 products (r − b)·s with |r − b| ≤ 1, |s| ≤ 1, summed and divided by G
    np.testing.assert_allclose(got, want, rtol=0, atol=rounding_tol(3 + 3, 3.0))
    with pytest.raises(ValueError, match="b_star"):
        mc.group_gradients(s, "oracle_optimal")


def test_large_token_mdp_is_sampled_without_enumeration(monkeypatch):
    P = TokenMDP(16, 12, "contains", num_prompts=2, parametrization="loglinear", seed=0, init_scale=0.3,
                 reward_kwargs={"token": 3})
    with pytest.raises(ValueError, match="too large to enumerate"):
        P.outcomes(0)
    monkeypatch.setattr(mc, "MAX_CHUNK_ENTRIES", 4 * P.dim * 100)  # force chunks of 100 groups
    chunks = list(mc.iter_groups(P, 4, 450, np.random.default_rng(0)))
    assert [len(c.prompts) for c in chunks] == [100, 100, 100, 100, 50]
    assert all(c.scores.shape == (len(c.prompts), 4, P.dim) for c in chunks)
    seq = chunks[0].sequences
    assert np.all((seq.lengths >= 1) & (seq.lengths <= 12))
    ended = seq.tokens[np.arange(len(seq.lengths)), seq.lengths.astype(int) - 1] == 0
    assert np.all(ended | (seq.lengths == 12))
    g = mc.sample_gradients(P, "optimal_loo", 4, 3, 7, np.random.default_rng(1))
    assert g.shape == (7, 3, P.dim) and np.all(np.isfinite(g))


def test_same_seed_same_sample():
    P = _mdp("loglinear")
    a = mc.sample_gradients(P, "rloo", 3, 2, 50, np.random.default_rng(9))
    b = mc.sample_gradients(P, "rloo", 3, 2, 50, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)


def test_clear_errors():
    P = _mdp("tabular")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="problem"):
        mc.sample_groups(object(), np.array([0]), 2, rng)
    with pytest.raises(ValueError, match="prompts_b"):
        mc.sample_groups(P, np.array([5]), 2, rng)
    with pytest.raises(ValueError, match="rng"):
        mc.sample_groups(P, np.array([0]), 2, 123)
    with pytest.raises(ValueError, match="group_size"):
        mc.sample_groups(P, np.array([0]), 0, rng)
    with pytest.raises(ValueError, match="tokens_nh"):
        mc.score_sequences(P, np.array([0]), np.zeros((1, 2), dtype=int))
    with pytest.raises(ValueError, match="unknown estimator"):
        mc.sample_gradients(P, "nope", 2, 1, 1, rng)


def test_categorical_is_the_inverse_cdf_and_never_draws_a_zero_probability_category():
    """``y = #{v : F(v) ≤ u}`` (ties at ``u = F(v)`` move past v), clipped to ``V−1``; at ``u = 0``
    and at every tie a zero-probability category is skipped; frequencies match ``probs``."""
    probs = np.array([0.0, 0.25, 0.0, 0.75, 0.0])
    F = np.cumsum(probs)
    u = np.array([0.0, 0.1, 0.25, 0.5, 1 - 1e-16])
    y = mc.categorical(probs, u)
    np.testing.assert_array_equal(y, [1, 1, 3, 3, 3])
    np.testing.assert_array_equal(y, np.minimum((u[:, None] >= F).sum(-1), 4))
    draws = mc.categorical(probs, np.random.default_rng(0).random(40_000))
    assert set(np.unique(draws)) == {1, 3}
    # binomial count of category 1: |z| < 5 fails with probability < 1e-6
    assert abs((draws == 1).sum() - 10_000) < 5 * np.sqrt(40_000 * 0.25 * 0.75)
