"""The shrinkage family ``optimal_loo_shrink(λ)`` (baseline ``λ·b_optimal_loo + (1−λ)·b_rloo``).

Left: the exact variance-minimising ``λ*`` against G for each problem family (a quadratic in
λ, T3), with λ = 3/4 (dotted): where λ* < 3/4 the default λ = 1/2 beats optimal_loo (λ = 1).
Other panels, one per family: exact ``V / V_rloo`` for λ = 1/2 (optimal_loo_shrink), λ = 1
(optimal_loo), λ*, and the oracle baseline (oracle_optimal); 1 = rloo (λ = 0). All values are
exact (multiset enumeration at the family's initial θ): no seeds, no bands. Reads
estimator_map.jsonl.
"""

from __future__ import annotations

import numpy as np

from _common import load, write
from oblr_theory.exact_map import shrinkage_rows
from oblr_theory.plotstyle import DOUBLE, PAPER_DPI, figure, integer_ticks, legend_below, na_note, style

#: Line styles and markers of the problem families in the λ* panel (black: they are not estimators).
FAMILY_LS = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))
SERIES = (("v_half", "optimal_loo_shrink", "λ = 1/2 (optimal_loo_shrink)"), ("v_optimal_loo", "optimal_loo",
          "λ = 1 (optimal_loo)"), ("v_lam_star", "λ*", "λ = λ*"), ("v_oracle", "oracle_optimal", "oracle_optimal"))


def build(results_dir: str):
    rows = shrinkage_rows(load(results_dir, "estimator_map.jsonl"))
    fams = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = figure(DOUBLE, 2.5, 1, 1 + len(fams))
    ax0 = axes[0, 0]
    handles, labels, undefined = [], [], []
    for fam, (ls, mk) in zip(fams, FAMILY_LS):
        sub = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["group_size"])
        G = np.array([r["group_size"] for r in sub])
        lam = np.array([r["lam_star"] for r in sub], dtype=float)
        h = ax0.plot(G, lam, color="k", ls=ls, marker=mk, ms=3.5, mfc="white", lw=1)[0]
        handles.append(h)
        labels.append(f"λ*: {fam}")
        undefined += [(fam, int(g)) for g in G[~np.isfinite(lam)]]
    handles.append(ax0.axhline(0.75, color="#999999", lw=0.8, ls=":"))
    labels.append("λ* = 3/4 (λ*<3/4: 1/2 beats 1)")
    for g in sorted({g for _, g in undefined}):
        na_note(ax0, g, 0.45)
    ax0.set(xlabel="group size G", ylabel="λ* (exact)", title="best shrinkage λ*")
    allG = [r["group_size"] for r in rows]
    pad = 0.5 + 0.08 * (max(allG) - min(allG))  # room for the "n/a" at the smallest G
    ax0.set_xlim(min(allG) - pad, max(allG) + 0.5)
    integer_ticks(ax0, "x", [r["group_size"] for r in rows])
    for ax, fam in zip(axes[0, 1:], fams):
        sub = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["group_size"])
        G = np.array([r["group_size"] for r in sub])
        for key, name, label in SERIES:
            h = ax.plot(G, [r[key] / r["v_rloo"] for r in sub], **style(name).kw())[0]
            if fam == fams[0]:
                handles.append(h)
                labels.append(label)
        ax.axhline(1.0, color=style("rloo").color, lw=0.8)
        ax.set(xlabel="group size G", title=fam)
        integer_ticks(ax, "x", G)
    axes[0, 1].set_ylabel("V / V_rloo (exact)")
    handles.append(axes[0, 1].lines[-1])
    labels.append("λ = 0 (rloo)")
    legend_below(fig, handles, labels, ncol=4)
    caption = __doc__.strip()
    if undefined:
        where = ", ".join(f"{f} G={g}" for f, g in undefined)
        caption += (f"\n\nn/a: λ* is undefined at {where}: with G = 2 both baselines are the other reward, so "
                    "V(λ) does not depend on λ.")
    return fig, caption


def main(results_dir: str, figures_dir: str, dpi: int = PAPER_DPI, formats=("png", "pdf")) -> list[str]:
    return write(build, results_dir, figures_dir, "shrinkage", dpi, formats)
