"""The probes of theory along training (``experiments/rlvr_probe.py``), from their saved report;
never trains or samples.

    python paper_figures/rlvr_probe.py PROBE_DIR FIGURES_DIR

``rlvr_probe`` (the report's first trajectory, its probes with the most batches) has three panels,
against the RL step of the probed run:

- T2 given the drawn prompts: the measured ``E||ĝ − m_k||²`` (mean and ± 1.96 standard errors over
  the probe's batches) against T2's closed form, for reinforce, rloo and dr_grpo;
- every estimator's T5 figure of merit ``(∇J·m)² / (||m||² + V)`` (its optimal one-step gain times
  ``2L``; scale-free) relative to grpo's, on the same batches;
- the realised one-step gain in exact ``J`` minus grpo's, each estimator taking the run's step.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from oblr_theory import plotstyle as ps  # noqa: E402

ORDER = ("reinforce", "grpo", "dr_grpo", "rloo", "opo", "optimal_loo", "optimal_loo_logit", "optimal_loo_shrink")
CLOSED = ("reinforce", "rloo", "dr_grpo")


def load(probe_dir: str) -> list[dict]:
    """The probes of the report's first trajectory with the most batches per probe (the largest K)."""
    path = os.path.join(probe_dir, "report.json")
    if not os.path.exists(path):
        raise ValueError(f"{path} not found: run `python experiments/rlvr_probe.py report --out {probe_dir}`")
    with open(path) as fh:
        entries = json.load(fh)
    if not entries:
        raise ValueError(f"{path}: no probes")
    traj = sorted({e["trajectory"] for e in entries})[0]
    K = max(e["batches"] for e in entries if e["trajectory"] == traj)
    return sorted((e for e in entries if e["trajectory"] == traj and e["batches"] == K), key=lambda e: e["step"])


def _series(entries, key, scale=1.0):
    m = np.array([e["statistics"].get(key, np.nan) for e in entries]) * scale
    h = 1.96 * np.array([e["se"].get(key, np.nan) for e in entries]) * scale
    return m, h


def build(probe_dir: str):
    entries = load(probe_dir)
    steps = np.array([e["step"] for e in entries], float)
    fig, axes = ps.figure(ps.DOUBLE, 2.6, nrows=1, ncols=3)
    ax = axes.flat[0]
    for e in CLOSED:
        st = ps.style(e)
        m, h = _series(entries, f"cond/sq/{e}")
        pred, _ = _series(entries, f"cond/pred/{e}")
        ax.errorbar(steps, m, yerr=h, color=st.color, marker=st.marker, ms=4, lw=0, elinewidth=1, capsize=2,
                    label=f"{e} measured")
        ax.plot(steps, pred, color=st.color, lw=1, ls="--", label=f"{e} T2")
    ax.set_title("T2 given the prompts")
    ax.set_ylabel(r"$E\|\hat g - m_k\|^2$")
    ax.legend(fontsize=5.5, frameon=False, ncol=2, loc="upper center", bbox_to_anchor=(0.5, 1.0))
    ax.set_ylim(0, ax.get_ylim()[1] * 1.35)
    for ax, key, title, ylabel, scale in (
            (axes.flat[1], "merit_ratio", "T5 figure of merit", "merit / merit[grpo]", 1.0),
            (axes.flat[2], "realised_minus_ref", "one-step gain in exact J", "ΔJ − ΔJ[grpo] (×1e-4)", 1e4)):
        for i, e in enumerate(x for x in ORDER if x != "grpo"):
            if f"{key}/{e}" not in entries[0]["statistics"]:
                continue
            st = ps.style(e)
            m, h = _series(entries, f"{key}/{e}", scale)
            ax.errorbar(steps + (i - 3) * 0.6, m, yerr=h, color=st.color, marker=st.marker, ms=3, lw=0.8,
                        elinewidth=0.8, capsize=1.5, label=e)
        ax.axhline(1.0 if key == "merit_ratio" else 0.0, color="#777777", lw=0.6, ls=":")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    for ax in axes.flat:
        ax.set_xlabel("RL step of the probed run")
        ps.integer_ticks(ax, values=[int(s) for s in steps])
    handles, labels = axes.flat[1].get_legend_handles_labels()
    ps.legend_below(fig, handles, labels, ncol=4)
    e0 = entries[0]
    caption = (f"Probes of {e0['trajectory']} at steps {', '.join(str(int(s)) for s in steps)} "
               f"(K = {e0['batches']} batches each, shared by all estimators). Left: the measured squared deviation "
               "of the batch gradient from its exact conditional mean given the drawn prompts, against T2's closed "
               "form on the exact per-prompt moments. Middle: each estimator's T5 figure of merit (∇J·m)²/(||m||²+V) "
               "over grpo's. Right: the "
               "realised change in exact J of one step of the run's rule, minus grpo's. Bars: ± 1.96 standard "
               "errors (t-test means; jackknife over batches for ratios).")
    return fig, caption


def main(probe_dir: str, figures_dir: str, dpi: int = ps.PAPER_DPI, formats=("png", "pdf")) -> list[str]:
    fig, caption = build(probe_dir)
    return ps.save(fig, figures_dir, "rlvr_probe", caption, dpi=dpi, formats=formats)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python paper_figures/rlvr_probe.py PROBE_DIR FIGURES_DIR")
    print("\n".join(main(sys.argv[1], sys.argv[2])))
