"""``oblr-theory verify``: every claim T1–T8, exactly, symbolically and by calibrated Monte Carlo.

    oblr-theory verify [--quick] [--json PATH] [--html PATH] [--seed N] [--alpha A] [--jobs J]
                       [--only LABELS]

``--only`` takes theorem labels or claim-key prefixes; one that matches no claim is a usage error
(exit 2) that lists the valid ones. ``--quick`` names the claims it drops (printed, and stored in
the JSON's ``meta.quick_dropped``). Ctrl-C stops the run with exit code 130; the finished claims'
rows are printed and written to ``--json`` (``summary.interrupted`` is true).

The claims come from the modules named in :data:`CLAIM_MODULES` (each
exposes ``claims(quick: bool, seed: int) -> list[Claim]``, see :mod:`.report`). The suite's
family-wise false-failure rate ``--alpha`` (default 1e-6) is split evenly over all calibrated
tests in the run (Bonferroni), so any seed passes with probability ≥ 1 − α when every claim
holds. The exit code is 0 only if every claim holds and every negative control is caught: a failing or an
untested row (a check that could not decide) gives exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing as mp
import os
import platform
import signal
import sys
import textwrap
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from .. import __version__
from ..cliutil import int_range, interrupted, probability, writable_path
from ..results import git_revision
from ..stats import DEFAULT_ALPHA, DEFAULT_POWER
from .report import LINE_WIDTH, Claim, Context, Row, format_summary, format_table, write_json

__all__ = ["main", "run_suite", "collect_claims", "select_claims", "claim_labels", "quick_dropped",
           "SuiteInterrupted", "CLAIM_MODULES"]

#: Claim modules, all required. Adding a module is one entry here.
CLAIM_MODULES = (
    "oblr_theory.verify.claims_static",     # T1, T2, T3, T8 and section 6 (exact + Monte Carlo)
    "oblr_theory.verify.claims_dynamics",   # T4–T7 (one-step bound, step size, convergence, SNR)
    "oblr_theory.verify.claims_symbolic",   # sympy derivations (oblr_theory.symbolic.derive)
    "oblr_theory.verify.claims_definitions",  # DEF: definitions and T4–T7 values vs verify/reference.py
    "oblr_theory.verify.claims_peers",  # PEERS, KL: exact biases of the peers' estimators and KL terms
)


def collect_claims(quick: bool, seed: int, modules=CLAIM_MODULES) -> list[Claim]:
    """All claims of the modules, in module order; keys must be unique."""
    out: list[Claim] = []
    for name in modules:
        out.extend(importlib.import_module(name).claims(quick, seed))
    keys = [c.key for c in out]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate claim keys: {dup}")
    return out


def claim_labels(claims: list[Claim]) -> list[str]:
    """The names ``--only`` accepts: every claim's theorem label and key prefix, sorted."""
    return sorted({c.label for c in claims} | {c.key.split("/")[0] for c in claims})


def select_claims(claims: list[Claim], only: str | None, all_claims: list[Claim] | None = None) -> list[Claim]:
    """The claims whose label or key prefix is in the comma-separated ``only`` (all when ``None``).

    Raises ``ValueError`` naming every entry that matches no claim, with the valid names, so a
    typo never runs zero claims and reports success. ``all_claims`` (the full run's claims) lets
    the message say when an entry exists only outside ``--quick``.
    """
    if only is None:
        return list(claims)
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    valid = claim_labels(claims)
    if not wanted:
        raise ValueError(f"only={only!r} names no claim; choose from {', '.join(valid)}")
    unknown = [w for w in wanted if w not in valid]
    if unknown:
        full_only = [w for w in unknown if all_claims is not None and w in claim_labels(all_claims)]
        extra = f" ({', '.join(full_only)} run only without --quick)" if full_only else ""
        raise ValueError(f"only: {', '.join(map(repr, unknown))} match nothing{extra}; "
                         f"valid labels and key prefixes: {', '.join(valid)}")
    chosen = set(wanted)
    return [c for c in claims if c.label in chosen or c.key.split("/")[0] in chosen]


def quick_dropped(seed: int = 0, modules=CLAIM_MODULES) -> list[str]:
    """Keys of the claims that the full run has and ``--quick`` leaves out (the other claims run in
    ``--quick`` too, with smaller samples, grids and run counts)."""
    quick = {c.key for c in collect_claims(True, seed, modules)}
    return [c.key for c in collect_claims(False, seed, modules) if c.key not in quick]


class SuiteInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_suite`; ``report`` holds the finished claims' rows
    (``summary["interrupted"]`` is true, ``summary["passed"]`` false)."""

    def __init__(self, report: dict):
        super().__init__("verify interrupted")
        self.report = report


def claim_rng(seed: int, key: str) -> np.random.Generator:
    """The claim's generator: ``SeedSequence(seed)`` spawned at a child key from the claim's key,
    so adding or removing claims never changes another claim's stream."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(key.encode()),)))


# state shared with forked workers (set before the pool starts)
_WORK: dict = {}


def _run_one(index: int) -> tuple[int, list[Row]]:
    claim: Claim = _WORK["claims"][index]
    ctx = Context(claim_rng(_WORK["seed"], claim.key), _WORK["alpha_test"], _WORK["power"], _WORK["quick"],
                  _WORK["scale"])
    t0 = time.perf_counter()
    try:
        rows = list(claim.run(ctx))
    except Exception as exc:  # a crashing claim is a failing row, not a crashed report
        rows = [Row(claim.label, f"claim raised {type(exc).__name__}: {exc}", claim.problem, "exact",
                    None, None, None, None, False, note="error")]
    seconds = time.perf_counter() - t0
    for r in rows:
        r.key = claim.key
        r.seconds = seconds / max(1, len(rows))
    return index, rows


def run_suite(quick: bool = False, seed: int = 0, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER,
              jobs: int = 1, progress: bool = False, only=None, modules=CLAIM_MODULES,
              scale: float = 1.0, statistical_only: bool = False) -> dict:
    """Run every claim; returns the report dict (meta, rows, summary).

    ``only``: comma-separated theorem labels or key prefixes (see :func:`select_claims`);
    ``scale`` multiplies the Monte Carlo sample sizes; ``statistical_only`` keeps the claims that
    run calibrated tests (calibration). Ctrl-C raises :class:`SuiteInterrupted` carrying the
    report of the claims that finished.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    if int(jobs) != jobs or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    claims = collect_claims(quick, seed, modules)
    claims = select_claims(claims, only, collect_claims(False, seed, modules) if quick and only else None)
    if statistical_only:
        claims = [c for c in claims if c.num_tests > 0]
    dropped = quick_dropped(seed, modules) if quick else []
    num_tests = sum(c.num_tests for c in claims)
    alpha_test = alpha / max(1, num_tests)
    _WORK.update(claims=claims, seed=seed, alpha_test=alpha_test, power=power, quick=quick, scale=scale)
    t0 = time.perf_counter()
    results: dict[int, list[Row]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(c.cost for c in claims), desc="verify", unit="cost", file=sys.stderr,
                   bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
    order = sorted(range(len(claims)), key=lambda i: -claims[i].cost)  # longest first
    interrupted_run = False
    try:
        if jobs > 1 and "fork" in mp.get_all_start_methods():
            _run_pool(order, jobs, results, bar, claims)
        else:
            for i in order:
                results[i] = _run_one(i)[1]
                if bar is not None:
                    bar.update(claims[i].cost)
    except KeyboardInterrupt:
        interrupted_run = True
    finally:
        if bar is not None:
            bar.close()
    rows = [r for i in range(len(claims)) if i in results for r in results[i]]
    _attach_symbolic(rows)
    n_tests_run = sum(1 for r in rows if r.kind in ("monte-carlo", "negative-control"))
    n_tests_due = sum(claims[i].num_tests for i in results)
    if n_tests_run != n_tests_due:
        rows.append(Row("meta", f"claims declared {n_tests_due} calibrated tests but ran {n_tests_run}",
                        "runner", "exact", n_tests_due, n_tests_run, None, None, False))
    summary = {
        "passed": all(r.passed is True for r in rows) and not interrupted_run,  # untested is not a pass
        "interrupted": interrupted_run,
        "claims_finished": len(results),
        "claims_total": len(claims),
        "rows": len(rows),
        "failed": [f"{r.claim} | {r.problem} | {r.statement}" for r in rows if r.passed is False],
        "untested": [f"{r.claim} | {r.problem} | {r.statement}" for r in rows if r.passed is None],
        "by_kind": {k: sum(1 for r in rows if r.kind == k) for k in ("exact", "monte-carlo", "negative-control", "symbolic")},
        "negative_controls_caught": sum(1 for r in rows if r.kind == "negative-control" and r.passed),
        "seconds": time.perf_counter() - t0,
    }
    meta = {"seed": seed, "quick": quick, "quick_dropped": dropped, "only": only, "alpha": alpha,
            "alpha_per_test": alpha_test, "num_tests": num_tests,
            "power": power, "scale": scale, "jobs": jobs, "version": __version__, "git_revision": git_revision(),
            "python": platform.python_version(), "numpy": np.__version__,
            "modules": list(modules)}
    report = {"meta": meta, "summary": summary, "rows": [r.to_dict() for r in rows], "_rows": rows}
    if interrupted_run:
        raise SuiteInterrupted(report)
    return report


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the main process, which stops them; otherwise a terminal's Ctrl-C
    (sent to the whole process group) would also end each busy worker with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_pool(order, jobs, results, bar, claims) -> None:
    """Run the claims ``order`` in ``jobs`` forked workers, filling ``results`` as they finish. On
    Ctrl-C the queued claims are cancelled and the workers stopped, so the caller returns at once."""
    pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork"), initializer=_ignore_sigint)
    try:
        futures = [pool.submit(_run_one, i) for i in order]
        for f in as_completed(futures):
            i, rows = f.result()
            results[i] = rows
            if bar is not None:
                bar.update(claims[i].cost)
    except BaseException:
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:  # a worker busy with a long claim would otherwise hold the exit
            p.terminate()
        raise
    pool.shutdown()


def _attach_symbolic(rows: list[Row]) -> None:
    """Fill each row's ``symbolic`` column from the symbolic rows of the same theorem label."""
    proved: dict[str, bool] = {}
    for r in rows:
        if r.kind == "symbolic":
            proved[r.claim] = proved.get(r.claim, True) and r.passed
    for r in rows:
        if r.kind != "symbolic" and r.claim in proved:
            r.symbolic = "proved" if proved[r.claim] else "FAILED"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oblr-theory verify", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smaller samples and grids, the slowest claims left out and named")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON (atomically)")
    p.add_argument("--html", metavar="PATH",
                   help="write the report as one self-contained HTML page (tables, figures)")
    p.add_argument("--seed", type=int_range(0), default=0,
                   help="suite seed >= 0 (any seed passes: the tests are calibrated)")
    p.add_argument("--alpha", type=probability, default=DEFAULT_ALPHA,
                   help="family-wise false-failure rate of the whole suite, in (0, 1) (default 1e-6)")
    p.add_argument("--power", type=probability, default=DEFAULT_POWER,
                   help="power at which detectable biases are reported, in (0, 1)")
    p.add_argument("--jobs", type=int_range(1), default=min(2, os.cpu_count() or 1), help="worker processes (>= 1)")
    p.add_argument("--only", metavar="LABELS",
                   help="comma-separated theorem labels or claim-key prefixes to run (e.g. T1,T3,mc-suite)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.json and (why := writable_path(args.json)):
        parser.error(f"--json {args.json}: {why}")
    if args.html and (why := writable_path(args.html)):
        parser.error(f"--html {args.html}: {why}")
    if args.only is not None:
        try:  # refuse before any work: a label that matches nothing is a typo, not a pass
            select_claims(collect_claims(args.quick, args.seed), args.only,
                          collect_claims(False, args.seed) if args.quick else None)
        except ValueError as exc:
            parser.error(f"--{exc}")
    if args.quick:
        dropped = quick_dropped(args.seed)
        print(f"--quick: smaller Monte Carlo samples, grids and run counts; leaves out {len(dropped)} claims "
              f"of the full run: {', '.join(dropped) if dropped else 'none'}", file=sys.stderr)
    try:
        report = run_suite(quick=args.quick, seed=args.seed, alpha=args.alpha, power=args.power,
                           jobs=args.jobs, progress=not (args.quick or args.no_progress), only=args.only)
    except SuiteInterrupted as stop:
        report = stop.report
    rows = report.pop("_rows")
    print(format_table(rows))
    print("\n" + format_summary(rows))
    s, m = report["summary"], report["meta"]
    if args.json:
        write_json(args.json, report)
    if s["interrupted"]:
        kept = f" (written to {args.json})" if args.json else ""
        return interrupted("oblr-theory verify", f"{s['claims_finished']} of {s['claims_total']} claims "
                                                 f"finished, their {s['rows']} rows kept above{kept}")
    print("\n" + textwrap.fill(
        f"{s['rows']} rows ({s['by_kind']}); {m['num_tests']} calibrated tests at family-wise rate "
        f"{m['alpha']:g} (per test {m['alpha_per_test']:.2e}); negative controls caught: "
        f"{s['negative_controls_caught']}/{s['by_kind']['negative-control']}; seed {m['seed']}; "
        f"{s['seconds']:.1f} s", LINE_WIDTH, break_long_words=False, break_on_hyphens=False))
    if m["quick"]:
        print(textwrap.fill(f"--quick left out: {', '.join(m['quick_dropped']) or 'nothing'}", LINE_WIDTH,
                            subsequent_indent="  ", break_long_words=False, break_on_hyphens=False))
    if s["failed"]:
        print("FAILED:\n  " + "\n  ".join(s["failed"]))
    if s["untested"]:
        print("UNTESTED (the check could not decide; not counted as holding):")
        for u in s["untested"]:
            print(textwrap.fill(u, LINE_WIDTH, initial_indent="  ", subsequent_indent="    "))
    if s["passed"]:
        print("all claims hold; all negative controls caught")
    if args.html:
        from .report_html import write_html

        write_html(args.html, report, rows)
    return 0 if s["passed"] else 1
