"""OBLR-PO against reinforce, rloo, dr_grpo, grpo and opo on three toy families.

    python experiments/comparison.py [--quick] [--out results] [--families a,b] [--methods paper|lr_rules|m1,m2]

Protocol. Every method is an (estimator, learning-rate rule) pair. Its one step-size parameter
(the constant ``η`` of a constant rule, or ``η_max`` of the SNR rule) is tuned by the *same*
procedure for every method: a geometric grid ``FULL["etas"]``, TUNING seeds ``10000+i``, score
= mean of the exact ``J(θ_t)`` over the run (area under the learning curve), ties to the smaller
step. The tuned setting is then evaluated on separate EVALUATION seeds ``0..eval_seeds−1``; nothing is
tuned on them. The same seed gives every method the same random stream (common random numbers).

Methods. Constant-step baselines ``reinforce``, ``rloo``, ``dr_grpo``, ``grpo``, ``opo``;
OBLR-PO = gradient-weighted baseline + SNR learning rate (``oblr_po``: ``optimal_loo``;
``oblr_po_shrink``: ``optimal_loo_shrink``, λ = 1/2). Two ablations split OBLR-PO in two:
``rloo+snr`` (the SNR rule alone, T5) and ``optimal_loo`` / ``optimal_loo_shrink`` with a
constant step (the baseline alone, T3).

SNR rule (T5 online, :func:`oblr_theory.snr.snr_lr`): ``η_t = clip(η_max SNR̂_t/(1+SNR̂_t),
η_min, η_max)`` with ``SNR̂_t`` the T7 estimate from the ``B`` per-group gradients of the batch,
numerator and denominator smoothed by separate EMAs (``β = EMA_BETA``, about ``1/(1−β) = 10``
batches, bias-corrected), and the floor ``η_min = ETA_MIN_FRACTION · η_max`` (a fixed fraction,
so the rule keeps one tuned parameter, as the constant rules do).

Learning-rate rules (``--methods lr_rules``, docs/lr_rule.md): ``rloo+local`` and
``oblr_po_local`` use T5 with a local curvature (:func:`oblr_theory.snr.local_lr`, ``η_max``
tuned, the same floor fraction); ``rloo+local_exact`` is that rule with the curvature from
exact-gradient secants (an oracle: how well the rule could do with a perfect ``κ``);
``rloo+adam`` is Adam on ``ĝ`` with a tuned constant rate and
``rloo+adam_snr`` multiplies that rate by ``SNR̂/(1+SNR̂)`` (the SNR rule, floor included). Adam's
grid is the SGD grid times ``GRID_SCALE["adam"]`` (Adam's step is per coordinate, about ``η``).

Metrics per evaluation run: final ``J``; the first step with ``J ≥ 0.9 J*`` (``J* = E_x max_y r``,
:func:`oblr_theory.families.optimum`); collapse: some prompt's final policy puts
``≥ COLLAPSE_MODAL`` of its mass on one response whose reward is below that prompt's best
(deterministic on a wrong or partial answer, from which the gradient ``∝ π(1−π)`` can hardly
escape); ``collapsed_prompts`` is the fraction of such prompts.

Files (resumable, atomic): tune.jsonl (family x method x η x tuning seed), tuned.json (per
family and method: the chosen η, the grid, whether it sits at the grid's edge, the setting id)
and comparison.jsonl (family x method x η x evaluation seed, with the learning curve). Every key
carries a *setting id*, a hash of the family's problem at ``θ_0`` (parameters and every
response's reward) and of the run configuration, so a changed family or config never reuses
stale rows.
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

from oblr_theory import dynamics, exact, families  # noqa: E402
from oblr_theory.results import ResultStore, atomic_write_text, git_revision, problem_fingerprint  # noqa: E402

METHODS = {
    "reinforce": ("reinforce", "constant"),
    "rloo": ("rloo", "constant"),
    "dr_grpo": ("dr_grpo", "constant"),
    "grpo": ("grpo", "constant"),
    "opo": ("opo", "constant"),
    "optimal_loo": ("optimal_loo", "constant"),
    "optimal_loo_shrink": ("optimal_loo_shrink", "constant"),
    "rloo+snr": ("rloo", "snr"),
    "oblr_po": ("optimal_loo", "snr"),
    "oblr_po_shrink": ("optimal_loo_shrink", "snr"),
    "rloo+local": ("rloo", "local"),
    "oblr_po_local": ("optimal_loo", "local"),
    "rloo+local_exact": ("rloo", "local_exact"),
    "rloo+adam": ("rloo", "constant", "adam"),
    "rloo+adam_snr": ("rloo", "snr", "adam"),
}
#: Named method sets for ``--methods``: the paper's comparison and the learning-rate-rule study.
METHOD_SETS = {
    "paper": ("reinforce", "rloo", "dr_grpo", "grpo", "opo", "optimal_loo", "optimal_loo_shrink",
              "rloo+snr", "oblr_po", "oblr_po_shrink"),
    "lr_rules": ("rloo", "rloo+snr", "rloo+local", "rloo+local_exact", "rloo+adam", "rloo+adam_snr",
                 "optimal_loo", "oblr_po", "oblr_po_local"),
}
#: Per optimizer, the factor applied to the η grid.
GRID_SCALE = {"sgd": 1.0, "adam": 2.0**-4}
#: η grid: geometric, factor 2, from 1/4 to 256 (wide enough that tuned steps are interior).
FULL = dict(etas=[float(2.0**k) for k in range(-2, 9)], tune_seeds=4, eval_seeds=16, steps=250)
QUICK = dict(etas=[0.5, 2.0, 8.0], tune_seeds=2, eval_seeds=4, steps=40)
GROUP, BATCH, EMA_BETA, ETA_MIN_FRACTION = 8, 4, 0.9, 0.05
COLLAPSE_MODAL = 0.95


def method_spec(method):
    """``(estimator, lr_rule, optimizer)`` of ``method`` (a 2-tuple in :data:`METHODS` is SGD)."""
    if method not in METHODS:
        raise ValueError(f"unknown method={method!r}; known: {', '.join(METHODS)}")
    est, rule, *opt = METHODS[method]
    return est, rule, (opt[0] if opt else "sgd")


def grid(method, spec):
    """The η grid of ``method``: ``spec["etas"]`` times its optimizer's :data:`GRID_SCALE`."""
    return [float(e * GRID_SCALE[method_spec(method)[2]]) for e in spec["etas"]]


