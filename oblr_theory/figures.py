"""``oblr-theory figures [--quick]``: regenerate every figure from saved results.

    oblr-theory figures                 figures/ from results/ (run the experiments/ scripts first)
    oblr-theory figures --quick         small results in results/quick/, then figures/quick/ (CI)
    oblr-theory figures --docs          the gallery docs/figures/*.png (documentation resolution)

Each script in ``paper_figures/`` reads result files and writes PNG + PDF + its caption (``.txt``,
also printed); none simulates. The style (one colour and marker per estimator, paper sizes) is
:mod:`oblr_theory.plotstyle`. ``qwen3_validation`` reads ``RESULTS/qwen3_validation/report.json``
(from ``experiments/qwen3_validation.py``, which needs torch) or, without one, the newest saved
GPU run under ``docs/gpu_runs`` (its path is in the caption). With
``--quick`` the experiment scripts (``estimator_map.py``, ``dynamics.py``, ``comparison.py``)
first run in their quick settings; they are resumable, so a second ``--quick`` only redraws.
Both folders live next to the package in a source checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from .cliutil import csv_choices, writable_path

__all__ = ["main", "FIGURES", "EXPERIMENTS", "repo_root"]

#: The figure scripts of ``paper_figures/`` (module name -> what it draws).
FIGURES = {
    "variance_vs_group_size": "V against G for every estimator (exact + Monte Carlo), T5 gain",
    "shrinkage": "λ* of optimal_loo_shrink and V(λ)/V_rloo against G",
    "baseline_shift": "b* against the mean reward on the length-correlated MDP (T3)",
    "t4_bound": "T4 bound against the exact expected one-step gain",
    "snr_traces": "exact vs estimated SNR, learning-rate traces, J per rule",
    "learning_curves": "OBLR-PO vs baselines, tuned on separate seeds (seed bands)",
    "qwen3_validation": "theory vs practice on a Qwen3 LM at fixed θ (jackknife error bars)",
}
#: The experiment scripts that ``--quick`` runs, in order.
EXPERIMENTS = ("estimator_map", "dynamics", "comparison")


def repo_root() -> Path:
    """The source checkout holding ``experiments/`` and ``paper_figures/``."""
    root = Path(__file__).resolve().parents[1]
    for sub in ("experiments", "paper_figures"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root / sub} not found: `oblr-theory figures` needs a source checkout")
    return root


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_oblr_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="oblr-theory figures", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="first produce small results")
    ap.add_argument("--results", default=None, help="results folder (default results/, results/quick/)")
    ap.add_argument("--figures", default=None, help="output folder (default figures/, figures/quick/)")
    ap.add_argument("--only", default=None, help=f"comma-separated figure names ({', '.join(FIGURES)})")
    ap.add_argument("--docs", action="store_true",
                    help="write the gallery docs/figures/*.png at documentation resolution (with --quick: "
                         "from the quick results)")
    ap.add_argument("--no-captions", action="store_true", help="do not print the captions")
    args = ap.parse_args(argv)
    try:  # refuse before any work
        names = csv_choices(args.only, list(FIGURES), "--only") if args.only is not None else list(FIGURES)
    except ValueError as exc:
        ap.error(str(exc))
    root = repo_root()
    results = args.results or ("results/quick" if args.quick else "results")
    out = args.figures or (str(root / "docs" / "figures") if args.docs else
                           "figures/quick" if args.quick else "figures")
    for flag, folder in (("--figures", out), ("--results", results if args.quick else None)):
        if folder is not None and (why := writable_path(str(Path(folder) / "x"))):
            ap.error(f"{flag} {folder}: {why}")
    from .plotstyle import DOCS_DPI, PAPER_DPI

    dpi = DOCS_DPI if args.docs else PAPER_DPI
    formats = ("png",) if args.docs else ("png", "pdf")
    if args.quick:
        for name in EXPERIMENTS:
            t0 = time.perf_counter()
            _load(root / "experiments" / f"{name}.py").main(["--quick", "--out", results])
            print(f"experiment {name} --quick: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    sys.path.insert(0, str(root / "paper_figures"))
    failed = []
    for name in names:
        try:
            paths = _load(root / "paper_figures" / f"{name}.py").main(results, out, dpi=dpi, formats=formats)
            print(f"{name}: {', '.join(paths)}")
            caption = [p for p in paths if p.endswith(".txt")]
            if caption and not args.no_captions:
                print("  " + Path(caption[0]).read_text().strip().replace("\n", "\n  ") + "\n")
        except FileNotFoundError as exc:
            failed.append(name)
            print(f"{name}: skipped, {exc}", file=sys.stderr)
    if args.docs and not args.only and Path(out).resolve() == (root / "docs" / "figures").resolve():
        path = root / "docs" / "figures.md"
        path.write_text(gallery(out, root, args.quick))
        print(f"gallery: {path}")
    return 1 if failed else 0


#: Which experiment script writes each figure's results (the gallery's commands).
SOURCES = {
    "variance_vs_group_size": "estimator_map", "shrinkage": "estimator_map", "baseline_shift": "estimator_map",
    "t4_bound": "dynamics", "snr_traces": "dynamics", "learning_curves": "comparison",
    "qwen3_validation": "qwen3_validation",
}


def gallery(figures_dir: str, root: Path, quick: bool) -> str:
    """docs/figures.md: each figure (PNG beside it), its caption and the commands that make it."""
    rel = Path(figures_dir).resolve().relative_to((root / "docs").resolve())
    mode = " --quick" if quick else ""
    lines = ["# Figures", "",
             "Every figure of the package, as `oblr-theory figures` draws it: one colour and marker per estimator "
             "(Paul Tol's colour-blind-safe palette, `oblr_theory/plotstyle.py`), sized for a two-column paper, "
             "PDF + PNG + caption (`.txt`) beside each file. This gallery is regenerated by one command:", "",
             f"    oblr-theory figures{mode} --docs", "",
             ("It shows the **quick** settings (small grids, few seeds: what CI runs), so the curves are noisier "
              "than the full run's (`oblr-theory figures` after the experiments, into `figures/`)." if quick else
              "It shows the full settings (`experiments/*.py` without `--quick`)."),
             "The Qwen3 figure is drawn from the saved GPU run under `docs/gpu_runs` unless a "
             "`results/qwen3_validation/report.json` exists.", ""]
    for name, what in FIGURES.items():
        caption_file = Path(figures_dir) / f"{name}.txt"
        caption = caption_file.read_text().strip() if caption_file.exists() else "(not drawn: results missing)"
        src = SOURCES[name]
        out = "results/quick" if quick else "results"
        make = ("python experiments/qwen3_validation.py --out results/qwen3_validation   # needs torch\n"
                if src == "qwen3_validation" else f"python experiments/{src}.py{mode} --out {out}\n")
        lines += [f"## {name}", "", f"![{name}]({rel.as_posix()}/{name}.png)", "", caption, "",
                  "Made by:", "", "```", make + f"oblr-theory figures{mode} --only {name}", "```", ""]
    return "\n".join(lines)
