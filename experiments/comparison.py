"""OBLR-PO against reinforce, rloo, dr_grpo, grpo and opo on three toy families (issue 5, item 5).

    python experiments/comparison.py [--quick] [--out results]

Protocol. Every method is an (estimator, learning-rate rule) pair. Its step size (the constant
``η`` of a constant rule, or ``η_max`` of the SNR rule) is tuned on a small grid on TUNING seeds
(10000+i) by the mean of ``J(θ_t)`` over the run (area under the learning curve), then the
tuned setting is evaluated on separate EVALUATION seeds (0..S−1). The same seed gives every
method the same random stream. OBLR-PO = gradient-weighted baseline + SNR learning rate
(``optimal_loo`` and the shrunk variant ``optimal_loo_shrink``); ``rloo+snr`` isolates the rule.

Metrics per evaluation run: final ``J``, the first step with ``J ≥ 0.9 J*`` (90% of the optimum,
``J* = E_x max_y r``), and collapse: the run ends below ``0.9 J*`` with a near-deterministic
policy (mean over prompts of the modal response's probability ≥ 0.95), i.e. stuck on a wrong
answer.

Writes tune.jsonl (family x method x η x tuning seed), tuned.json (the chosen η per family and
method) and comparison.jsonl (family x method x η x evaluation seed, with the learning curve),
resumable and atomic; changing the grid re-tunes and re-evaluates only what is new.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from oblr_theory import dynamics, families  # noqa: E402
from oblr_theory.results import ResultStore, git_revision  # noqa: E402

METHODS = {
    "reinforce": ("reinforce", "constant"),
    "rloo": ("rloo", "constant"),
    "dr_grpo": ("dr_grpo", "constant"),
    "grpo": ("grpo", "constant"),
    "opo": ("opo", "constant"),
    "rloo+snr": ("rloo", "snr"),
    "oblr_po": ("optimal_loo", "snr"),
    "oblr_po_shrink": ("optimal_loo_shrink", "snr"),
}
FULL = dict(etas=[0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0], tune_seeds=4, eval_seeds=16, steps=300)
QUICK = dict(etas=[0.5, 2.0, 8.0], tune_seeds=2, eval_seeds=4, steps=40)
GROUP, BATCH, EMA_BETA, ETA_MIN_FRACTION = 8, 4, 0.9, 0.05
COLLAPSE_MODAL = 0.95


def config(method, eta, steps):
    est, rule = METHODS[method]
    return dynamics.RunConfig(est, GROUP, BATCH, steps, rule, eta=eta, eta_min=ETA_MIN_FRACTION * eta,
                              ema_beta=EMA_BETA)


def summarise_run(tr, i, J_star):
    J = tr.objective[i]
    hit = np.nonzero(J >= 0.9 * J_star)[0]
    final = float(J[-1])
    collapsed = bool(final < 0.9 * J_star and tr.modal_prob[i].mean() >= COLLAPSE_MODAL)
    stride = max(1, len(J) // 100)
    return dict(final_objective=final, steps_to_90=int(hit[0]) if len(hit) else None, collapsed=collapsed,
                mean_objective=float(J.mean()), curve_steps=np.arange(len(J))[::stride], curve=J[::stride],
                lr_curve=tr.lr[i][::stride], snr_hat_curve=tr.snr_hat[i][::stride])


def tune(out, family, spec, rev):
    store = ResultStore(os.path.join(out, "tune.jsonl"))
    P = families.make(family)
    seeds = [10_000 + i for i in range(spec["tune_seeds"])]
    for method in tqdm(METHODS, desc=f"tune {family}", leave=False):
        for eta in spec["etas"]:
            todo = [s for s in seeds if not store.done(f"{family}/{method}/eta={eta}/seed={s}")]
            if todo:
                tr = dynamics.run(P, config(method, eta, spec["steps"]), todo)
                store.add([dict(key=f"{family}/{method}/eta={eta}/seed={s}", family=family, method=method,
                                eta=eta, seed=int(s), steps=spec["steps"], mean_objective=float(tr.objective[i].mean()),
                                final_objective=float(tr.objective[i, -1]), rev=rev) for i, s in enumerate(todo)])
    best = {}
    for method in METHODS:
        score = {eta: np.mean([r["mean_objective"] for r in store.rows if r["family"] == family
                               and r["method"] == method and r["eta"] == eta and r["seed"] in seeds
                               and r["steps"] == spec["steps"]]) for eta in spec["etas"]}
        best[method] = max(spec["etas"], key=lambda e: (score[e], -e))
    return best


def evaluate(out, family, spec, best, rev, quick):
    store = ResultStore(os.path.join(out, "comparison.jsonl"))
    P = families.make(family)
    J_star = families.optimum(P)
    seeds = list(range(spec["eval_seeds"]))
    for method in tqdm(METHODS, desc=f"eval {family}", leave=False):
        eta = best[method]
        todo = [s for s in seeds if not store.done(f"{family}/{method}/eta={eta}/seed={s}")]
        if not todo:
            continue
        tr = dynamics.run(P, config(method, eta, spec["steps"]), todo)
        est, rule = METHODS[method]
        store.add([dict(key=f"{family}/{method}/eta={eta}/seed={s}", family=family, method=method, estimator=est,
                        lr_rule=rule, eta=eta, seed=int(s), group_size=GROUP, batch_size=BATCH,
                        steps=spec["steps"], optimum=J_star, initial_objective=float(tr.objective[i, 0]),
                        quick=quick, rev=rev, **summarise_run(tr, i, J_star)) for i, s in enumerate(todo)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3-point grid, short runs (CI)")
    ap.add_argument("--out", default="results", help="results folder")
    ap.add_argument("--families", default=",".join(families.FAMILIES), help="comma-separated family names")
    args = ap.parse_args(argv)
    spec = QUICK if args.quick else FULL
    rev = git_revision()
    tuned_path = os.path.join(args.out, "tuned.json")
    tuned = json.load(open(tuned_path)) if os.path.exists(tuned_path) else {}
    for family in args.families.split(","):
        best = tune(args.out, family, spec, rev)
        tuned[family] = best
        tmp = tuned_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(tuned, fh, indent=1)
        os.replace(tmp, tuned_path)  # the figures keep only the rows at these step sizes
        evaluate(args.out, family, spec, best, rev, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
