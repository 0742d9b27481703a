"""Calibration of the verify suite's statistics: rerun every calibrated test over many seeds.

    python experiments/calibration.py [--runs 200] [--scale 1.0] [--alpha 1e-6] [--jobs 2] [--out results/calibration]

Each run is the ``--quick`` suite's statistical claims (exact and symbolic rows are deterministic
and left out) at seed ``first_seed + i``, with Monte Carlo sample sizes multiplied by ``--scale``
(1.0: the sizes ``oblr-theory verify --quick`` uses; ``< 1`` is a stress test of the normal
approximation: at 0.25, 1 of 300 runs false-failed at z ≈ 7.3 on a skewed coordinate of the
V = 16, H = 12 token MDP, where the z-test's tail is no longer normal).
One tidy CSV per run (one row per test: seed, key, statement, kind, statistic, threshold,
p-value, verdict, power ratio, with the config and git revision) is written atomically to
``OUT/<config>/seed_<n>.csv``; finished seeds are skipped on restart. The summary
(``OUT/<config>/summary.json``, printed) reports:

* the false-failure rate of true claims at the stated family-wise rate ``α`` (runs with any
  true claim rejected / runs) with a Clopper–Pearson 95% upper bound;
* the same rate at looser family-wise rates, recomputed from each test's Bonferroni-adjusted
  p-value (a run false-fails at rate ``a`` iff some true test has ``p ≤ a / num_tests``), so the
  calibration is visible where failures are frequent enough to count;
* the detection rate of every negative control (must be 100%), with its power ratio.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from oblr_theory.results import atomic_write_text  # noqa: E402
from oblr_theory.results import git_revision  # noqa: E402
from oblr_theory.verify import run_suite  # noqa: E402

FIELDS = ("config", "git_revision", "seed", "key", "claim", "problem", "statement", "kind", "statistic",
          "threshold", "p_value", "passed", "bias_over_detectable", "num_tests", "alpha_per_test")
LOOSE_RATES = (1e-3, 1e-2, 0.05, 0.1, 0.2, 0.5)




def run_one(seed: int, config: dict, config_id: str, rev: str) -> list[dict]:
    rep = run_suite(quick=True, seed=seed, alpha=config["alpha"], scale=config["scale"], jobs=1,
                    statistical_only=True)
    meta = rep["meta"]
    return [{"config": config_id, "git_revision": rev, "seed": seed, "key": r["key"], "claim": r["claim"],
             "problem": r["problem"], "statement": r["statement"], "kind": r["kind"],
             "statistic": r["statistic"], "threshold": r["threshold"], "p_value": r["details"].get("p_value"),
             "passed": r["passed"], "bias_over_detectable": r["details"].get("bias_over_detectable"),
             "num_tests": meta["num_tests"], "alpha_per_test": meta["alpha_per_test"]}
            for r in rep["rows"] if r["kind"] in ("monte-carlo", "negative-control")]


def _to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _read(folder: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("seed_") and name.endswith(".csv"):
            with open(os.path.join(folder, name)) as f:
                rows.extend(csv.DictReader(f))
    return rows


def _has_p(row: dict) -> bool:
    """A Monte Carlo row with a p-value (one-sided bound checks of T6/T7 report a threshold only;
    they count towards the false-failure rate through ``passed`` but not the p-value summaries)."""
    return row["kind"] == "monte-carlo" and row["p_value"] not in ("", "None")


def summarise(rows: list[dict], config: dict) -> dict:
    from scipy import stats as sps

    seeds = sorted({int(r["seed"]) for r in rows})
    n = len(seeds)
    by_seed = {s: [r for r in rows if int(r["seed"]) == s] for s in seeds}
    true_fail = sum(any(r["kind"] == "monte-carlo" and r["passed"] != "True" for r in rs) for rs in by_seed.values())
    ci = sps.binomtest(true_fail, n).proportion_ci(0.95, method="exact") if n else None
    loose = {}
    for a in LOOSE_RATES:
        k = 0
        for rs in by_seed.values():
            m = int(rs[0]["num_tests"])
            k += any(_has_p(r) and float(r["p_value"]) <= a / m for r in rs)
        loose[str(a)] = {"runs_false_failing": k, "rate": k / n if n else None,
                         "ci95_upper": sps.binomtest(k, n).proportion_ci(0.95, method="exact").high if n else None}
    controls = {}
    for r in rows:
        if r["kind"] == "negative-control":
            c = controls.setdefault(f"{r['problem']} | {r['statement']}", {"runs": 0, "caught": 0, "min_power_ratio": np.inf})
            c["runs"] += 1
            c["caught"] += r["passed"] == "True"
            c["min_power_ratio"] = min(c["min_power_ratio"], float(r["bias_over_detectable"]))
    caught = sum(c["caught"] for c in controls.values())
    total = sum(c["runs"] for c in controls.values())
    true_p = np.array([float(r["p_value"]) for r in rows if _has_p(r)])
    no_p = sum(r["kind"] == "monte-carlo" and not _has_p(r) for r in rows)
    return {
        "config": config, "runs": n, "seeds": [seeds[0], seeds[-1]] if seeds else None,
        "true_tests_per_run": int(np.mean([sum(r["kind"] == "monte-carlo" for r in rs) for rs in by_seed.values()])) if n else 0,
        "negative_controls_per_run": len(controls),
        "false_failure": {"stated_family_rate": config["alpha"], "runs_false_failing": true_fail,
                          "rate": true_fail / n if n else None, "ci95_upper": ci.high if ci else None},
        "false_failure_at_looser_rates": loose,
        "true_test_p_values": {"count": int(true_p.size), "tests_without_p_value": int(no_p), "fraction_below_0.05": float(np.mean(true_p <= 0.05)),
                               "fraction_below_0.01": float(np.mean(true_p <= 0.01))},
        "negative_controls": {"caught": caught, "total": total, "rate": caught / total if total else None,
                              "min_power_ratio": min((c["min_power_ratio"] for c in controls.values()), default=None),
                              "missed": sorted(k for k, c in controls.items() if c["caught"] < c["runs"])},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--first-seed", type=int, default=1000, help="seeds first_seed .. first_seed + runs − 1")
    p.add_argument("--scale", type=float, default=1.0,
                   help="Monte Carlo sample-size multiplier (1.0: verify --quick's sizes; < 1: stress test)")
    p.add_argument("--alpha", type=float, default=1e-6, help="family-wise false-failure rate per run")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--out", default="results/calibration")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    rev = git_revision()
    # the code revision is part of the configuration: a resumed run never mixes rows of other code
    config = {"suite": "quick, statistical claims only", "scale": args.scale, "alpha": args.alpha,
              "git_revision": rev}
    config_id = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    folder = os.path.join(args.out, config_id)
    os.makedirs(folder, exist_ok=True)
    seeds = [args.first_seed + i for i in range(args.runs)]
    todo = [s for s in seeds if not os.path.exists(os.path.join(folder, f"seed_{s:05d}.csv"))]
    from tqdm import tqdm

    bar = tqdm(total=len(seeds), initial=len(seeds) - len(todo), desc="calibration", disable=args.no_progress)

    def save(seed, rows):
        atomic_write_text(os.path.join(folder, f"seed_{seed:05d}.csv"), _to_csv(rows))
        bar.update(1)

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_one, s, config, config_id, rev): s for s in todo}
            for f in as_completed(futures):
                save(futures[f], f.result())
    else:
        for s in todo:
            save(s, run_one(s, config, config_id, rev))
    bar.close()
    rows = [r for r in _read(folder) if int(r["seed"]) in set(seeds)]
    summary = summarise(rows, config)
    summary["git_revision"] = rev
    atomic_write_text(os.path.join(folder, "summary.json"), json.dumps(summary, indent=1, default=float) + "\n")
    print(json.dumps(summary, indent=1, default=float))
    ok = summary["negative_controls"]["rate"] == 1.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
