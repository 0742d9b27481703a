"""Shared helpers of the figure scripts: read result files; the style is oblr_theory.plotstyle.

Each script exposes ``build(results_dir) -> (fig, caption)`` (the figure and its caption, which
says what is drawn, on which problem, with how many seeds and what the bands are) and
``main(results_dir, figures_dir, dpi=PAPER_DPI, formats=("png", "pdf"))`` (and the caption ``.txt``). Never simulates.
"""

from __future__ import annotations

import json
import os

import numpy as np

from oblr_theory.plotstyle import PAPER_DPI, save

__all__ = ["load", "nan", "seeds_text", "write"]


def load(results_dir: str, name: str) -> list[dict]:
    """Rows of ``results_dir/name`` (a .jsonl file); a clear error when it is missing."""
    path = os.path.join(results_dir, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run the experiments first (or `oblr-theory figures --quick`)")
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def nan(x):
    """``None`` (a non-finite value in the JSON) as NaN."""
    return np.array([np.nan if v is None else v for v in x], dtype=float)


def seeds_text(seeds) -> str:
    """``"4 seeds (0–3)"``: how many seeds and which."""
    s = sorted(set(int(v) for v in seeds))
    if not s:
        return "no seeds"
    span = f"{s[0]}–{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 1 else ", ".join(map(str, s))
    return f"{len(s)} seed{'s' if len(s) > 1 else ''} ({span})"


def write(build, results_dir: str, figures_dir: str, stem: str, dpi: int = PAPER_DPI,
          formats=("png", "pdf")) -> list[str]:
    """``build(results_dir)`` saved as ``stem`` (PNG, PDF, caption)."""
    fig, caption = build(results_dir)
    return save(fig, figures_dir, stem, caption, dpi=dpi, formats=formats)
