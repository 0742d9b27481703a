"""Variance against G for every estimator and T5's guaranteed gain at the optimal step.

Top row: the exact one-group variance ``V = tr Var ĝ`` (lines with markers, multiset
enumeration) and Monte Carlo estimates (vertical bars: estimate ± 2 s.e.). Bottom row: T5's
guaranteed one-step gain at ``η*`` relative to ``oracle_optimal``'s (1 = as good as the oracle
baseline). Columns: the problem families of ``oblr_theory.families``. Reads estimator_map.jsonl
and estimator_map_mc.jsonl.
"""

from __future__ import annotations

import numpy as np

from _common import load, seeds_text, write
from oblr_theory.plotstyle import DOUBLE, PAPER_DPI, figure, integer_ticks, legend_below, style


def _coinciding(curves: dict) -> list[list[str]]:
    """Groups of names whose curves are equal to rounding (drawn on top of each other)."""
    groups, seen = [], set()
    for a, (ga, va) in curves.items():
        if a in seen:
            continue
        same = [b for b, (gb, vb) in curves.items() if b != a and b not in seen and np.array_equal(ga, gb)
                and np.allclose(va, vb, rtol=1e-9, atol=0)]
        if same:
            groups.append([a] + same)
            seen.update(same)
        seen.add(a)
    return groups


def build(results_dir: str):
    rows, mc = load(results_dir, "estimator_map.jsonl"), load(results_dir, "estimator_map_mc.jsonl")
    fams = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = figure(DOUBLE, 4.6, 2, len(fams))
    handles, coincide = {}, {}
    for j, fam in enumerate(fams):
        sub = [r for r in rows if r["family"] == fam]
        oracle = {r["group_size"]: r["gain"] for r in sub if r["estimator"] == "oracle_optimal"}
        curves = {}
        for name in dict.fromkeys(r["estimator"] for r in sub):
            pts = sorted((r["group_size"], r["trace_var"], r["gain"]) for r in sub if r["estimator"] == name)
            G, V, gain = (np.array(v, dtype=float) for v in zip(*pts))
            kw = style(name).kw()
            handles[name] = axes[0, j].plot(G, V, label=name, **kw)[0]
            rel = gain / np.array([oracle[g] for g in G])
            axes[1, j].plot(G, rel, **kw)
            curves[name] = (G, rel)
            dots = sorted((r["group_size"], r["trace_var_mc"], r["std_error"]) for r in mc
                          if r["family"] == fam and r["estimator"] == name)
            if dots:
                g, v, se = (np.array(x, dtype=float) for x in zip(*dots))
                axes[0, j].errorbar(g, v, yerr=2 * se, fmt="_", ms=5, color=kw["color"], capsize=1.5, lw=0.8)
        coincide[fam] = _coinciding(curves)
        axes[0, j].set(title=fam, yscale="log")
        axes[1, j].set(xlabel="group size G")
        axes[1, j].axhline(1.0, color="k", lw=0.5)
        for ax in axes[:, j]:
            integer_ticks(ax, "x", [r["group_size"] for r in sub])
    axes[0, 0].set_ylabel("V = tr Var ĝ (one group)")
    axes[1, 0].set_ylabel("T5 gain at η* ÷ oracle's")
    legend_below(fig, list(handles.values()), list(handles), ncol=6)
    n_mc = sorted({r["n"] for r in mc})
    same = "; ".join(f"{fam}: " + ", ".join(" = ".join(g) for g in gs) for fam, gs in coincide.items() if gs)
    caption = (__doc__.strip() + f"\n\nMonte Carlo: {', '.join(map(str, n_mc))} groups per point, "
               f"{seeds_text(r['seed'] for r in mc)}; bars are ± 2 standard errors. Exact curves carry no band."
               + (f" Curves drawn on top of each other in the bottom row (equal gains): {same}." if same else ""))
    return fig, caption


def main(results_dir: str, figures_dir: str, dpi: int = PAPER_DPI, formats=("png", "pdf")) -> list[str]:
    return write(build, results_dir, figures_dir, "variance_vs_group_size", dpi, formats)
