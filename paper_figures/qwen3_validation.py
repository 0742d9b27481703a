"""Figures of the Qwen3 theory-vs-practice validation, from its saved ``report.json`` only.

    python paper_figures/qwen3_validation.py RESULTS_DIR [--figures DIR]

``RESULTS_DIR`` is the ``--out`` folder of ``experiments/qwen3_validation.py``. Writes
``qwen3_validation.png`` / ``.pdf`` (four panels: T2 variance measured vs predicted vs exact;
T1 scale of ``E ĝ`` along ``∇J``; T3 variance removed by ``optimal_loo``; T7/T5 SNR and step).
Never samples or runs a model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import COLORS, plt, save  # noqa: E402

LABELS = ("reinforce", "rloo", "dr_grpo", "grpo", "opo", "opo_loo", "optimal", "optimal_loo", "logit_loo")


def _get(d: dict, k: str) -> float:
    v = d.get(k)
    return np.nan if v is None else float(v)


def load_report(results_dir: str) -> dict:
    path = os.path.join(results_dir, "report.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run experiments/qwen3_validation.py --out {results_dir}")
    with open(path) as fh:
        return json.load(fh)


def figure(report: dict):
    st, se, ex = report["statistics"], report["standard_errors"], report.get("exact_reference") or {}
    G = report["config"]["group_size"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    color = lambda lab: COLORS.get(lab, COLORS["optimal_loo"] if lab == "logit_loo" else "#444444")  # noqa: E731

    ax = axes[0, 0]  # T2: measured vs predicted (and exact) one-group variance
    x = np.arange(len(LABELS))
    meas = [_get(st, f"V_measured/{k}") for k in LABELS]
    err = [_get(se, f"V_measured/{k}") for k in LABELS]
    ax.bar(x, meas, yerr=err, color=[color(k) for k in LABELS], alpha=0.8, label="measured across groups (T7)")
    pred = [_get(st, f"V_predicted/{k}") for k in LABELS]
    ax.scatter(x, pred, marker="_", s=400, color="k", label="T2 from measured moments", zorder=3)
    exv = [_get(ex, f"V_exact/{k}" if f"V_exact/{k}" in ex else f"V_multiset/{k}") for k in LABELS]
    ax.scatter(x, exv, marker="x", s=60, color="tab:red", label="exact (enumeration)", zorder=4)
    ax.axhline(_get(st, "V_predicted/fixed_b_star"), ls=":", color="k", label="T3: V(b*) (fixed, optimal)")
    ax.set_xticks(x, LABELS, rotation=45, ha="right")
    ax.set_ylabel(f"V_x (one group, G={G}), mean over prompts")
    ax.set_title("T2/T3: variance at fixed θ")
    ax.legend(fontsize=7)

    ax = axes[0, 1]  # T1: scale c
    c = [_get(st, f"scale/{k}") for k in LABELS]
    ce = [_get(se, f"scale/{k}") for k in LABELS]
    ax.errorbar(x, c, yerr=ce, fmt="o", color="k")
    ax.axhline(1.0, color="tab:green", ls="--", label="unbiased: c = 1")
    ax.axhline((G - 1) / G, color=COLORS["dr_grpo"], ls=":", label=f"dr_grpo: (G-1)/G = {(G - 1) / G:.3f}")
    ax.set_xticks(x, LABELS, rotation=45, ha="right")
    ax.set_ylabel("c = <E ĝ, ∇J> / ||∇J||²")
    ax.set_title("T1: bias along the gradient (± jackknife SE)")
    ax.legend(fontsize=7)

    ax = axes[1, 0]  # T3: variance removed
    bases = ("reinforce", "rloo", "dr_grpo", "opo_loo", "logit_loo")
    f = [_get(st, f"removed/optimal_loo_vs_{b}") for b in bases]
    fe = [_get(se, f"removed/optimal_loo_vs_{b}") for b in bases]
    xb = np.arange(len(bases))
    ax.bar(xb, f, yerr=fe, color=[color(b) for b in bases], alpha=0.8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(xb, ["b=0" if b == "reinforce" else b for b in bases], rotation=30, ha="right")
    ax.set_ylabel("(V_base − V_optimal_loo) / V_base")
    cl, cs = _get(st, "corr/S_length"), _get(st, "corr/S_logit")
    ax.set_title(f"T3: variance removed by optimal_loo\n(T8: corr(S, ℓ) = {cl:.2f}, corr(S, logit proxy) = {cs:.2f})")

    ax = axes[1, 1]  # T7/T5: SNR and the step it picks
    snr = [_get(st, f"snr/{k}/pooled") for k in LABELS]
    snre = [_get(se, f"snr/{k}/pooled") for k in LABELS]
    frac = [_get(st, f"lr/{k}/T5_fraction") for k in LABELS]
    ax.bar(x - 0.2, snr, 0.4, yerr=snre, color=[color(k) for k in LABELS], alpha=0.8, label="SNR (T7, pooled)")
    ax.bar(x + 0.2, frac, 0.4, color="none", edgecolor="k", label="η/η_max = SNR/(1+SNR) (T5)")
    ax.set_xticks(x, LABELS, rotation=45, ha="right")
    B = int(_get(st, "snr/batch_size")) if np.isfinite(_get(st, "snr/batch_size")) else 0
    ax.set_title(f"T7/T5: batch SNR (B = {B} prompts) and step")
    ax.legend(fontsize=7)
    model = report["config"].get("model") or "tiny Qwen3 (built-in task)"
    fig.suptitle(f"Theory vs practice at fixed θ: {model}; P={report['config']['prompts']}, "
                 f"M={report['config']['groups']}, G={G}; rev {report['git_revision'][:8]}")
    fig.tight_layout()
    return fig


def main(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir")
    ap.add_argument("--figures", default=None, help="output folder (default: RESULTS_DIR/figures)")
    ns = ap.parse_args(argv)
    paths = save(figure(load_report(ns.results_dir)), ns.figures or os.path.join(ns.results_dir, "figures"),
                 "qwen3_validation")
    print("\n".join(paths))
    return paths


if __name__ == "__main__":
    main()
