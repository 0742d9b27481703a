"""OBLR-PO against the baselines: exact J(θ_t) per family, mean and 10–90% band over the
evaluation seeds, each method at its tuned step size (reads comparison.jsonl and tuned.json);
also writes the summary table learning_curves.md (steps to 90% of J*, final J, spread, collapse)."""

from __future__ import annotations

import os

import numpy as np
import matplotlib.pyplot as plt

from _common import COLORS, load, nan, save

#: Ablations of OBLR-PO (the SNR rule alone; the baseline alone), drawn dashed.
ABLATIONS = ("rloo+snr", "optimal_loo", "optimal_loo_shrink")


def main(results_dir: str, figures_dir: str) -> list[str]:
    rows = tuned_rows(results_dir)
    fams = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(1, len(fams), figsize=(5.2 * len(fams), 4.2), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        sub = [r for r in rows if r["family"] == fam]
        for method in dict.fromkeys(r["method"] for r in sub):
            runs = [r for r in sub if r["method"] == method]
            t = np.array(runs[0]["curve_steps"])
            y = np.array([nan(r["curve"]) for r in runs])
            c = COLORS.get(method)
            lw = 2.4 if method.startswith("oblr") else 1.2
            ls = "--" if method in ABLATIONS else "-"
            ax.plot(t, y.mean(0), color=c, lw=lw, ls=ls, label=f"{method} (η={runs[0]['eta']:g}, n={len(runs)})")
            ax.fill_between(t, np.percentile(y, 10, 0), np.percentile(y, 90, 0), color=c, alpha=0.12)
        ax.axhline(0.9 * sub[0]["optimum"], color="k", ls=":", lw=0.8, label="90% of J*")
        ax.set(title=fam, xlabel="step (symlog)", ylabel="J(θ_t) (exact)")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.legend(fontsize=6.5, loc="lower right")
    fig.suptitle("Tuned on seeds 10000+, evaluated on seeds 0..n−1 (mean, 10–90% band)", fontsize=10)
    paths = save(fig, figures_dir, "learning_curves")
    table = os.path.join(figures_dir, "learning_curves.md")
    with open(table, "w") as fh:
        fh.write(summary_table(rows))
    return paths + [table]


def _tuned(results_dir):
    """tuned.json as ``{family: {method: dict(eta, setting?, at_edge?)}}`` (older files held bare η)."""
    import json

    path = os.path.join(results_dir, "tuned.json")
    if not os.path.exists(path):
        return None
    tuned = json.load(open(path))
    return {f: {m: (v if isinstance(v, dict) else dict(eta=v)) for m, v in ms.items()} for f, ms in tuned.items()}


def tuned_rows(results_dir):
    """comparison.jsonl rows of each method's tuned setting (tuned.json: step size and, when
    recorded, the setting id, so rows of an older family design or config are left out)."""
    rows = load(results_dir, "comparison.jsonl")
    tuned = _tuned(results_dir)
    if tuned is None:
        return rows
    keep = []
    for r in rows:
        t = tuned.get(r["family"], {}).get(r["method"])
        if t is None or t["eta"] != r["eta"]:
            continue
        if "setting" in t and r.get("setting") != t["setting"]:
            continue
        keep.append(r)
    return keep


def summary_table(rows) -> str:
    """Markdown: per family and method, the tuned η (``edge`` when it is the grid's first or last
    point), final J (mean ± sd over evaluation seeds, and the 10–90% range), runs reaching 90% of
    J* and their median steps, the fraction of runs with a collapsed prompt (and of prompts)."""
    lines = ["| family | method | η | final J (mean ± sd) | final J 10–90% | reached 90% | median steps to 90% "
             "| collapsed runs (prompts) |",
             "|---|---|---|---|---|---|---|---|"]
    for fam in dict.fromkeys(r["family"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["family"] == fam):
            runs = [r for r in rows if r["family"] == fam and r["method"] == method]
            final = np.array([r["final_objective"] for r in runs])
            hit = [r["steps_to_90"] for r in runs if r["steps_to_90"] is not None]
            med = f"{np.median(hit):.0f}" if hit else "—"
            coll = np.mean([r["collapsed"] for r in runs])
            cp = np.mean([r.get("collapsed_prompts", np.nan) for r in runs])
            edge = " (edge)" if runs[0].get("eta_at_edge") else ""
            sd = final.std(ddof=1) if len(final) > 1 else float("nan")
            lo, hi = np.percentile(final, [10, 90])
            lines.append(f"| {fam} | {method} | {runs[0]['eta']:g}{edge} | {final.mean():.3f} ± {sd:.3f} | "
                         f"{lo:.3f}–{hi:.3f} | {len(hit)}/{len(runs)} | {med} | {coll:.0%} ({cp:.0%}) |")
    return "\n".join(lines) + "\n"
