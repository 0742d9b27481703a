"""T4: the exact expected one-step gain ``E J(θ+ηĝ) − J`` against the bound, over η, on random
bandit states (reads t4_gain.jsonl)."""

from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt

from _common import COLORS, load, nan, save


def main(results_dir: str, figures_dir: str) -> list[str]:
    rows = load(results_dir, "t4_gain.jsonl")
    states = sorted({r["seed"] for r in rows})[:3]
    fig, axes = plt.subplots(1, len(states), figsize=(4.6 * len(states), 4), squeeze=False)
    for ax, s in zip(axes[0], states):
        for r in (r for r in rows if r["seed"] == s):
            c = COLORS.get(r["estimator"])
            eta = nan(r["etas"]) * r["smoothness"]
            ax.plot(eta, nan(r["exact_gain"]), color=c, lw=1.8, label=f"{r['estimator']}: exact")
            ax.plot(eta, nan(r["bound_gain"]), color=c, lw=1.0, ls="--")
            ax.axvline(r["eta_star"] * r["smoothness"], color=c, lw=0.6, ls=":")
        ax.axhline(0, color="k", lw=0.5)
        ax.set(xlabel="η · L", ylabel="E J(θ+ηĝ) − J(θ)", title=f"bandit state {s}")
        top = max(np.nanmax(nan(r["exact_gain"])) for r in rows if r["seed"] == s)
        ax.set_ylim(-1.5 * top, 1.3 * top)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Exact E J(θ+ηĝ) − J (solid) vs the T4 bound with the global L (dashed); dotted: η*", fontsize=10)
    return save(fig, figures_dir, "t4_bound")
