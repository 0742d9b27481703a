"""T3 on the length-correlated token MDP: the gradient-weighted ``b* = E[rS]/E[S]`` against the
mean reward ``μ`` at random θ, and the mean baseline's excess variance (reads baseline_shift.jsonl)."""

from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt

from _common import load, save


def main(results_dir: str, figures_dir: str) -> list[str]:
    rows = load(results_dir, "baseline_shift.jsonl")
    mu = np.concatenate([r["mu"] for r in rows])
    bs = np.concatenate([r["b_star"] for r in rows])
    ln = np.concatenate([r["mean_length"] for r in rows])
    exc = np.concatenate([r["excess_var_G8"] for r in rows])
    vb = np.concatenate([r["var_bstar_G8"] for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    sc = axes[0].scatter(mu, bs, c=ln, s=12, cmap="viridis")
    lim = [0, max(mu.max(), bs.max()) * 1.05]
    axes[0].plot(lim, lim, "k--", lw=0.8, label="b* = μ")
    axes[0].set(xlabel="mean reward μ", ylabel="b* = E[rS]/E[S]", title="length-correlated MDP (short answers win)")
    fig.colorbar(sc, ax=axes[0], label="E[length]")
    axes[0].legend()
    ok = vb > 0
    axes[1].scatter(mu[ok], exc[ok] / vb[ok], s=12)
    axes[1].set(xlabel="mean reward μ", ylabel="(V(μ) − V(b*)) / V(b*),  G = 8",
                title="variance the mean baseline leaves on the table (T3)")
    return save(fig, figures_dir, "baseline_shift")
