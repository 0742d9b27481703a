"""SNR and learning-rate traces on the hard-arm bandit: exact SNR against the EMA estimate, the
step size of each rule and J (median and 10–90% band over seeds; reads traces.jsonl)."""

from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt

from _common import load, nan, save

RULE_COLORS = {"constant": "#1f77b4", "oracle": "#000000", "snr": "#2ca02c"}


def _band(ax, y, color, label, ls="-"):
    y = np.array(y, dtype=np.float64)
    t = np.flatnonzero(np.isfinite(y).any(axis=0))  # steps with a value (no estimate before the first batch)
    y = y[:, t]
    ax.plot(t, np.nanmedian(y, 0), color=color, label=label, ls=ls)
    ax.fill_between(t, np.nanpercentile(y, 10, 0), np.nanpercentile(y, 90, 0), color=color, alpha=0.15)


def main(results_dir: str, figures_dir: str) -> list[str]:
    rows = load(results_dir, "traces.jsonl")
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    fig, axes = plt.subplots(len(names), 3, figsize=(14, 3.6 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for rule, c in RULE_COLORS.items():
            sub = [r for r in rows if r["estimator"] == name and r["lr_rule"] == rule]
            if not sub:
                continue
            _band(axes[i, 0], [nan(r["snr_hat"]) for r in sub], c, f"{rule}: EMA SNR̂")
            ex = [nan(r["exact_snr"]) for r in sub]
            if np.isfinite(np.array(ex)).any():
                _band(axes[i, 0], ex, c, f"{rule}: exact SNR", ls="--")
            _band(axes[i, 1], [nan(r["lr"]) for r in sub], c, rule)
            _band(axes[i, 2], [nan(r["objective"]) for r in sub], c, rule)
        finite = np.concatenate([nan(r["exact_snr"]) for r in rows if r["estimator"] == name])
        finite = finite[np.isfinite(finite) & (finite > 0)]
        lo = 0.1 * finite.min() if finite.size else 1e-3
        axes[i, 0].set(yscale="log", xlabel="step", ylabel="SNR", title=f"{name}: SNR (B = 4 groups)", ylim=(lo, None))
        axes[i, 1].set(xlabel="step", ylabel="learning rate η_t", title="η_t: constant 1/L | oracle η*_t | SNR rule, η_max = 1/L")
        axes[i, 2].set(xlabel="step", ylabel="J(θ_t) (exact)", title="objective")
        for ax in axes[i]:
            ax.legend(fontsize=7)
    return save(fig, figures_dir, "snr_traces")
