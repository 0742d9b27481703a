"""Shared helpers of the figure scripts: read result files, save PNG + PDF. Never simulates."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "reinforce": "#7f7f7f", "constant": "#bcbd22", "dr_grpo": "#8c564b", "grpo": "#d62728",
    "rloo": "#1f77b4", "opo": "#ff7f0e", "opo_loo": "#ffbb78", "optimal": "#98df8a",
    "optimal_loo": "#2ca02c", "optimal_loo_shrink": "#17becf", "oracle_optimal": "#000000",
    "rloo+snr": "#9467bd", "oblr_po": "#2ca02c", "oblr_po_shrink": "#17becf",
}


def load(results_dir: str, name: str) -> list[dict]:
    """Rows of ``results_dir/name`` (a .jsonl file); a clear error when it is missing."""
    path = os.path.join(results_dir, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run the experiments first (or `oblr-theory figures --quick`)")
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def save(fig, figures_dir: str, stem: str) -> list[str]:
    """Write ``stem.png`` and ``stem.pdf``; returns their paths."""
    os.makedirs(figures_dir, exist_ok=True)
    paths = [os.path.join(figures_dir, f"{stem}.{ext}") for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def nan(x):
    """``None`` (a non-finite value in the JSON) as NaN."""
    import numpy as np

    return np.array([np.nan if v is None else v for v in x], dtype=float)
