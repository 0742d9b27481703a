"""OBLR-PO against the baselines on the problem families of ``experiments/comparison.py``: the
exact objective ``J(θ_t)`` along training, each method at the step size tuned on separate
tuning seeds (10000+) and evaluated on seeds 0..n−1 (common random numbers).

Top row: the constant-step baselines and OBLR-PO (``oblr_po``: optimal_loo baseline + SNR step).
Bottom row: its ablations (the SNR rule alone, ``rloo+snr``; the baseline alone with a constant
step, ``optimal_loo`` and ``optimal_loo_shrink``) and ``oblr_po_shrink``, with ``oblr_po`` again
for reference. Lines: mean over evaluation seeds; bands: ± 1 standard error of that mean (the
seed-to-seed spread, 10–90%, is in learning_curves.md). Dotted: 90% of the optimum ``J*``.
Also writes learning_curves.md: tuned η (``edge`` when at the end of the grid), final J, runs
reaching 90% of J* and the steps they took, collapse. Reads comparison.jsonl and tuned.json.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.lines import Line2D

from _common import load, nan, seeds_text
from oblr_theory.plotstyle import DOUBLE, PAPER_DPI, figure, integer_ticks, legend_below, save, style

#: The rows of the figure: baselines, and OBLR-PO's ablations (``oblr_po`` is in both).
ROWS = (("reinforce", "rloo", "dr_grpo", "grpo", "opo", "oblr_po"),
        ("rloo+snr", "optimal_loo", "optimal_loo_shrink", "oblr_po_shrink", "oblr_po"))


def build(results_dir: str):
    rows = tuned_rows(results_dir)
    fams = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = figure(DOUBLE, 4.4, 2, len(fams), sharex="col")
    drawn = {}
    for j, fam in enumerate(fams):
        sub = [r for r in rows if r["family"] == fam]
        for i, group in enumerate(ROWS):
            ax = axes[i, j]
            for method in group:
                runs = [r for r in sub if r["method"] == method]
                if not runs:
                    continue
                t = np.array(runs[0]["curve_steps"])
                y = np.array([nan(r["curve"]) for r in runs])
                st = style(method)
                m = y.mean(0)
                se = y.std(0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros_like(m)
                ax.plot(t, m, **st.kw(markevery=max(1, len(t) // 5)))
                ax.fill_between(t, m - se, m + se, color=st.color, alpha=0.15, lw=0)
                drawn[method] = st
            ax.axhline(0.9 * sub[0]["optimum"], color="k", ls=":", lw=0.8)
            integer_ticks(ax, "x")
        axes[0, j].set_title(fam)
        axes[1, j].set_xlabel("step t")
    axes[0, 0].set_ylabel("J(θ_t), baselines")
    axes[1, 0].set_ylabel("J(θ_t), ablations")
    names = [m for g in ROWS for m in g if m in drawn]
    names = list(dict.fromkeys(names))
    handles = [Line2D([], [], **drawn[m].kw()) for m in names] + [Line2D([], [], color="k", ls=":", lw=0.8)]
    legend_below(fig, handles, names + ["90% of J*"], ncol=6)
    edge = sorted({f"{r['family']}/{r['method']}" for r in rows if r.get("eta_at_edge")})
    caption = (__doc__.strip() + f"\n\nEvaluation: {seeds_text(r['seed'] for r in rows)} per (family, "
               f"method); G = {rows[0]['group_size']}, B = {rows[0]['batch_size']}, {rows[0]['steps']} steps."
               + (f" Tuned η at the edge of the grid for {len(edge)} of "
                  f"{len({(r['family'], r['method']) for r in rows})} (family, method) pairs: a bound of the search, "
                  "not an interior optimum." if edge else ""))
    return fig, caption


def main(results_dir: str, figures_dir: str, dpi: int = PAPER_DPI, formats=("png", "pdf")) -> list[str]:
    fig, caption = build(results_dir)
    paths = save(fig, figures_dir, "learning_curves", caption, dpi=dpi, formats=formats)
    table = os.path.join(figures_dir, "learning_curves.md")
    with open(table, "w") as fh:
        fh.write(summary_table(tuned_rows(results_dir)))
    return paths + [table]


def _tuned(results_dir):
    """tuned.json as ``{family: {method: dict(eta, setting?, at_edge?)}}`` (older files held bare η)."""
    import json

    path = os.path.join(results_dir, "tuned.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        tuned = json.load(fh)
    return {f: {m: (v if isinstance(v, dict) else dict(eta=v)) for m, v in ms.items()} for f, ms in tuned.items()}


def tuned_rows(results_dir):
    """comparison.jsonl rows of each method's tuned setting (tuned.json: step size and, when
    recorded, the setting id, so rows of an older family design or config are left out)."""
    rows = load(results_dir, "comparison.jsonl")
    tuned = _tuned(results_dir)
    if tuned is None:
        return rows
    keep = []
    for r in rows:
        t = tuned.get(r["family"], {}).get(r["method"])
        if t is None or t["eta"] != r["eta"]:
            continue
        if "setting" in t and r.get("setting") != t["setting"]:
            continue
        keep.append(r)
    return keep


def summary_table(rows) -> str:
    """Markdown: per family and method, the tuned η (``edge`` when it is the grid's first or last
    point), final J (mean ± sd over evaluation seeds, and the 10–90% range), runs reaching 90% of
    J* and their median steps, the fraction of runs with a collapsed prompt (and of prompts)."""
    lines = ["| family | method | η | final J (mean ± sd) | final J 10–90% | reached 90% | median steps to 90% "
             "| collapsed runs (prompts) |",
             "|---|---|---|---|---|---|---|---|"]
    for fam in dict.fromkeys(r["family"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["family"] == fam):
            runs = [r for r in rows if r["family"] == fam and r["method"] == method]
            final = np.array([r["final_objective"] for r in runs])
            hit = [r["steps_to_90"] for r in runs if r["steps_to_90"] is not None]
            med = f"{np.median(hit):.0f}" if hit else "—"
            coll = np.mean([r["collapsed"] for r in runs])
            cp = np.mean([r.get("collapsed_prompts", np.nan) for r in runs])
            edge = " (edge)" if runs[0].get("eta_at_edge") else ""
            sd = final.std(ddof=1) if len(final) > 1 else float("nan")
            lo, hi = np.percentile(final, [10, 90])
            lines.append(f"| {fam} | {method} | {runs[0]['eta']:g}{edge} | {final.mean():.3f} ± {sd:.3f} | "
                         f"{lo:.3f}–{hi:.3f} | {len(hit)}/{len(runs)} | {med} | {coll:.0%} ({cp:.0%}) |")
    return "\n".join(lines) + "\n"
