"""Tidy, resumable result files for the experiments: one JSON object per line (row = one setting
and seed), each with its config, seed and git revision; written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

__all__ = ["ResultStore", "git_revision", "jsonable"]


def git_revision() -> str:
    """The checkout's commit (``git rev-parse HEAD``), or ``unknown`` outside git."""
    from .verify import git_revision as rev

    return rev()


def jsonable(x):
    """numpy scalars/arrays -> plain Python (non-finite floats as None)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


class ResultStore:
    """Rows of ``path`` (a ``.jsonl`` file), keyed by ``row["key"]``; ``add`` rewrites atomically."""

    def __init__(self, path: str):
        self.path = path
        self.rows: list[dict] = []
        if os.path.exists(path):
            with open(path) as fh:
                self.rows = [json.loads(line) for line in fh if line.strip()]
        self._keys = {r["key"] for r in self.rows}

    def done(self, key: str) -> bool:
        return key in self._keys

    def add(self, rows) -> None:
        """Append rows (each with a unique ``key``) and rewrite the file atomically."""
        rows = [jsonable(r) for r in rows]
        for r in rows:
            if "key" not in r:
                raise ValueError("every result row needs a 'key'")
        self.rows.extend(r for r in rows if r["key"] not in self._keys)
        self._keys.update(r["key"] for r in rows)
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".jsonl")
        with os.fdopen(fd, "w") as fh:
            for r in self.rows:
                fh.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)
