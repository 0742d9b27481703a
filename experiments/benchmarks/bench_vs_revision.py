"""Benchmark: this checkout's ``bench_step`` and ``bench_gram`` ratios against an older revision's,
measured side by side.

A refactor must not make an update slower. Each benchmark already reports a ratio measured side by
side in one process (``oblr_po / grpo`` and ``two_pass / grpo`` for ``bench_step``,
``ghost / plain`` and ``ghost_weighted / plain`` for ``bench_gram``); this script runs the same benchmark, with the same
arguments, from this checkout and from a ``git worktree`` of ``--rev``, alternating fresh processes
for ``--rounds`` rounds, and prints one JSON document with every ratio of both and the ratio of
their medians (new / old; 1 = no change). Run from the repository root::

    python experiments/benchmarks/bench_vs_revision.py --rev 2c9c323 --rounds 3

Arguments after ``--`` go to both benchmarks (for example a smaller model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Where each benchmark lives, newest layout first (older revisions kept them in experiments/).
SCRIPTS = {"bench_step": ("experiments/benchmarks/bench_step.py", "experiments/bench_step.py"),
           "bench_gram": ("experiments/benchmarks/bench_gram.py", "experiments/bench_gram.py")}
#: The side-by-side ratios each benchmark prints: name -> path of keys in its JSON.
RATIOS = {"bench_step": {"oblr_po/grpo": ("ratio_oblr_po_over_grpo",),
                         "two_pass/grpo": ("ratio_two_pass_over_grpo",)},
          "bench_gram": {"ghost/plain": ("ratio_ghost_vs_plain",),
                         "ghost_weighted/plain": ("ratio_ghost_weighted_vs_plain",)}}


def script_in(tree: str, bench: str) -> str:
    """The path of ``bench`` in the checkout ``tree`` (either layout)."""
    for rel in SCRIPTS[bench]:
        if os.path.exists(os.path.join(tree, rel)):
            return os.path.join(tree, rel)
    raise FileNotFoundError(f"no {bench} script in {tree} (looked for {', '.join(SCRIPTS[bench])})")


def dig(doc: dict, path: tuple):
    for key in path:
        doc = doc[key]
    return doc


def run_once(tree: str, bench: str, extra: list[str]) -> dict:
    """One fresh process of ``bench`` from ``tree`` (its own package first on the path)."""
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, script_in(tree, bench), *extra], cwd=tree, env=env,
                         capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout[out.stdout.index("{"):])
    return {name: float(dig(doc, path)) for name, path in RATIOS[bench].items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the older revision (any git revision name)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (fresh processes)")
    p.add_argument("--benchmarks", default="bench_step,bench_gram")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for both benchmarks")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error(f"--rounds must be >= 1, got {a.rounds}")
    benches = a.benchmarks.split(",")
    for b in benches:
        if b not in SCRIPTS:
            p.error(f"--benchmarks: unknown {b!r}; choose from {', '.join(SCRIPTS)}")
    extra = a.extra[1:] if a.extra[:1] == ["--"] else a.extra
    rev = subprocess.run(["git", "rev-parse", "--short", a.rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, "old")
        subprocess.run(["git", "worktree", "add", "-q", "--detach", old, rev], cwd=ROOT, check=True)
        try:
            report = {"new": head, "old": rev, "rounds": a.rounds, "args": extra, "benchmarks": {}}
            for bench in benches:
                runs = {"new": [], "old": []}
                for i in range(a.rounds):
                    order = ("new", "old") if i % 2 == 0 else ("old", "new")
                    for which in order:
                        runs[which].append(run_once(ROOT if which == "new" else old, bench, extra))
                        print(f"{bench} round {i + 1}/{a.rounds} {which}: {runs[which][-1]}", file=sys.stderr)
                med = {w: {k: statistics.median(r[k] for r in rs) for k in RATIOS[bench]} for w, rs in runs.items()}
                report["benchmarks"][bench] = {"runs": runs, "median": med,
                                               "new_over_old": {k: med["new"][k] / med["old"][k] for k in RATIOS[bench]}}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", old], cwd=ROOT, check=False)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
