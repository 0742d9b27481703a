"""Tidy, resumable result files for the experiments: one JSON object per line (row = one setting
and seed), each with its config, seed and git revision; written atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile

import numpy as np

__all__ = ["ResultStore", "git_revision", "jsonable", "problem_fingerprint", "atomic_write_text"]


def git_revision() -> str:
    """The checkout's ``git rev-parse HEAD`` (``"unknown"`` outside a git checkout)."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def jsonable(x, nonfinite=None):
    """numpy scalars/arrays -> plain Python; a non-finite float becomes ``nonfinite`` (``None``:
    JSON null) or, with ``nonfinite=str``, its name (``"inf"``, ``"nan"``)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v, nonfinite) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, nonfinite) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist(), nonfinite)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        if np.isfinite(v):
            return v
        return str(v) if nonfinite is str else nonfinite
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def problem_fingerprint(problem, *extra) -> str:
    """A short hash of an enumerable problem at its current ``θ`` (its repr, θ, prompt law and every
    response's reward) and of ``extra`` (JSON-able settings): result keys carry it, so rows computed
    for another problem design or configuration are never silently reused on resume."""
    from .exact import all_outcomes

    h = hashlib.sha1(repr(problem).encode())
    h.update(np.asarray(problem.theta, dtype=np.float64).tobytes())
    h.update(np.asarray(problem.prompt_probs, dtype=np.float64).tobytes())
    for o in all_outcomes(problem):
        h.update(np.asarray(o.rewards, dtype=np.float64).tobytes())
    h.update(json.dumps(jsonable(list(extra))).encode())
    return h.hexdigest()[:10]


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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

    def prune_family(self, family: str, setting: str) -> int:
        """Drop the rows of ``family`` computed for another ``setting`` (an older problem design or
        configuration, see :func:`problem_fingerprint`); returns how many were dropped."""
        keep = [r for r in self.rows if r.get("family") != family or r.get("setting") == setting]
        dropped = len(self.rows) - len(keep)
        if dropped:
            self.rows = keep
            self._keys = {r["key"] for r in keep}
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
        return dropped

    def add(self, rows) -> None:
        """Append rows (each with a unique ``key``) and rewrite the file atomically."""
        rows = [jsonable(r) for r in rows]
        for r in rows:
            if "key" not in r:
                raise ValueError("every result row needs a 'key'")
        self.rows.extend(r for r in rows if r["key"] not in self._keys)
        self._keys.update(r["key"] for r in rows)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
