"""``oblr-theory figures [--quick]``: regenerate every figure from saved results.

    oblr-theory figures                 figures/ from results/ (run the experiments/ scripts first)
    oblr-theory figures --quick         small results in results/quick/, then figures/quick/ (CI)

Each script in ``paper_figures/`` reads result files and writes PNG + PDF; none simulates. With
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
    args = ap.parse_args(argv)
    try:  # refuse before any work
        names = csv_choices(args.only, list(FIGURES), "--only") if args.only is not None else list(FIGURES)
    except ValueError as exc:
        ap.error(str(exc))
    results = args.results or ("results/quick" if args.quick else "results")
    out = args.figures or ("figures/quick" if args.quick else "figures")
    for flag, folder in (("--figures", out), ("--results", results if args.quick else None)):
        if folder is not None and (why := writable_path(str(Path(folder) / "x"))):
            ap.error(f"{flag} {folder}: {why}")
    root = repo_root()
    if args.quick:
        for name in EXPERIMENTS:
            t0 = time.perf_counter()
            _load(root / "experiments" / f"{name}.py").main(["--quick", "--out", results])
            print(f"experiment {name} --quick: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    sys.path.insert(0, str(root / "paper_figures"))
    failed = []
    for name in names:
        try:
            paths = _load(root / "paper_figures" / f"{name}.py").main(results, out)
            print(f"{name}: {', '.join(paths)}")
        except FileNotFoundError as exc:
            failed.append(name)
            print(f"{name}: skipped, {exc}", file=sys.stderr)
    return 1 if failed else 0
