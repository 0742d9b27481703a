"""Benchmark the exact multiset engine (``exact.estimator_moments``) against a straightforward
Python loop over ``itertools.combinations_with_replacement`` doing the same sum, on the same
problem, in one run. Prints JSON with both times and their ratio.

    python experiments/benchmarks/bench_exact.py [--arms 10] [--group 8] [--estimator optimal_loo]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import numpy as np

from oblr_theory import estimators, exact
from oblr_theory.problems import SoftmaxBandit


def naive_moments(out, est, G):
    """``E ĝ`` and ``V`` by a Python loop over multisets with multinomial weights."""
    mean, second = np.zeros(out.scores.shape[1]), 0.0
    for combo in itertools.combinations_with_replacement(range(out.size), G):
        idx = list(combo)
        counts = np.bincount(idx, minlength=out.size)
        w = math.factorial(G) / np.prod([math.factorial(c) for c in counts]) * np.prod(out.probs[idx])
        g = est.advantages(out.rewards[idx], out.sq_norms[idx], out.lengths[idx]) @ out.scores[idx] / G
        mean += w * g
        second += w * (g @ g)
    return mean, second - mean @ mean


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", type=int, default=10)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--estimator", default="optimal_loo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    bandit = SoftmaxBandit(rng.normal(size=args.arms), rng.uniform(size=args.arms))
    est = estimators.get(args.estimator)
    t_engine, m = best_time(lambda: exact.estimator_moments(bandit, est, args.group), args.repeats)
    t_naive, (mean, var) = best_time(lambda: naive_moments(bandit.outcomes(0), est, args.group), 1)
    print(json.dumps({
        "problem": f"SoftmaxBandit(K={args.arms})", "group_size": args.group, "estimator": args.estimator,
        "multisets": exact.num_multisets(args.arms, args.group),
        "engine_seconds": t_engine, "naive_loop_seconds": t_naive, "speedup_vs_naive": t_naive / t_engine,
        "max_abs_diff_mean": float(np.abs(mean - m.mean).max()), "abs_diff_var": abs(var - m.trace_var),
    }, indent=2))


if __name__ == "__main__":
    main()
