"""SNR and learning-rate traces on hard_arm_bandit (3 prompts x 4 arms), one row per estimator,
one colour per learning-rate rule: constant ``η = 1/L``, the oracle ``η*_t`` of T5 (exact
moments), and the SNR rule ``η_t = η_max·SNR̂/(1+SNR̂)`` (T5/T7, ``η_max = 1/L``).

Left: the SNR of the batch gradient, the EMA estimate ``SNR̂`` (solid, T7) and the exact SNR
(dashed), log axis. Middle: the step size ``η_t``. Right: the exact objective ``J(θ_t)``.
Lines: median over seeds; bands: 10–90% of the seeds. Steps before the first estimate have no
value and are not drawn. Reads traces.jsonl.
"""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from _common import load, nan, seeds_text, write
from oblr_theory.plotstyle import DOUBLE, PAPER_DPI, RULE_STYLE, figure, integer_ticks, legend_below


def _band(ax, y, st, ls="-"):
    y = np.array(y, dtype=np.float64)
    t = np.flatnonzero(np.isfinite(y).any(axis=0))  # steps with a value
    y = y[:, t]
    ax.plot(t, np.nanmedian(y, 0), color=st.color, ls=ls, lw=1.1, marker=st.marker, ms=3,
            markevery=max(1, len(t) // 6))
    ax.fill_between(t, np.nanpercentile(y, 10, 0), np.nanpercentile(y, 90, 0), color=st.color, alpha=0.12, lw=0)


def build(results_dir: str):
    rows = load(results_dir, "traces.jsonl")
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    fig, axes = figure(DOUBLE, 2.1 * len(names) + 0.5, len(names), 3)
    for i, name in enumerate(names):
        for rule, st in RULE_STYLE.items():
            sub = [r for r in rows if r["estimator"] == name and r["lr_rule"] == rule]
            if not sub:
                continue
            _band(axes[i, 0], [nan(r["snr_hat"]) for r in sub], st)
            ex = [nan(r["exact_snr"]) for r in sub]
            if np.isfinite(np.array(ex)).any():
                _band(axes[i, 0], ex, st, ls="--")
            _band(axes[i, 1], [nan(r["lr"]) for r in sub], st)
            _band(axes[i, 2], [nan(r["objective"]) for r in sub], st)
        finite = np.concatenate([nan(r["exact_snr"]) for r in rows if r["estimator"] == name])
        finite = finite[np.isfinite(finite) & (finite > 0)]
        lo = 0.1 * finite.min() if finite.size else 1e-3
        axes[i, 0].set(yscale="log", ylabel="SNR", ylim=(lo, None), title=f"{name}: batch SNR")
        axes[i, 1].set(ylabel="step size η_t", title=f"{name}: step size")
        axes[i, 2].set(ylabel="J(θ_t) (exact)", title=f"{name}: objective")
        for ax in axes[i]:
            integer_ticks(ax, "x")
    for ax in axes[-1]:
        ax.set_xlabel("step t")
    handles = [Line2D([], [], **st.kw()) for st in RULE_STYLE.values()]
    labels = [f"η rule: {rule}" for rule in RULE_STYLE]
    handles += [Line2D([], [], color="k", lw=1.1), Line2D([], [], color="k", lw=1.1, ls="--")]
    labels += ["EMA estimate SNR̂ (T7)", "exact SNR"]
    legend_below(fig, handles, labels, ncol=5)
    r0 = rows[0]
    caption = (__doc__.strip() + f"\n\nG = {r0['group_size']}, B = {r0['batch_size']} groups per step, "
               f"{seeds_text(r['seed'] for r in rows)} per (estimator, rule), L = {r0['smoothness']:g}.")
    return fig, caption


def main(results_dir: str, figures_dir: str, dpi: int = PAPER_DPI, formats=("png", "pdf")) -> list[str]:
    return write(build, results_dir, figures_dir, "snr_traces", dpi, formats)
