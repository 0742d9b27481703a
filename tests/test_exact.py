"""The exact engine: multiset enumeration against brute force over ordered tuples, and speed."""

import itertools
import numpy as np
import pytest

from oblr_theory import estimators, exact
from oblr_theory.problems import SoftmaxBandit

from conftest import random_bandit, random_token_mdp


def brute_force(problem, name, G, B=1, **params):
    """E ĝ and tr Var(ĝ) over all n^G ordered tuples per prompt, then the law of total variance."""
    b_star = exact.optimal_baseline(problem)
    means, seconds = [], []
    for x in range(problem.num_prompts):
        o = problem.outcomes(x)
        est = estimators.get(name, **({"b_star": b_star[x]} if name == "oracle_optimal" else params))
        m, s2 = 0.0, 0.0
        for tup in itertools.product(range(o.size), repeat=G):
            t = list(tup)
            w = np.prod(o.probs[t])
            g = est.advantages(o.rewards[t], o.sq_norms[t], o.lengths[t]) @ o.scores[t] / G
            m, s2 = m + w * g, s2 + w * (g @ g)
        means.append(m)
        seconds.append(s2)
    p = problem.prompt_probs
    mean = p @ np.array(means)
    return mean, (p @ np.array(seconds) - mean @ mean) / B


@pytest.mark.parametrize("name", estimators.names())
@pytest.mark.parametrize("make, G", [
    (lambda: random_bandit(11, X=2, K=3), 3),
    (lambda: random_bandit(12, K=4), 2),
    (lambda: random_token_mdp(13, "loglinear", V=3, H=2), 2),
    (lambda: random_token_mdp(14, "tabular", V=2, H=3, reward="contains"), 3),
])
def test_multisets_match_brute_force(name, make, G):
    problem = make()
    got = exact.estimator_moments(problem, name, G, batch_size=2)
    mean, var = brute_force(problem, name, G, B=2)
    np.testing.assert_allclose(got.mean, mean, atol=1e-12)
    assert got.trace_var == pytest.approx(var, abs=1e-12)
    np.testing.assert_allclose(got.grad, exact.gradient(problem), atol=1e-15)


def test_aggregation_modes_through_the_engine():
    problem = random_token_mdp(15, "loglinear", V=3, H=2)
    est = estimators.get("rloo", aggregation="token-mean")
    got = exact.estimator_moments(problem, est, 2)
    for x in range(problem.num_prompts):  # compare the per-prompt mean with brute force
        o = problem.outcomes(x)
        m = sum(np.prod(o.probs[list(t)]) * est.advantages(o.rewards[list(t)], lengths=o.lengths[list(t)])
                @ o.scores[list(t)] / 2 for t in itertools.product(range(o.size), repeat=2))
        np.testing.assert_allclose(got.prompt_mean[x], m, atol=1e-13)


def test_multiset_weights_sum_to_one():
    p = np.random.default_rng(0).dirichlet(np.ones(6))
    for G in (1, 2, 5):
        idx = exact.multisets(6, G)
        assert len(idx) == exact.num_multisets(6, G) == len({tuple(r) for r in idx})
        assert np.all(np.diff(idx, axis=1) >= 0)
        assert np.exp(exact.multiset_log_weights(idx, np.log(p))).sum() == pytest.approx(1, abs=1e-13)


def test_smoke_ten_armed_bandit_group_of_eight():
    """Smoke: a ten-armed bandit with G = 8 runs (24,310 multisets); its speed is measured by
    experiments/bench_exact.py, not here."""
    b = random_bandit(3, K=10)
    m = exact.estimator_moments(b, "optimal_loo", 8)
    assert exact.num_multisets(10, 8) == 24_310
    assert np.isfinite(m.trace_var) and m.trace_var > 0


def test_prompt_moments_and_b_star():
    b = SoftmaxBandit([[0.1, 0.5, -0.3], [1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    mom = exact.prompt_moments(b)
    for x in range(2):
        o = b.outcomes(x)
        assert mom.b_star[x] == pytest.approx((o.probs @ (o.rewards * o.sq_norms)) / (o.probs @ o.sq_norms))
    # T3 by brute force: b* minimises the fixed-baseline variance over a grid
    grid = np.linspace(-1, 2, 301)
    single = SoftmaxBandit([0.1, 0.5, -0.3], [1.0, 0.0, 0.0])
    v = [exact.estimator_moments(single, "constant", 3, b=b_).trace_var for b_ in grid]
    assert abs(grid[int(np.argmin(v))] - exact.optimal_baseline(single)[0]) <= 0.01


def test_bad_arguments():
    b = random_bandit(0)
    with pytest.raises(ValueError, match="group_size"):
        exact.estimator_moments(b, "rloo", 0)
    with pytest.raises(ValueError, match="batch_size"):
        exact.estimator_moments(b, "rloo", 2, batch_size=0)
    with pytest.raises(ValueError, match="unknown estimator"):
        exact.estimator_moments(b, "nope", 2)
    with pytest.raises(ValueError, match="multisets"):
        exact.multisets(200, 12)