def parse_methods(text):
    """``--methods``: a name of :data:`METHOD_SETS` or a comma-separated list of methods."""
    names = METHOD_SETS.get(text, text.split(","))
    for m in names:
        method_spec(m)
    return list(names)


def config(method, eta, steps):
    est, rule, opt = method_spec(method)
    return dynamics.RunConfig(est, GROUP, BATCH, steps, rule, eta=eta, eta_min=ETA_MIN_FRACTION * eta,
                              ema_beta=EMA_BETA, optimizer=opt)


def setting_id(problem, method, steps) -> str:
    """A short hash of the problem at ``θ_0`` and of the run configuration of ``method``
    (estimator, rule, G, B, steps, EMA, η_min fraction)."""
    return problem_fingerprint(problem, METHODS[method], GROUP, BATCH, steps, EMA_BETA, ETA_MIN_FRACTION)


def collapse(problem, theta):
    """Per prompt: ``True`` where the policy at ``theta`` puts ``≥ COLLAPSE_MODAL`` on one response
    whose reward is below the prompt's best, shape ``(X,)``."""
    outs = exact.all_outcomes(problem.with_theta(theta))
    return np.array([o.probs.max() >= COLLAPSE_MODAL and o.rewards[np.argmax(o.probs)] < o.rewards.max()
                     for o in outs])


