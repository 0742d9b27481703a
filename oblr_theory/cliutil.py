"""Shared pieces of the command-line tools: range-checked argparse types, output-path checks, and
the Ctrl-C convention (one line on stderr, exit code 130, finished work kept).

A value out of range is a usage error (argparse prints it with the option's name and exits 2),
never a quietly clipped or wrong run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

__all__ = ["int_range", "float_range", "probability", "csv_choices", "writable_path", "EXIT_INTERRUPTED",
           "interrupted"]

#: Exit code of a command ended by Ctrl-C (128 + SIGINT, the shell's convention).
EXIT_INTERRUPTED = 130


def int_range(lo: int | None = None, hi: int | None = None):
    """An argparse ``type``: an integer in ``[lo, hi]`` (either end may be open: ``None``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected an integer in {_interval(lo, hi, True, True)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = True, hi_open: bool = True):
    """An argparse ``type``: a finite float in the interval from ``lo`` to ``hi`` (open ends by
    default; ``None`` leaves that side unbounded)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(value)
        bad |= lo is not None and (value <= lo if lo_open else value < lo)
        bad |= hi is not None and (value >= hi if hi_open else value > hi)
        if bad:
            raise argparse.ArgumentTypeError(
                f"expected a finite number in {_interval(lo, hi, not lo_open, not hi_open)}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


#: A probability strictly between 0 and 1 (a false-failure rate, a power).
probability = float_range(0.0, 1.0)


def _interval(lo, hi, lo_closed: bool, hi_closed: bool) -> str:
    left = "(-inf" if lo is None else ("[" if lo_closed else "(") + f"{lo:g}"
    right = "inf)" if hi is None else f"{hi:g}" + ("]" if hi_closed else ")")
    return f"{left}, {right}"


def csv_choices(text: str | None, valid, what: str) -> list[str]:
    """Split a comma-separated option into names, each of which must be in ``valid``; raises
    ``ValueError`` naming the unknown ones and listing the valid names."""
    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not names:
        raise ValueError(f"{what}: empty list; choose from {', '.join(valid)}")
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"{what}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(valid)}")
    return names


def writable_path(path: str) -> str | None:
    """Why ``path`` cannot be written (``None`` if it can): checked before a long run, so the run's
    result is never lost at the end. A missing folder is fine when it can be created. The check
    creates and removes a temporary file in the nearest existing folder (permission bits alone
    say nothing for root or on special file systems)."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return f"{path} is a folder"
    parent = os.path.dirname(path)
    while not os.path.exists(parent):  # the nearest existing ancestor must be a writable folder
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".oblr-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"cannot write in folder {parent} ({exc.strerror or exc})"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    return None


def interrupted(prog: str, kept: str = "") -> int:
    """Print the one-line Ctrl-C message for ``prog`` (and what was kept) and return 130."""
    print(f"\n{prog}: interrupted" + (f"; {kept}" if kept else ""), file=sys.stderr)
    return EXIT_INTERRUPTED
