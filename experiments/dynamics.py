"""One-step bound (T4) against the exact expected gain, and SNR / learning-rate traces (T5–T7).

    python experiments/dynamics.py [--quick] [--out results]

Writes (resumable, atomic, one row per setting and seed):
  t4_gain.jsonl   random bandit states x estimator: η grid, exact E J(θ+ηĝ) − J, T4 bound − J, η*
  traces.jsonl    hard-arm bandit, rloo / optimal_loo x lr rule {constant 1/L, oracle η*, snr}:
                  per-step exact J, ||∇J||², exact SNR, estimated (EMA) SNR and learning rate
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from oblr_theory import dynamics, exact, families, onestep, theory  # noqa: E402
from oblr_theory.problems import SoftmaxBandit  # noqa: E402
from oblr_theory.results import ResultStore, git_revision, problem_fingerprint  # noqa: E402


def run_t4(out, quick, rev):
    store = ResultStore(os.path.join(out, "t4_gain.jsonl"))
    G, B = 4, 2
    states = 3 if quick else 12
    for seed in tqdm(range(states), desc="T4 states", leave=False):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
        P = SoftmaxBandit(1.5 * rng.normal(size=(2, 3)), rng.uniform(size=(2, 3)))
        L, J, grad = P.smoothness_bound(), exact.objective(P), exact.gradient(P)
        etas = np.linspace(0.0, 4.0 / L, 41)
        fp = problem_fingerprint(P, G, B, etas)
        for name in ("reinforce", "rloo", "optimal_loo", "oracle_optimal"):
            key = f"state={seed}/{fp}/{name}"
            if store.done(key):
                continue
            law = onestep.batch_law(onestep.unit_law(P, name, G), B)
            m, V = law.mean, law.trace_var
            gain = onestep.expected_objective(P, law, etas) - J
            bound = np.array([theory.one_step_bound(J, grad, m, V, L, e) for e in etas]) - J
            store.add([dict(key=key, seed=seed, estimator=name, group_size=G, batch_size=B, smoothness=L,
                            etas=etas, exact_gain=gain, bound_gain=bound, grad_sq_norm=float(grad @ grad),
                            trace_var=V, eta_star=theory.optimal_step_size(max(grad @ m, 0), m @ m, V, L),
                            quick=quick, rev=rev)])


def run_traces(out, quick, rev):
    store = ResultStore(os.path.join(out, "traces.jsonl"))
    P = families.hard_arm_bandit()
    L = P.smoothness_bound()
    T, seeds = (60, range(4)) if quick else (400, range(16))
    fp = problem_fingerprint(P, T, quick)
    store.prune_family("hard_arm_bandit", fp)
    for name in ("rloo", "optimal_loo"):
        for rule, eta in (("constant", 1.0 / L), ("oracle", None), ("snr", 1.0 / L)):
            todo = [s for s in seeds if not store.done(f"{fp}/{name}/{rule}/seed={s}")]
            if not todo:
                continue
            cfg = dynamics.RunConfig(name, group_size=4, batch_size=4, num_steps=T, lr_rule=rule,
                                     eta=eta or 0.0, ema_beta=0.9, exact_every=1 if not quick else 2)
            with tqdm(total=T, desc=f"traces {name}/{rule}", leave=False) as bar:
                tr = dynamics.run(P, cfg, todo, progress=bar.update)
            store.add([dict(key=f"{fp}/{name}/{rule}/seed={s}", setting=fp, family="hard_arm_bandit", estimator=name,
                            lr_rule=rule, eta=eta, seed=int(s), group_size=4, batch_size=4, smoothness=L,
                            objective=tr.objective[i], grad_sq_norm=tr.grad_sq_norm[i], lr=tr.lr[i],
                            snr_hat=tr.snr_hat[i], exact_snr=tr.exact_snr[i], exact_var=tr.exact_var[i],
                            quick=quick, rev=rev) for i, s in enumerate(todo)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few states, short runs (CI)")
    ap.add_argument("--out", default="results", help="results folder")
    args = ap.parse_args(argv)
    rev = git_revision()
    run_t4(args.out, args.quick, rev)
    run_traces(args.out, args.quick, rev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