def summarise_run(problem, tr, i, J_star):
    J = tr.objective[i]
    hit = np.nonzero(J >= 0.9 * J_star)[0]
    coll = collapse(problem, tr.theta[i])
    stride = max(1, len(J) // 100)
    return dict(final_objective=float(J[-1]), steps_to_90=int(hit[0]) if len(hit) else None,
                collapsed=bool(coll.any()), collapsed_prompts=float(coll.mean()),
                mean_objective=float(J.mean()), curve_steps=np.arange(len(J))[::stride], curve=J[::stride],
                lr_curve=tr.lr[i][::stride], snr_hat_curve=tr.snr_hat[i][::stride],
                median_lr=float(np.median(tr.lr[i])), median_curvature=_median_or_none(tr.curvature[i]))


def _median_or_none(x):
    """Median of the finite entries, ``None`` where none is (e.g. κ of a rule that has none)."""
    x = np.asarray(x)[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def tune(out, family, spec, rev, methods=METHOD_SETS["paper"]):
    """Grid search on the tuning seeds; returns ``{method: dict(eta, grid, at_edge, setting)}``."""
    store = ResultStore(os.path.join(out, "tune.jsonl"))
    P = families.make(family)
    seeds = [10_000 + i for i in range(spec["tune_seeds"])]
    ids = {m: setting_id(P, m, spec["steps"]) for m in methods}
    jobs = [(m, eta) for m in methods for eta in grid(m, spec)]
    for method, eta in tqdm(jobs, desc=f"tune {family}", leave=False):
        key = f"{family}/{method}/{ids[method]}/eta={eta}"
        todo = [s for s in seeds if not store.done(f"{key}/seed={s}")]
        if todo:
            tr = dynamics.run(P, config(method, eta, spec["steps"]), todo)
            store.add([dict(key=f"{key}/seed={s}", family=family, method=method, setting=ids[method],
                            eta=eta, seed=int(s), steps=spec["steps"], mean_objective=float(tr.objective[i].mean()),
                            final_objective=float(tr.objective[i, -1]), rev=rev) for i, s in enumerate(todo)])
    best = {}
    for method in methods:
        etas = grid(method, spec)
        score = {eta: np.mean([r["mean_objective"] for r in store.rows if r["family"] == family
                               and r["method"] == method and r.get("setting") == ids[method]
                               and r["eta"] == eta and r["seed"] in seeds]) for eta in etas}
        eta = max(etas, key=lambda e: (score[e], -e))
        at_edge = eta in (min(etas), max(etas))
        best[method] = dict(eta=eta, grid=etas, at_edge=at_edge, setting=ids[method],
                            tune_score=float(score[eta]))
    return best


def edge_note(tuned: dict) -> str | None:
    """One line naming every (family, method) whose tuned η is the first or last grid point, or
    ``None``: such a step is a bound of the search, not an interior optimum."""
    at_edge = {f: [m for m, b in ms.items() if b.get("at_edge")] for f, ms in tuned.items()}
    parts = [f"{f} ({len(ms)}/{len(tuned[f])}: {', '.join(ms)})" for f, ms in at_edge.items() if ms]
    if not parts:
        return None
    return "note: tuned η at the edge of the grid for " + "; ".join(parts) + " (marked 'edge' in learning_curves.md)"


def evaluate(out, family, spec, best, rev, quick):
    store = ResultStore(os.path.join(out, "comparison.jsonl"))
    P = families.make(family)
    J_star = families.optimum(P)
    seeds = list(range(spec["eval_seeds"]))
    for method in tqdm(best, desc=f"eval {family}", leave=False):
        eta, sid = best[method]["eta"], best[method]["setting"]
        key = f"{family}/{method}/{sid}/eta={eta}"
        todo = [s for s in seeds if not store.done(f"{key}/seed={s}")]
        if not todo:
            continue
        tr = dynamics.run(P, config(method, eta, spec["steps"]), todo)
        est, rule, opt = method_spec(method)
        store.add([dict(key=f"{key}/seed={s}", family=family, method=method, setting=sid, estimator=est,
                        lr_rule=rule, optimizer=opt, eta=eta, eta_at_edge=best[method]["at_edge"], seed=int(s),
                        group_size=GROUP, batch_size=BATCH, ema_beta=EMA_BETA,
                        eta_min_fraction=ETA_MIN_FRACTION, steps=spec["steps"], optimum=J_star,
                        initial_objective=float(tr.objective[i, 0]), quick=quick, rev=rev,
                        **summarise_run(P, tr, i, J_star)) for i, s in enumerate(todo)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3-point grid, short runs (CI)")
    ap.add_argument("--out", default="results", help="results folder")
    ap.add_argument("--families", default=",".join(families.FAMILIES), help="comma-separated family names")
    ap.add_argument("--methods", default="paper",
                    help=f"a method set ({', '.join(METHOD_SETS)}) or comma-separated methods")
    args = ap.parse_args(argv)
    methods = parse_methods(args.methods)
    spec = QUICK if args.quick else FULL
    rev = git_revision()
    tuned_path = os.path.join(args.out, "tuned.json")
    tuned = json.load(open(tuned_path)) if os.path.exists(tuned_path) else {}
    for family in tqdm(args.families.split(","), desc="families"):
        best = tune(args.out, family, spec, rev, methods)
        tuned[family] = {**tuned.get(family, {}), **best}
        atomic_write_text(tuned_path, json.dumps(tuned, indent=1))  # figures keep only these settings' rows
        evaluate(args.out, family, spec, best, rev, args.quick)
    note = edge_note({f: {m: tuned[f][m] for m in methods} for f in args.families.split(",")})
    if note:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
