"""The shrinkage family ``optimal_loo_shrink(λ)``: exact ``λ*`` against G and ``V(λ)/V_rloo`` for
rloo (λ=0), λ=1/2, optimal_loo (λ=1), λ* and oracle_optimal (reads estimator_map.jsonl)."""

from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt

from _common import COLORS, load, save
from oblr_theory.exact_map import shrinkage_rows


def main(results_dir: str, figures_dir: str) -> list[str]:
    rows = shrinkage_rows(load(results_dir, "estimator_map.jsonl"))
    fams = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for fam, mk in zip(fams, "osd^v"):
        sub = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["group_size"])
        G = np.array([r["group_size"] for r in sub])
        axes[0].plot(G, [r["lam_star"] for r in sub], marker=mk, label=fam)
        for key, name in (("v_half", "optimal_loo_shrink"), ("v_optimal_loo", "optimal_loo"),
                          ("v_lam_star", "λ*"), ("v_oracle", "oracle_optimal")):
            axes[1].plot(G, [r[key] / r["v_rloo"] for r in sub], marker=mk, color=COLORS.get(name, "#9467bd"),
                         label=f"{name}" if fam == fams[0] else None, lw=1.2)
    axes[0].axhline(0.5, color="#17becf", ls="--", lw=1, label="default λ = 1/2")
    axes[0].axhline(0.75, color="gray", ls=":", lw=1, label="λ* < 3/4: λ=1/2 beats optimal_loo")
    axes[0].set(xlabel="group size G", ylabel="λ* (exact)", title="best shrinkage of optimal_loo towards rloo")
    axes[1].axhline(1.0, color=COLORS["rloo"], lw=1, label="rloo")
    axes[1].set(xlabel="group size G", ylabel="V / V_rloo", title="markers: family (legend left)")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    return save(fig, figures_dir, "shrinkage")
