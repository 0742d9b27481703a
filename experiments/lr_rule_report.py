"""Markdown tables of the learning-rate-rule study (docs/lr_rule.md) from comparison.py's files.

    python experiments/comparison.py --methods lr_rules --out results_lr
    python experiments/lr_rule_report.py --results results_lr [--reference rloo,rloo+snr]

Per family and method (each at its tuned η, tuned.json): the grid's range and whether η is at its
edge; the area under the learning curve (mean exact ``J`` over the run, the tuning score) and the
final ``J`` over evaluation seeds; the paired difference of the area against the reference
methods on the same seeds (common random numbers), with its standard error and ``t``; collapsed
runs; the median step ``η_t`` and, for the local rule, the median curvature ``κ_t``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def load(results):
    rows = [json.loads(line) for line in open(os.path.join(results, "comparison.jsonl"))]
    tuned = json.load(open(os.path.join(results, "tuned.json")))
    keep = [r for r in rows if r["method"] in tuned.get(r["family"], {})
            and tuned[r["family"]][r["method"]]["eta"] == r["eta"]
            and tuned[r["family"]][r["method"]]["setting"] == r["setting"]]
    return keep, tuned


def _fmt(x, nd=3):
    return "—" if x is None or not np.isfinite(x) else f"{x:.{nd}g}" if abs(x) < 1e-2 else f"{x:.{nd}f}"


def table(rows, tuned, family, references) -> str:
    fam = [r for r in rows if r["family"] == family]
    by = {}
    for r in fam:
        by.setdefault(r["method"], {})[r["seed"]] = r
    out = ["| method | η (grid) | area: mean J (± se) | final J (± se) | "
           + " | ".join(f"Δarea vs {ref} (± se, t)" for ref in references)
           + " | collapsed runs | median η_t | median κ_t |", "|---" * (7 + len(references)) + "|"]
    for m, runs in by.items():
        t = tuned[family][m]
        seeds = sorted(runs)
        area = np.array([runs[s]["mean_objective"] for s in seeds])
        final = np.array([runs[s]["final_objective"] for s in seeds])
        se = lambda x: x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")  # noqa: E731
        diffs = []
        for reference in references:
            ref = by.get(reference, {})
            common = [s for s in seeds if s in ref]
            if m != reference and len(common) > 1:
                d = np.array([runs[s]["mean_objective"] - ref[s]["mean_objective"] for s in common])
                diffs.append(f"{d.mean():+.3f} ± {se(d):.3f} (t = {d.mean() / se(d):+.1f})" if se(d) > 0
                             else f"{d.mean():+.3f}")
            else:
                diffs.append("—")
        edge = " **edge**" if t["at_edge"] else ""
        kap = [runs[s].get("median_curvature") for s in seeds]
        kap = np.median([k for k in kap if k is not None]) if any(k is not None for k in kap) else None
        out.append(f"| {m} | {t['eta']:g}{edge} ({min(t['grid']):g}–{max(t['grid']):g}) | "
                   f"{area.mean():.3f} ± {se(area):.3f} | {final.mean():.3f} ± {se(final):.3f} | "
                   f"{' | '.join(diffs)} | "
                   f"{np.mean([runs[s]['collapsed'] for s in seeds]):.0%} | "
                   f"{_fmt(np.median([runs[s]['median_lr'] for s in seeds]))} | {_fmt(kap)} |")
    return "\n".join(out) + "\n"


def curvature_check(results, family, method, seeds=(0, 1, 2, 3)):
    """Rerun ``method`` (a ``"local"`` rule) at its tuned ``η_max`` on evaluation ``seeds`` and
    compare its online ``κ_t`` with the same EMA of *exact* secants ``−<∇J_t − ∇J_{t−1}, d>/η``
    (exact ``∇J`` from the enumeration) and of the *plain* noisy secant (``||ĝ_{t−1}||²`` in
    place of T7's ``||ĝ||² − V̂``). Also: the share of steps at the cap ``η_max``, at the floor
    ``η_min`` and in between."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import comparison
    from oblr_theory import dynamics, families, snr

    eta = json.load(open(os.path.join(results, "tuned.json")))[family][method]["eta"]
    cfg = comparison.config(method, eta, comparison.FULL["steps"])
    P = families.make(family)
    tr = dynamics.run(P, cfg, list(seeds), keep_theta=True)
    th, lr = tr.thetas, tr.lr  # (N, T+1, d), (N, T)
    d = (th[:, 1:] - th[:, :-1]) / lr[..., None]  # ĝ_t, (N, T, d)
    grads = np.array([[dynamics.exact_state(P.with_theta(th[i, t])).grad for t in range(th.shape[1])]
                      for i in range(len(seeds))])
    ex, pl = snr.EMACurvature(cfg.ema_beta), snr.EMACurvature(cfg.ema_beta)
    k_ex, k_pl = np.full(lr.shape, np.nan), np.full(lr.shape, np.nan)
    for t in range(1, lr.shape[1]):
        dp = d[:, t - 1]
        den = (dp * dp).sum(-1)
        k_ex[:, t] = ex.update(-((grads[:, t] - grads[:, t - 1]) * dp).sum(-1) / lr[:, t - 1], den)
        k_pl[:, t] = pl.update(*snr.secant_curvature(d[:, t], dp, lr[:, t - 1], den))
    sl = np.s_[:, 10:]  # after the EMA's start-up
    cap, floor = np.isclose(lr, eta), np.isclose(lr, cfg.eta_min)
    return dict(family=family, method=method, eta_max=eta, kappa_hat=np.nanmedian(tr.curvature[sl]),
                kappa_exact=np.nanmedian(k_ex[sl]), kappa_plain=np.nanmedian(k_pl[sl]),
                share_cap=cap.mean(), share_floor=floor.mean(), share_interior=1 - cap.mean() - floor.mean(),
                inv_eta_max=1 / eta)


def curvature_table(results, methods=("rloo+local", "rloo+local_exact", "oblr_po_local")) -> str:
    tuned = json.load(open(os.path.join(results, "tuned.json")))
    out = ["| family | method | η_max | 1/η_max | median κ̂_t (T7-corrected) | median κ_t exact secant "
           "| median κ_t plain secant | steps at cap / interior / floor |", "|---" * 8 + "|"]
    for family in tuned:
        for m in methods:
            if m not in tuned[family]:
                continue
            c = curvature_check(results, family, m)
            out.append(f"| {family} | {m} | {c['eta_max']:g} | {c['inv_eta_max']:.3g} | {c['kappa_hat']:.3g} | "
                       f"{c['kappa_exact']:.3g} | {c['kappa_plain']:.3g} | {c['share_cap']:.0%} / "
                       f"{c['share_interior']:.0%} / {c['share_floor']:.0%} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, help="comparison.py's --out folder")
    ap.add_argument("--reference", default="rloo,rloo+snr",
                    help="comma-separated methods of the paired differences (one column each)")
    ap.add_argument("--curvature", action="store_true",
                    help="also rerun the local rules on 4 evaluation seeds: κ̂ against exact and plain secants")
    args = ap.parse_args(argv)
    rows, tuned = load(args.results)
    for family in dict.fromkeys(r["family"] for r in rows):
        seeds = sorted({r["seed"] for r in rows if r["family"] == family})
        print(f"### {family} ({len(seeds)} evaluation seeds {seeds[0]}–{seeds[-1]}, "
              f"{rows[0]['steps']} steps)\n")
        print(table(rows, tuned, family, args.reference.split(",")))
    if args.curvature:
        print("### curvature along the steps (local rules, evaluation seeds 0–3)\n")
        print(curvature_table(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
