"""OBLR-PO against the baselines: exact J(θ_t) per family, mean and 10–90% band over the
evaluation seeds, each method at its tuned step size (reads comparison.jsonl)."""

from __future__ import annotations

import os

import numpy as np
import matplotlib.pyplot as plt

from _common import COLORS, load, nan, save


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
            ax.plot(t, y.mean(0), color=c, lw=lw, label=f"{method} (η={runs[0]['eta']:g}, n={len(runs)})")
            ax.fill_between(t, np.percentile(y, 10, 0), np.percentile(y, 90, 0), color=c, alpha=0.12)
        ax.axhline(0.9 * sub[0]["optimum"], color="k", ls=":", lw=0.8, label="90% of J*")
        ax.set(title=fam, xlabel="step", ylabel="J(θ_t) (exact)")
        ax.legend(fontsize=6.5, loc="lower right")
    fig.suptitle("Tuned on seeds 10000+, evaluated on seeds 0..n−1 (mean, 10–90% band)", fontsize=10)
    paths = save(fig, figures_dir, "learning_curves")
    table = os.path.join(figures_dir, "learning_curves.md")
    with open(table, "w") as fh:
        fh.write(summary_table(rows))
    return paths + [table]


def tuned_rows(results_dir):
    """comparison.jsonl rows at each method's tuned step size (tuned.json) only."""
    import json

    rows = load(results_dir, "comparison.jsonl")
    path = os.path.join(results_dir, "tuned.json")
    if not os.path.exists(path):
        return rows
    tuned = json.load(open(path))
    return [r for r in rows if tuned.get(r["family"], {}).get(r["method"], r["eta"]) == r["eta"]]


def summary_table(rows) -> str:
    """Markdown: per family and method, tuned η, final J (mean ± sd), runs reaching 90% of J*
    and their median steps, collapse fraction."""
    lines = ["| family | method | η | final J (mean ± sd) | reached 90% | median steps to 90% | collapsed |",
             "|---|---|---|---|---|---|---|"]
    for fam in dict.fromkeys(r["family"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["family"] == fam):
            runs = [r for r in rows if r["family"] == fam and r["method"] == method]
            final = np.array([r["final_objective"] for r in runs])
            hit = [r["steps_to_90"] for r in runs if r["steps_to_90"] is not None]
            med = f"{np.median(hit):.0f}" if hit else "—"
            coll = np.mean([r["collapsed"] for r in runs])
            lines.append(f"| {fam} | {method} | {runs[0]['eta']:g} | {final.mean():.3f} ± {final.std(ddof=1):.3f} | "
                         f"{len(hit)}/{len(runs)} | {med} | {coll:.0%} |")
    return "\n".join(lines) + "\n"
