"""Theory against practice on a Qwen3 causal LM at a fixed θ, from the saved ``report.json`` of
``experiments/qwen3_validation.py`` (never samples or runs a model).

    python paper_figures/qwen3_validation.py RESULTS_DIR [--figures DIR]

Four panels, one colour and marker per estimator. (a) T2/T3: the one-group variance ``V_x``
measured across the M groups of each prompt (bars), T2's prediction from the measured moments
(black bars-ends) and the exact value by enumeration (crosses, where completions were enumerated),
with T3's ``V(b*)`` (dotted). (b) T1: the scale ``c = <E ĝ, ∇J>/‖∇J‖²`` (1 = unbiased along
``∇J``; dotted: dr_grpo's ``(G−1)/G``). (c) T3: the fraction of variance ``optimal_loo`` removes
against each other baseline. (d) T7/T5: the pooled batch SNR and the step fraction
``η/η_max = SNR/(1+SNR)``; "n/a" where the SNR is undefined. Every error bar is ± 1 delete-one-batch
jackknife standard error over the M batches, read from the report.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from _common import write  # noqa: E402
from oblr_theory.plotstyle import DOUBLE, PAPER_DPI, figure, legend_below, na_note, style  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

LABELS = ("reinforce", "rloo", "dr_grpo", "grpo", "opo", "opo_loo", "optimal", "optimal_loo", "logit_loo")
#: Saved GPU runs committed with the repository (drawn when RESULTS_DIR holds no report).
SAVED = os.path.join(os.path.dirname(HERE), "docs", "gpu_runs", "*", "*", "qwen3_validation", "report.json")


def _get(d: dict, k: str) -> float:
    v = d.get(k)
    return np.nan if v is None else float(v)


def find_report(results_dir: str) -> str:
    """``RESULTS_DIR/report.json`` or ``RESULTS_DIR/qwen3_validation/report.json``; else the newest
    saved GPU run under docs/gpu_runs (said on stderr and in the caption); else an error."""
    for p in (os.path.join(results_dir, "report.json"), os.path.join(results_dir, "qwen3_validation", "report.json")):
        if os.path.exists(p):
            return p
    saved = sorted(glob.glob(SAVED))
    if saved:
        print(f"qwen3_validation: no report.json under {results_dir}; drawing the saved run {saved[-1]}",
              file=sys.stderr)
        return saved[-1]
    raise FileNotFoundError(f"{results_dir}/qwen3_validation/report.json is missing: run "
                            f"experiments/qwen3_validation.py --out {results_dir}/qwen3_validation")


def snr_undefined(st: dict, name: str) -> str | None:
    """Why the pooled SNR of ``name`` is undefined, or ``None``: T7's unbiased ``‖∇J‖²`` estimate
    is negative (noise exceeds signal), so ``SNR̂`` is clipped to 0 and the step to 0."""
    g = _get(st, f"snr/{name}/grad_sq_norm_hat")
    if not np.isfinite(_get(st, f"snr/{name}/pooled")):
        return "no estimate"
    if np.isfinite(g) and g <= 0:
        return f"‖∇J‖² estimate {g:.3g} < 0"
    return None


def figure_from_report(report: dict, source: str = ""):
    st, se, ex = report["statistics"], report["standard_errors"], report.get("exact_reference") or {}
    cfg = report["config"]
    G = cfg["group_size"]
    fig, axes = figure(DOUBLE, 5.0, 2, 2)
    x = np.arange(len(LABELS))
    colors = [style(k).color for k in LABELS]

    ax = axes[0, 0]  # T2: measured vs predicted (and exact) one-group variance
    meas = [_get(st, f"V_measured/{k}") for k in LABELS]
    ax.bar(x, meas, yerr=[_get(se, f"V_measured/{k}") for k in LABELS], color=colors, alpha=0.85,
           error_kw=dict(lw=0.8, capsize=2))
    ax.errorbar(x, [_get(st, f"V_predicted/{k}") for k in LABELS], yerr=[_get(se, f"V_predicted/{k}") for k in LABELS],
                fmt="_", ms=12, color="k", lw=0.8, capsize=2, zorder=3)
    exv = [_get(ex, f"V_exact/{k}") for k in LABELS]
    ax.plot(x, exv, "x", color="#CC3311", ms=5, mew=1.2, zorder=4)
    ax.axhline(_get(st, "V_predicted/fixed_b_star"), ls=":", color="k", lw=0.8)
    ax.set_xticks(x, LABELS, rotation=90)
    ax.set(ylabel=f"V_x (one group, G = {G})", title="(a) T2/T3: variance at fixed θ")

    ax = axes[0, 1]  # T1: scale c
    for i, k in enumerate(LABELS):
        ax.errorbar([i], [_get(st, f"scale/{k}")], yerr=[_get(se, f"scale/{k}")], fmt=style(k).marker,
                    color=style(k).color, ms=4, capsize=2, lw=0.8)
    ax.axhline(1.0, color="k", ls="--", lw=0.8)
    ax.axhline((G - 1) / G, color=style("dr_grpo").color, ls=":", lw=0.8)
    ax.set_xticks(x, LABELS, rotation=90)
    ax.set(ylabel="c = <E ĝ, ∇J> / ‖∇J‖²", title="(b) T1: scale along the gradient")

    ax = axes[1, 0]  # T3: variance removed
    bases = ("reinforce", "rloo", "dr_grpo", "opo_loo", "logit_loo")
    xb = np.arange(len(bases))
    ax.bar(xb, [_get(st, f"removed/optimal_loo_vs_{b}") for b in bases],
           yerr=[_get(se, f"removed/optimal_loo_vs_{b}") for b in bases], color=[style(b).color for b in bases],
           alpha=0.85, error_kw=dict(lw=0.8, capsize=2))
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(xb, ["reinforce (b = 0)" if b == "reinforce" else b for b in bases], rotation=90)
    cl, cs = _get(st, "corr/S_length"), _get(st, "corr/S_logit")
    ax.set(ylabel="(V_base − V_optimal_loo) / V_base",
           title=f"(c) T3: variance removed by optimal_loo\n"
                 f"T8: corr(S, length) = {cl:.2f}, corr(S, logit proxy) = {cs:.2f}")

    ax = axes[1, 1]  # T7/T5: SNR and the step it picks
    B = _get(st, "snr/batch_size")
    undefined = {k: why for k in LABELS if (why := snr_undefined(st, k))}
    snr = [np.nan if k in undefined else _get(st, f"snr/{k}/pooled") for k in LABELS]
    frac = [np.nan if k in undefined else _get(st, f"lr/{k}/T5_fraction") for k in LABELS]
    ax.bar(x - 0.2, snr, 0.4, yerr=[_get(se, f"snr/{k}/pooled") for k in LABELS], color=colors, alpha=0.85,
           error_kw=dict(lw=0.8, capsize=2))
    ax.bar(x + 0.2, frac, 0.4, color="none", edgecolor="k", lw=0.8)
    for i, k in enumerate(LABELS):
        if k in undefined:
            na_note(ax, i, 0.04)
    if len(undefined) == len(LABELS):
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.55, f"SNR undefined for every estimator at B = {B:g}:\nthe unbiased ‖∇J‖² estimate is "
                "negative\n(noise exceeds signal), so SNR̂ is clipped\nto 0 and the T5 step is 0",
                transform=ax.transAxes, ha="center", va="center", fontsize=7)
    ax.set_xticks(x, LABELS, rotation=90)
    ax.set_xlim(-0.7, len(LABELS) - 0.3)
    ax.set(ylabel="SNR (filled) | η/η_max (open)", title=f"(d) T7/T5: pooled batch SNR, B = {B:g} prompts")

    handles = [Line2D([], [], color="#888888", lw=6, alpha=0.85),
               Line2D([], [], color="k", marker="_", ms=10, ls="none"),
               Line2D([], [], color="#CC3311", marker="x", ls="none"), Line2D([], [], color="k", ls=":", lw=0.8),
               Line2D([], [], color="k", ls="--", lw=0.8), Line2D([], [], color=style("dr_grpo").color, ls=":", lw=0.8)]
    labels = ["measured (bar colour: estimator)", "T2 prediction from measured moments", "exact (enumeration)",
              "(a) T3: V(b*), fixed optimal baseline", "(b) unbiased: c = 1",
              f"(b) dr_grpo: (G−1)/G = {(G - 1) / G:.3f}"]
    legend_below(fig, handles, labels, ncol=3)
    model = cfg.get("model") or "tiny Qwen3 (built-in task)"
    caption = (__doc__.split("\n\n", 2)[2].strip() + f"\n\nRun: model {model}, {cfg['prompts']} prompts, "
               f"M = {cfg['groups']} groups (batches) of G = {G} per prompt, seed {cfg['seed']}, "
               f"{cfg.get('device', '?')} {cfg.get('dtype', '')}, revision {report['git_revision'][:8]}"
               + (f"; read from {source}" if source else "") + "."
               + (" n/a in (d): " + "; ".join(f"{k}: {w}" for k, w in undefined.items())
                  + " (SNR̂ clipped to 0, so the SNR rule's step is 0)." if undefined else ""))
    return fig, caption


def build(results_dir: str):
    path = find_report(results_dir)
    with open(path) as fh:
        report = json.load(fh)
    root = os.path.dirname(HERE)
    source = os.path.relpath(path, root) if os.path.abspath(path).startswith(root) else path
    return figure_from_report(report, source)


def main(results_dir: str, figures_dir: str, dpi: int = PAPER_DPI, formats=("png", "pdf")) -> list[str]:
    return write(build, results_dir, figures_dir, "qwen3_validation", dpi, formats)


def cli(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir")
    ap.add_argument("--figures", default=None, help="output folder (default: RESULTS_DIR/figures)")
    ns = ap.parse_args(argv)
    paths = main(ns.results_dir, ns.figures or os.path.join(ns.results_dir, "figures"))
    print("\n".join(paths))
    return paths


if __name__ == "__main__":
    cli()
