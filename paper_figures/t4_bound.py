"""T4 on random softmax-bandit states: the exact expected one-step gain ``E J(θ+ηĝ) − J(θ)``
(solid) against T4's lower bound with the global smoothness constant L (dashed), over the step
size η (in units of 1/L), for a batch of B groups of G. Open markers: each estimator's
bound-optimal step ``η*`` (T5) at the top of its bound. Solid curves that lie on top of each
other are estimators with the same expected gain at these states. Each panel is one
random state (2 prompts x 3 arms; logits ~ 1.5·N(0, 1), rewards ~ U(0, 1), drawn from the
panel's seed). Exact values (enumeration of the batch law), no bands. Reads t4_gain.jsonl.
"""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from _common import load, nan, write
from oblr_theory.plotstyle import DOUBLE, PAPER_DPI, figure, legend_below, style


def build(results_dir: str):
    rows = load(results_dir, "t4_gain.jsonl")
    states = sorted({r["seed"] for r in rows})[:3]
    fig, axes = figure(DOUBLE, 2.5, 1, len(states))
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    for ax, s in zip(axes[0], states):
        top = 0.0
        for r in (r for r in rows if r["seed"] == s):
            st = style(r["estimator"])
            eta = nan(r["etas"]) * r["smoothness"]
            gain = nan(r["exact_gain"])
            ax.plot(eta, gain, color=st.color, lw=1.4, marker=st.marker, markevery=8, ms=3.5)
            ax.plot(eta, nan(r["bound_gain"]), color=st.color, lw=0.9, ls="--")
            x = r["eta_star"] * r["smoothness"]
            ax.plot([x], [np.interp(x, eta, nan(r["bound_gain"]))], marker=st.marker, color=st.color, ms=6,
                    mfc="white", mew=1.2, ls="none", zorder=4)
            top = max(top, np.nanmax(gain))
        ax.axhline(0, color="k", lw=0.5)
        ax.set(xlabel="step size η·L", title=f"random bandit state, seed {s}", ylim=(-1.5 * top, 1.3 * top))
    axes[0, 0].set_ylabel("E J(θ+ηĝ) − J(θ)")
    handles = [Line2D([], [], **style(n).kw()) for n in names]
    labels = list(names)
    handles += [Line2D([], [], color="k", lw=1.4), Line2D([], [], color="k", lw=0.9, ls="--"),
                Line2D([], [], color="k", marker="o", mfc="white", ls="none")]
    labels += ["exact gain", "T4 bound (global L)", "η* on the bound (T5)"]
    legend_below(fig, handles, labels, ncol=4)
    r0 = rows[0]
    caption = __doc__.strip() + f"\n\nG = {r0['group_size']}, B = {r0['batch_size']}; states: seeds {states}."
    return fig, caption


def main(results_dir: str, figures_dir: str, dpi: int = PAPER_DPI, formats=("png", "pdf")) -> list[str]:
    return write(build, results_dir, figures_dir, "t4_bound", dpi, formats)
