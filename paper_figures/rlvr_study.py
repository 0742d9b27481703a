"""The RLVR study's figures, from its saved rows (``experiments/rlvr_study.py run``); never trains.

    python paper_figures/rlvr_study.py RESULTS_DIR FIGURES_DIR

- ``rlvr_curves``: held-out sampled accuracy (exact expected reward on the held-out problems)
  against RL steps, one panel per (variant, rule, optimizer), one line per estimator: the mean
  over the evaluation seeds with a band of ± 1.96 standard errors across seeds;
- ``rlvr_paired``: each estimator's paired difference in area under that curve against ``grpo``
  (same variant, rule, optimizer and seeds), with its 95% paired bootstrap interval.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from matplotlib.ticker import MaxNLocator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import seeds_text  # noqa: E402

from oblr_theory import plotstyle as ps  # noqa: E402
from oblr_theory import rlvr_report  # noqa: E402

ORDER = ("grpo", "dr_grpo", "rloo", "opo", "optimal_loo", "optimal_loo_logit", "optimal_loo_shrink")


def _groups(runs: dict) -> dict:
    """``{(variant, rule, optim): {estimator: [run, ...]}}``."""
    out: dict = {}
    for run in runs.values():
        out.setdefault((run["variant"], run["rule"], run["optim"]), {}).setdefault(run["estimator"], []).append(run)
    return dict(sorted(out.items()))


def _panels(n: int, sharey: bool):
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    return ps.figure(ps.DOUBLE, 2.0 * nrows + 0.5, nrows=nrows, ncols=ncols, sharey=sharey)


def build_curves(results_dir: str):
    runs = rlvr_report.runs_of(rlvr_report.load_rows(results_dir))
    if not runs:
        raise ValueError(f"{results_dir}: no finished evaluation runs")
    groups = _groups(runs)
    fig, axes = _panels(len(groups), sharey=True)
    handles = {}
    seeds = set()
    for ax, ((variant, rule, optim), by_est) in zip(axes.flat, groups.items()):
        for est in [e for e in ORDER if e in by_est]:
            rs_ = by_est[est]
            steps = rs_[0]["steps"]
            acc = np.array([r["acc_sampled"] for r in rs_ if r["steps"] == steps])
            seeds |= {r["seed"] for r in rs_}
            mean = acc.mean(0)
            half = 1.96 * acc.std(0, ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else np.zeros_like(mean)
            st = ps.style(est)
            (h,) = ax.plot(steps, mean, label=est, **st.kw())
            ax.fill_between(steps, mean - half, mean + half, color=st.color, alpha=0.15, lw=0)
            handles[est] = h
        ax.set_title(f"{variant}, {rule}, {optim}")
        ax.set_xlabel("RL step")
        ps.integer_ticks(ax)
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out sampled accuracy")
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    labels = [e for e in ORDER if e in handles]
    ps.legend_below(fig, [handles[e] for e in labels], labels, ncol=4)
    caption = ("Held-out sampled accuracy (exact probability of the answer under the policy, on held-out "
               "problems) against RL steps through OBLRPOTrainer; each estimator at its rate tuned on separate "
               f"tuning seeds; mean over {seeds_text(seeds)} with ± 1.96 standard-error bands across seeds. "
               "Rates at the edge of their grid are flagged in report.md.")
    return fig, caption


def build_paired(results_dir: str, n_boot: int = 10000, seed: int = 0):
    s = rlvr_report.summarize(rlvr_report.load_rows(results_dir), rlvr_report.load_tuning(results_dir),
                              n_boot=n_boot, seed=seed)
    pairs = [p for p in s["paired"] if p["kind"] == "vs_grpo" and p["auc"] is not None]
    if not pairs:
        raise ValueError(f"{results_dir}: no method shares two or more evaluation seeds with grpo")
    by_group: dict = {}
    for p in pairs:
        variant, est, rule, optim = p["method"].split("/")
        by_group.setdefault((variant, rule, optim), []).append((est, p["auc"]))
    fig, axes = _panels(len(by_group), sharey=False)
    for ax, ((variant, rule, optim), items) in zip(axes.flat, sorted(by_group.items())):
        items = sorted(items, key=lambda it: ORDER.index(it[0]))
        for y, (est, c) in enumerate(items):
            st = ps.style(est)
            m, lo, hi = 100 * c["mean"], 100 * c["low"], 100 * c["high"]  # accuracy points
            ax.errorbar([m], [y], xerr=[[m - lo], [hi - m]], color=st.color,
                        marker=st.marker, ms=4, capsize=2, lw=1)
        ax.axvline(0.0, color="#777777", lw=0.6, ls=":")
        ax.set_yticks(range(len(items)), [e for e, _ in items])
        ax.set_ylim(-0.7, len(items) - 0.3)
        ax.set_title(f"{variant}, {rule}, {optim}")
        ax.set_xlabel("Δ AUC vs grpo (accuracy points)")
        ax.xaxis.set_major_locator(MaxNLocator(4))
    for ax in list(axes.flat)[len(by_group):]:
        ax.set_visible(False)
    n = sorted({c["n"] for _, c in sum(by_group.values(), [])})
    caption = ("Paired difference (in accuracy points, ×100) in area under the held-out sampled-accuracy curve "
               "against grpo (same variant, "
               f"rule, optimizer and evaluation seeds; n = {', '.join(map(str, n))} pairs), mean and 95% percentile "
               f"paired bootstrap interval ({n_boot} resamples, seed {seed}). An interval that contains 0 is a tie; "
               f"fewer than {rlvr_report.MIN_PAIRS} pairs gives no verdict.")
    return fig, caption


def main(results_dir: str, figures_dir: str, dpi: int = ps.PAPER_DPI, formats=("png", "pdf")) -> list[str]:
    paths = []
    for stem, build in (("rlvr_curves", build_curves), ("rlvr_paired", build_paired)):
        fig, caption = build(results_dir)
        paths += ps.save(fig, figures_dir, stem, caption, dpi=dpi, formats=formats)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python paper_figures/rlvr_study.py RESULTS_DIR FIGURES_DIR")
    print("\n".join(main(sys.argv[1], sys.argv[2])))
