"""The exact engine: multiset enumeration against brute force over ordered tuples, and speed."""

import itertools
import math
import numpy as np
import pytest

from oblr_theory import estimators, exact
from oblr_theory.problems import SoftmaxBandit

from conftest import random_bandit, random_token_mdp
from tolerances import engine_tol, gamma, rounding_tol


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
    tol = engine_tol(problem, G, ordered=True)  # the brute force adds n^G ordered tuples
    np.testing.assert_allclose(got.mean, mean, rtol=0, atol=tol)
    assert abs(got.trace_var - var) <= tol
    np.testing.assert_array_equal(got.grad, exact.gradient(problem))  # one route, the same operations


def test_aggregation_modes_through_the_engine():
    problem = random_token_mdp(15, "loglinear", V=3, H=2)
    est = estimators.get("rloo", aggregation="token-mean")
    got = exact.estimator_moments(problem, est, 2)
    for x in range(problem.num_prompts):  # compare the per-prompt mean with brute force
        o = problem.outcomes(x)
        m = sum(np.prod(o.probs[list(t)]) * est.advantages(o.rewards[list(t)], lengths=o.lengths[list(t)])
                @ o.scores[list(t)] / 2 for t in itertools.product(range(o.size), repeat=2))
        np.testing.assert_allclose(got.prompt_mean[x], m, rtol=0, atol=engine_tol(problem, 2, ordered=True))


def test_multiset_weights_sum_to_one():
    p = np.random.default_rng(0).dirichlet(np.ones(6))
    for G in (1, 2, 5):
        idx = exact.multisets(6, G)
        assert len(idx) == exact.num_multisets(6, G) == len({tuple(r) for r in idx})
        assert np.all(np.diff(idx, axis=1) >= 0)
        # each log-weight adds ≤ 2G + 2 terms of size ≤ G·max|log p| + log G! (relative error of
        # exp = absolute error of its argument); the sum adds M terms of total 1
        arg_err = gamma(2 * G + 2) * (G * np.abs(np.log(p)).max() + math.lgamma(G + 1))
        tol = gamma(len(idx)) + np.expm1(arg_err) * (1 + gamma(len(idx)))
        assert abs(np.exp(exact.multiset_log_weights(idx, np.log(p))).sum() - 1) <= tol


def test_smoke_ten_armed_bandit_group_of_eight():
    """Smoke: a ten-armed bandit with G = 8 runs (24,310 multisets); its speed is measured by
    experiments/benchmarks/bench_exact.py, not here."""
    b = random_bandit(3, K=10)
    m = exact.estimator_moments(b, "optimal_loo", 8)
    assert exact.num_multisets(10, 8) == 24_310
    assert np.isfinite(m.trace_var) and m.trace_var > 0


def test_prompt_moments_and_b_star():
    b = SoftmaxBandit([[0.1, 0.5, -0.3], [1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    mom = exact.prompt_moments(b)
    for x in range(2):
        o = b.outcomes(x)
        want = (o.probs @ (o.rewards * o.sq_norms)) / (o.probs @ o.sq_norms)
        assert abs(mom.b_star[x] - want) <= rounding_tol(2 * o.size + 1, abs(want))  # two K-term sums, a ratio
    # T3 by brute force: b* minimises the fixed-baseline variance over a grid
    grid = np.linspace(-1, 2, 301)
    single = SoftmaxBandit([0.1, 0.5, -0.3], [1.0, 0.0, 0.0])
    v = [exact.estimator_moments(single, "constant", 3, b=b_).trace_var for b_ in grid]
    # V(b) is a quadratic in b (T3), so the grid's argmin is within half a spacing of b*
    spacing = grid[1] - grid[0]
    assert abs(grid[int(np.argmin(v))] - exact.optimal_baseline(single)[0]) <= spacing / 2 + rounding_tol(8, 2.0)  # grid values ≤ 2, linspace rounding


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


def test_too_large_enumeration_is_refused_with_its_size_and_the_monte_carlo_route(monkeypatch):
    b = random_bandit(0, K=30)
    with pytest.raises(ValueError) as exc:
        exact.estimator_moments(b, "rloo", 12)
    msg = str(exc.value)
    assert f"{exact.num_multisets(30, 12):,} multisets" in msg and "GiB" in msg
    assert "oblr_theory.montecarlo" in msg and "oblr_theory.sequences" in msg
    # the memory limit alone refuses too (a count within MAX_MULTISETS)
    M, mem = exact.check_enumeration(30, 3)
    assert M == exact.num_multisets(30, 3) and mem == exact.enumeration_bytes(M, 3)
    monkeypatch.setattr(exact, "MAX_BYTES", mem - 1)
    with pytest.raises(ValueError, match="needing about"):
        exact.estimator_moments(b, "rloo", 3)


def test_enumeration_states_its_size_and_shows_progress(monkeypatch, capsys):
    b = random_bandit(1, K=6)
    M = sum(exact.num_multisets(6, 4) for _ in range(b.num_prompts))
    quiet = exact.estimator_moments(b, "rloo", 4)  # below PROGRESS_MIN: no bar
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(exact, "PROGRESS_MIN", M)
    shown = exact.estimator_moments(b, "rloo", 4)
    err = capsys.readouterr().err
    assert f"exact rloo G=4: {M:,} multisets" in err and "MiB" in err
    assert shown.trace_var == quiet.trace_var  # the bar changes nothing
    done = []
    exact.group_moments(b.outcomes(0), estimators.get("rloo"), 4, progress=done.append)
    assert sum(done) == 2 * exact.num_multisets(6, 4)  # both passes, every multiset
