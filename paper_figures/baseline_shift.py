"""T3 on the length-correlated token MDP (length_mdp): the gradient-weighted optimal baseline
``b* = E[rS]/E[S]`` against the mean reward ``μ``, one dot per prompt at random θ.

Left: ``b*`` against ``μ`` (colour: the prompt's expected response length; dashed: ``b* = μ``).
Right: the relative excess variance ``(V(μ) − V(b*)) / V(b*)`` of one group of G = 8 that the
mean baseline leaves; 0 = none. Exact values (enumeration), no bands. Reads baseline_shift.jsonl.
"""

from __future__ import annotations

import numpy as np

from _common import load, seeds_text, write
from oblr_theory.plotstyle import DOUBLE, PAPER_DPI, figure


def build(results_dir: str):
    rows = load(results_dir, "baseline_shift.jsonl")
    mu = np.concatenate([r["mu"] for r in rows])
    bs = np.concatenate([r["b_star"] for r in rows])
    ln = np.concatenate([r["mean_length"] for r in rows])
    exc = np.concatenate([r["excess_var_G8"] for r in rows])
    vb = np.concatenate([r["var_bstar_G8"] for r in rows])
    fig, axes = figure(DOUBLE, 2.6, 1, 2)
    ax = axes[0, 0]
    sc = ax.scatter(mu, bs, c=ln, s=8, cmap="viridis", marker="o")
    lim = [0, max(mu.max(), bs.max()) * 1.05]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set(xlabel="mean reward μ", ylabel="b* = E[rS]/E[S]", title="b* against μ (dashed: b* = μ)")
    fig.colorbar(sc, ax=ax, label="E[response length]", pad=0.02)
    ok = vb > 0
    axes[0, 1].scatter(mu[ok], exc[ok] / vb[ok], s=8, color="#332288", marker="o")
    axes[0, 1].axhline(0, color="k", lw=0.5)
    axes[0, 1].set_yscale("symlog", linthresh=0.1)  # the excess spans 0 to many times V(b*)
    axes[0, 1].set_ylim(-0.02, 2 * max(1.0, float(np.max(exc[ok] / vb[ok]))) if ok.any() else 1.0)
    fig.get_layout_engine().set(w_pad=0.12)
    axes[0, 1].set(xlabel="mean reward μ", ylabel="(V(μ) − V(b*)) / V(b*)",
                   title="variance the mean baseline leaves (G = 8)")
    caption = (__doc__.strip() + f"\n\n{len(mu)} prompts over {len(rows)} random θ, "
               f"{seeds_text(r['seed'] for r in rows)}" + (f"; {int((~ok).sum())} prompts with V(b*) = 0 "
                                                          "(ratio undefined) left out of the right panel"
                                                          if (~ok).any() else "") + ".")
    return fig, caption


def main(results_dir: str, figures_dir: str, dpi: int = PAPER_DPI, formats=("png", "pdf")) -> list[str]:
    return write(build, results_dir, figures_dir, "baseline_shift", dpi, formats)
