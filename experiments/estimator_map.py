"""The exact estimator map (:mod:`oblr_theory.exact_map`) with Monte Carlo dots, and b* against the mean.

    python experiments/estimator_map.py [--quick] [--out results]

Writes (one row per setting; resumable, atomic):
  estimator_map.jsonl   family x G x estimator: exact bias², V, MSE, T5 gain, η* (B = 1)
  estimator_map_mc.jsonl  family x G x estimator x seed: Monte Carlo V̂ from n groups
  baseline_shift.jsonl  length-correlated MDP at random θ: per prompt μ, b*, and V(μ) − V(b*) (T3)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from oblr_theory import estimators, exact, exact_map, families, montecarlo, theory  # noqa: E402
from oblr_theory.results import ResultStore, git_revision, problem_fingerprint  # noqa: E402

QUICK = {"hard_arm_bandit": (2, 3, 4, 6, 8), "length_mdp": (2, 3, 4), "sparse_mdp": (2, 3)}
MC_GROUPS = {"hard_arm_bandit": (2, 4, 8, 16), "length_mdp": (2, 4, 8), "sparse_mdp": (2, 4)}


def run_map(out, quick, rev):
    store = ResultStore(os.path.join(out, "estimator_map.jsonl"))
    sizes = QUICK if quick else exact_map.FAMILY_GROUP_SIZES
    for fam, Gs in sizes.items():
        problem = families.make(fam)
        fp = problem_fingerprint(problem, estimators.names())
        store.prune_family(fam, fp)
        todo = [G for G in Gs if not store.done(f"{fam}/{fp}/G={G}/{estimators.names()[-1]}")]
        for G in tqdm(todo, desc=f"map {fam}", leave=False):
            rows = exact_map.map_rows(problem, fam, [G])
            store.add([dict(r, key=f"{fam}/{fp}/G={G}/{r['estimator']}", setting=fp, quick=quick, rev=rev)
                       for r in rows])


def run_mc(out, quick, rev, seeds=(0,)):
    """Monte Carlo V̂ (sample ``tr Cov`` of n i.i.d. one-group estimates) as dots on the exact curves."""
    store = ResultStore(os.path.join(out, "estimator_map_mc.jsonl"))
    n = 2000 if quick else 20000
    for fam, Gs in MC_GROUPS.items():
        problem = families.make(fam)
        Gs = [G for G in Gs if G in QUICK[fam] or not quick]
        b_star = exact.prompt_moments(problem).b_star
        fp = problem_fingerprint(problem, n)
        store.prune_family(fam, fp)
        for G in tqdm(Gs, desc=f"mc {fam}", leave=False):
            for name in estimators.names():
                for seed in seeds:
                    key = f"{fam}/{fp}/G={G}/{name}/seed={seed}"
                    if store.done(key) or G < estimators.spec(name).min_group:
                        continue
                    rng = np.random.default_rng(np.random.SeedSequence([seed, G]))
                    extra = {"b_star": b_star} if name == "oracle_optimal" else {}
                    u = montecarlo.sample_gradients(problem, name, G, 1, n, rng, **extra)[:, 0]  # (n, d)
                    dev = u - u.mean(axis=0)
                    v_hat = float((dev * dev).sum() / (n - 1))
                    d2 = (dev * dev).sum(axis=1)
                    store.add([dict(key=key, setting=fp, family=fam, group_size=G, estimator=name, seed=seed, n=n,
                                    trace_var_mc=v_hat, std_error=float(d2.std(ddof=1) / np.sqrt(n)),
                                    quick=quick, rev=rev)])


def run_baseline_shift(out, quick, rev):
    """T3 on the length-correlated MDP: μ vs b* = m_rS/m_S at random θ (``init_scale`` varied)."""
    store = ResultStore(os.path.join(out, "baseline_shift.jsonl"))
    base = families.length_mdp()
    num = 40 if quick else 300
    rng_scales = np.random.default_rng(0).uniform(0.2, 3.0, size=num)
    rows = []
    fp = problem_fingerprint(base, num)
    store.prune_family("length_mdp", fp)
    for seed in range(num):
        key = f"length_mdp/{fp}/theta_seed={seed}"
        if store.done(key):
            continue
        theta = rng_scales[seed] * np.random.default_rng(seed).standard_normal(base.dim)
        m = exact.prompt_moments(base.with_theta(theta))
        excess = theory.mean_baseline_excess(m.m_rS, m.m_S, m.mu, 8)
        mean_len = m.m_len
        rows.append(dict(key=key, setting=fp, family="length_mdp", seed=seed, scale=float(rng_scales[seed]), mu=m.mu,
                         b_star=m.b_star, mean_length=mean_len, excess_var_G8=excess,
                         var_bstar_G8=theory.prompt_variance(m, "oracle_optimal", 8), quick=quick, rev=rev))
    if rows:
        store.add(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small G ranges and samples (CI)")
    ap.add_argument("--out", default="results", help="results folder")
    args = ap.parse_args(argv)
    rev = git_revision()
    run_map(args.out, args.quick, rev)
    run_mc(args.out, args.quick, rev)
    run_baseline_shift(args.out, args.quick, rev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
