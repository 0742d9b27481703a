"""Variance against G for every estimator (exact curves, Monte Carlo dots) and T5's gain at the
optimal step relative to ``oracle_optimal`` (reads estimator_map*.jsonl)."""

from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt

from _common import COLORS, load, save


def main(results_dir: str, figures_dir: str) -> list[str]:
    rows, mc = load(results_dir, "estimator_map.jsonl"), load(results_dir, "estimator_map_mc.jsonl")
    fams = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(2, len(fams), figsize=(4.6 * len(fams), 7.5), squeeze=False)
    for j, fam in enumerate(fams):
        sub = [r for r in rows if r["family"] == fam]
        names = list(dict.fromkeys(r["estimator"] for r in sub))
        oracle = {r["group_size"]: r["gain"] for r in sub if r["estimator"] == "oracle_optimal"}
        for name in names:
            pts = sorted((r["group_size"], r["trace_var"], r["gain"]) for r in sub if r["estimator"] == name)
            G, V, gain = (np.array(v, dtype=float) for v in zip(*pts))
            style = dict(color=COLORS.get(name), lw=2.2 if name in ("optimal_loo_shrink", "oracle_optimal") else 1.3,
                         ls="--" if name in ("constant", "opo_loo", "optimal") else "-")
            axes[0, j].plot(G, V, label=name, **style)
            axes[1, j].plot(G, gain / np.array([oracle[g] for g in G]), **style)
            dots = sorted((r["group_size"], r["trace_var_mc"], r["std_error"]) for r in mc
                          if r["family"] == fam and r["estimator"] == name)
            if dots:
                g, v, se = (np.array(x, dtype=float) for x in zip(*dots))
                axes[0, j].errorbar(g, v, yerr=2 * se, fmt="o", ms=3.5, color=COLORS.get(name), capsize=2)
        axes[0, j].set(title=fam, xlabel="group size G", ylabel="V = tr Var ĝ (one group)", yscale="log")
        axes[1, j].set(xlabel="group size G", ylabel="T5 gain at η* / oracle_optimal's")
        axes[1, j].axhline(1.0, color="k", lw=0.6)
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("Exact variance (lines) with Monte Carlo estimates ±2 s.e. (dots); T5 guaranteed gain", fontsize=11)
    return save(fig, figures_dir, "variance_vs_group_size")
