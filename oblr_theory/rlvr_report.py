"""Analysis of the RLVR study's saved rows (``OUT/rows.jsonl``, ``OUT/tuning/*.json``): per-method
summaries over the EVALUATION seeds, paired differences against ``grpo`` (same variant, rule and
optimizer, same seeds) and of each rule against the constant rate (same estimator), with paired
bootstrap intervals, and the grid check of every tuned rate. Numpy only; never reruns anything.

Per run (its held-out curve at the evaluation points):

- ``auc``: :func:`~oblr_theory.rlvr_stats.area_under_curve` of the sampled accuracy (the exact
  expected reward ``J`` on the held-out problems) over the run's steps; ``auc_greedy`` likewise;
- ``final``: the last point's sampled accuracy;
- ``steps_to_threshold``: first step with sampled accuracy ``>= J_0 + THRESHOLD_GAIN`` (``J_0``:
  the SFT checkpoint's, step 0); undefined when never reached;
- ``collapsed``: :func:`~oblr_theory.rlvr_stats.collapsed` of the sampled accuracy against ``J_0``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import rlvr_stats as rs

__all__ = ["MIN_PAIRS", "THRESHOLD_GAIN", "DIAGNOSTICS", "REFERENCE", "BRIDGE_LOGS", "load_rows", "load_tuning",
           "runs_of", "run_summary", "summarize", "markdown", "report", "bridge_comparison", "bridge_markdown"]

#: The estimator every other one is compared with (same variant, rule, optimizer and seeds).
REFERENCE = "grpo"
#: Fewest paired seeds for a win/lose/tie verdict: below it the interval is shown but a percentile
#: bootstrap over so few pairs has far below its nominal coverage (with 2 pairs it is their range).
MIN_PAIRS = 8
#: The threshold of ``steps_to_threshold``: this much above the checkpoint's sampled accuracy.
THRESHOLD_GAIN = 0.05
#: Logged metrics averaged per method (means over all windows of all evaluation runs).
DIAGNOSTICS = ("oblrpo/corr_S_length", "oblrpo/b_star_minus_mean_abs", "oblrpo/lr_factor", "oblrpo/snr_ema",
               "oblrpo/kappa", "oblrpo/noise_var_hat", "oblrpo/grad_sq_norm_hat", "entropy", "completions/mean_length")


#: The same quantity in the bridge loop's diagnostics and in TRL's logs (bridge name, TRL name):
#: the gradient norm before clipping, the mean reward, the mean completion length.
BRIDGE_LOGS = (("grad_norm", "grad_norm"), ("reward_mean", "reward"), ("length_mean", "completions/mean_length"))


def load_rows(out: str) -> list[dict]:
    """The rows of ``OUT/rows.jsonl`` (or of ``OUT/rows.jsonl.gz``, as saved runs are committed)."""
    import gzip

    path = os.path.join(out, "rows.jsonl")
    if os.path.exists(path):
        fh = open(path)
    elif os.path.exists(path + ".gz"):
        fh = gzip.open(path + ".gz", "rt")
    else:
        raise FileNotFoundError(f"{path} is missing: run `experiments/rlvr_study.py run --out {out}` first")
    with fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_tuning(out: str) -> list[dict]:
    d = os.path.join(out, "tuning")
    recs = []
    for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if f.endswith(".json"):
            with open(os.path.join(d, f)) as fh:
                recs.append(json.load(fh))
    return recs


def runs_of(rows: list[dict], phase: str | tuple = "eval") -> dict:
    """``{run key: {meta..., "steps", "acc_sampled", "acc_greedy", "logs", "wall_s"}}`` of the
    finished runs of ``phase`` (one or a tuple), points in step order."""
    phases = (phase,) if isinstance(phase, str) else tuple(phase)
    out: dict = {}
    for r in rows:
        if r.get("phase") not in phases or r.get("status") != "done":
            continue
        run = out.setdefault(r["key"], {k: r[k] for k in ("method", "variant", "estimator", "rule", "optim",
                                                           "lr", "seed")} | {"pts": []})
        run["pts"].append((r["step"], r["acc_sampled"], r["acc_greedy"], r.get("train_log") or {}, r["wall_s"]))
    for run in out.values():
        pts = sorted(run.pop("pts"), key=lambda p: p[0])
        run["steps"] = [p[0] for p in pts]
        run["acc_sampled"] = [p[1] for p in pts]
        run["acc_greedy"] = [p[2] for p in pts]
        run["logs"] = [p[3] for p in pts]
        run["wall_s"] = [p[4] for p in pts]
    return out


def run_summary(run: dict) -> dict:
    s, v, g = run["steps"], run["acc_sampled"], run["acc_greedy"]
    j0 = v[0]
    return {"auc": rs.area_under_curve(s, v), "auc_greedy": rs.area_under_curve(s, g), "final": v[-1],
            "final_greedy": g[-1], "initial": j0, "wall_s": run["wall_s"][-1],
            "steps_to_threshold": rs.steps_to_threshold(s, v, j0 + THRESHOLD_GAIN),
            "collapsed": rs.collapsed(v, j0)}


def _mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def _paired(a: dict, b: dict, metric: str, n_boot: int, seed: int) -> dict | None:
    """Paired bootstrap of ``metric`` between two methods' runs ``{seed: summary}`` on their
    common seeds; None with fewer than 2 common seeds."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    x, y = [a[s][metric] for s in common], [b[s][metric] for s in common]
    ci = rs.paired_bootstrap(x, y, n_boot=n_boot, seed=seed)
    t = rs.paired_t(x, y)
    words = {"x > y": "wins", "x < y": "loses", "tie": "tie"}
    return {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n, "level": ci.level,
            "verdict": words[ci.verdict] if ci.n >= MIN_PAIRS else f"no verdict (n < {MIN_PAIRS})",
            "t_low": t.low, "t_high": t.high,
            "t_verdict": words[t.verdict] if t.n >= MIN_PAIRS else f"no verdict (n < {MIN_PAIRS})"}


def summarize(rows: list[dict], tuning: list[dict], n_boot: int = 10000, seed: int = 0) -> dict:
    """Per-method summaries, paired comparisons and the grid check (module docstring)."""
    runs = runs_of(rows)
    by_method: dict = {}
    for run in runs.values():
        by_method.setdefault(run["method"], {"meta": run, "seeds": {}})["seeds"][run["seed"]] = \
            run_summary(run) | {"logs": run["logs"]}
    tuned = {t["method"]: t for t in tuning}
    methods = []
    for name, m in sorted(by_method.items()):
        meta, seeds = m["meta"], m["seeds"]
        summ = list(seeds.values())
        reached = [x["steps_to_threshold"] for x in summ if x["steps_to_threshold"] is not None]
        diag = {}
        for k in DIAGNOSTICS:
            vals = [lg[k] for x in summ for lg in x["logs"] if k in lg]
            diag[k] = float(np.mean(vals)) if vals else None
        t = tuned.get(name, {})
        methods.append({
            "method": name, **{k: meta[k] for k in ("variant", "estimator", "rule", "optim", "lr")},
            "grid_position": t.get("position"), "grid": t.get("grid"), "n_seeds": len(summ),
            "seeds": sorted(seeds),
            "auc": _mean_se([x["auc"] for x in summ]), "auc_greedy": _mean_se([x["auc_greedy"] for x in summ]),
            "final": _mean_se([x["final"] for x in summ]), "final_greedy": _mean_se([x["final_greedy"] for x in summ]),
            "initial": float(np.mean([x["initial"] for x in summ])),
            "reached": len(reached), "median_steps_to_threshold": float(np.median(reached)) if reached else None,
            "collapsed": int(sum(x["collapsed"] for x in summ)), "wall_s": _mean_se([x["wall_s"] for x in summ]),
            "diagnostics": diag})
    paired = []
    for name, m in sorted(by_method.items()):
        meta = m["meta"]
        partners = []
        if meta["estimator"] != REFERENCE:
            partners.append(("vs_grpo", f"{meta['variant']}/{REFERENCE}/{meta['rule']}/{meta['optim']}"))
        if meta["rule"] != "constant":
            partners.append(("vs_constant", f"{meta['variant']}/{meta['estimator']}/constant/{meta['optim']}"))
        for kind, other in partners:
            if other not in by_method:
                continue
            entry = {"method": name, "against": other, "kind": kind}
            for metric in ("auc", "final", "auc_greedy"):
                entry[metric] = _paired(m["seeds"], by_method[other]["seeds"], metric, n_boot, seed)
            paired.append(entry)
    same_rate = _same_rate(rows, by_method, n_boot, seed)
    collapse_by_ratio = _collapse_by_rate_ratio(rows, tuning)
    grid = [{"method": t["method"], "best_lr": t.get("best_lr"), "grid": t.get("grid"),
             "position": t.get("position"), "extensions": t.get("extensions"), "status": t.get("status"),
             "reason": t.get("reason")} for t in tuning]
    skipped = sorted({r["method"]: r.get("reason") for r in rows if r.get("status") == "skipped"}.items())
    return {"methods": methods, "paired": paired, "same_rate": same_rate, "collapse_by_rate_ratio": collapse_by_ratio,
            "grid": grid, "skipped": [list(s) for s in skipped],
            "edge_tuned": [g["method"] for g in grid if g["status"] == "done" and g["position"] != "interior"],
            "n_boot": n_boot, "bootstrap_seed": seed, "threshold_gain": THRESHOLD_GAIN}


def _collapse_by_rate_ratio(rows: list[dict], tuning: list[dict]) -> list[dict]:
    """Collapsed runs (tuning and evaluation) by their rate's ratio to their method's tuned rate:
    ``[{"ratio", "collapsed", "runs"}]``, increasing ratio."""
    best = {t["method"]: t["best_lr"] for t in tuning if t.get("status") == "done"}
    counts: dict = {}
    for run in runs_of(rows, ("tune", "eval")).values():
        if run["method"] in best:
            c = counts.setdefault(round(run["lr"] / best[run["method"]], 6), [0, 0])
            c[0] += rs.collapsed(run["acc_sampled"], run["acc_sampled"][0])
            c[1] += 1
    return [{"ratio": k, "collapsed": v[0], "runs": v[1]} for k, v in sorted(counts.items())]


def _same_rate(rows: list[dict], by_method: dict, n_boot: int, seed: int) -> list[dict]:
    """Each method against ``grpo`` run at the method's own tuned rate (any ``grpo`` runs at that
    rate on the evaluation seeds: phase ``eval`` or ``fixed``), to tell the estimator's effect from
    the rate's."""
    ref: dict = {}
    for run in runs_of(rows, ("eval", "fixed")).values():
        if run["estimator"] == REFERENCE:
            ref.setdefault((run["variant"], run["rule"], run["optim"], run["lr"]), {})[run["seed"]] = run_summary(run)
    out = []
    for name, m in sorted(by_method.items()):
        meta = m["meta"]
        other = ref.get((meta["variant"], meta["rule"], meta["optim"], meta["lr"]))
        if meta["estimator"] == REFERENCE or not other:
            continue
        entry = {"method": name, "against": f"{meta['variant']}/{REFERENCE}/{meta['rule']}/{meta['optim']} "
                                            f"at lr {meta['lr']:g}", "kind": "vs_grpo_same_rate"}
        for metric in ("auc", "final", "auc_greedy"):
            entry[metric] = _paired(m["seeds"], other, metric, n_boot, seed)
        out.append(entry)
    return out


def _fmt(ms) -> str:
    return f"{ms[0]:.3f} ± {ms[1]:.3f}" if np.isfinite(ms[1]) else f"{ms[0]:.3f}"


def _ci(c) -> str:
    if c is None:
        return "n/a (< 2 common seeds)"
    return (f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] {c['verdict']}; "
            f"t [{c['t_low']:+.3f}, {c['t_high']:+.3f}] {c['t_verdict']}")


def markdown(s: dict) -> str:
    """The report's tables as Markdown."""
    lines = ["| method | rate (grid position) | seeds | AUC sampled (± se) | final sampled | AUC greedy | "
             f"reached J0+{THRESHOLD_GAIN} (median step) | collapsed | training wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in s["methods"]:
        lines.append(f"| {m['method']} | {m['lr']:g} ({m['grid_position']}) | {m['n_seeds']} | {_fmt(m['auc'])} | "
                     f"{_fmt(m['final'])} | {_fmt(m['auc_greedy'])} | {m['reached']}/{m['n_seeds']} "
                     f"({m['median_steps_to_threshold']}) | {m['collapsed']}/{m['n_seeds']} | {m['wall_s'][0]:.1f} |")
    lines += ["", f"Paired differences (method − other, same seeds; {s['n_boot']} paired bootstrap resamples, seed "
              f"{s['bootstrap_seed']}; 95% percentile intervals; 'wins'/'loses' = interval excludes 0; then the 95% "
              "Student-t interval of the same pairs, wider at small n):", "",
              "| method | against | Δ AUC sampled | Δ final sampled | Δ AUC greedy |", "|---|---|---|---|---|"]
    for p in s["paired"] + s["same_rate"]:
        cells = " | ".join(_ci(p[k]) for k in ("auc", "final", "auc_greedy"))
        lines.append(f"| {p['method']} | {p['against']} | {cells} |")
    lines += ["", "Diagnostics (means over the logged steps of the evaluation runs):", "",
              "| method | " + " | ".join(DIAGNOSTICS) + " |", "|---|" + "---|" * len(DIAGNOSTICS)]
    for m in s["methods"]:
        vals = [m["diagnostics"][k] for k in DIAGNOSTICS]
        lines.append(f"| {m['method']} | " + " | ".join("—" if v is None else f"{v:.3g}" for v in vals) + " |")
    lines += ["", "Collapsed runs (tuning and evaluation) by rate / the method's tuned rate:", "",
              "| rate ratio | collapsed / runs |", "|---|---|"]
    lines += [f"| {c['ratio']:g} | {c['collapsed']}/{c['runs']} |" for c in s["collapse_by_rate_ratio"]]
    lines += ["", "Tuned rates against their grids:", ""]
    for g in s["grid"]:
        if g["status"] == "skipped":
            lines.append(f"- {g['method']}: skipped ({g['reason']})")
        else:
            flag = "" if g["position"] == "interior" else "  **EDGE: not interior, the tuning is inconclusive**"
            lines.append(f"- {g['method']}: {g['best_lr']:g} in {[float(f'{r:.3g}') for r in g['grid']]} "
                         f"({g['position']}, {g['extensions']} extensions){flag}")
    return "\n".join(lines) + "\n"


def report(out: str, n_boot: int = 10000, seed: int = 0) -> str:
    """Summarise ``out``; writes ``OUT/report.json`` and ``OUT/report.md``; returns the Markdown."""
    s = summarize(load_rows(out), load_tuning(out), n_boot=n_boot, seed=seed)
    with open(os.path.join(out, "report.json"), "w") as fh:
        json.dump(s, fh, indent=1)
    md = markdown(s)
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write(md)
    return md


# ------------------------------------------------------------ the bridge loop against the study
def _curve_tests(runs_x: list, runs_y: list, key: str, alpha: float, power: float) -> dict:
    """:func:`~oblr_theory.rlvr_stats.compare_curves` of ``key`` (``acc_sampled`` / ``acc_greedy``)
    at every evaluation step and for its AUC, as a JSON-ready dict (x − y per label)."""
    steps = runs_x[0]["steps"]
    if any(r["steps"] != steps for r in runs_x + runs_y):
        raise ValueError(f"the runs are not evaluated at the same steps (first: {steps})")
    lab = lambda r: {**{str(s): v for s, v in zip(r["steps"], r[key])},  # noqa: E731
                     "auc": rs.area_under_curve(r["steps"], r[key])}
    x, y = [lab(r) for r in runs_x], [lab(r) for r in runs_y]
    cmp = rs.compare_curves({k: [d[k] for d in x] for k in x[0]}, {k: [d[k] for d in y] for k in y[0]},
                            alpha=alpha, power=power)
    rows = []
    for k in x[0]:
        mx, my = _mean_se([d[k] for d in x]), _mean_se([d[k] for d in y])
        row = {"label": k, "x": mx, "y": my}
        if k in cmp.tests:
            t = cmp.tests[k]
            row |= {"diff": t.mean, "low": t.low, "high": t.high, "df": t.df, "level": t.level,
                    "mde": cmp.mde[k], "covers_zero": t.covers_zero}
        else:
            row |= {"diff": mx[0] - my[0], "constant": True, "equal": cmp.constant[k][0] == cmp.constant[k][1]}
        rows.append(row)
    few = min(len(runs_x), len(runs_y)) < MIN_PAIRS
    return {"rows": rows, "family": cmp.family, "alpha": alpha, "power": power,
            "verdict": f"no verdict (n < {MIN_PAIRS})" if few else cmp.verdict}


def bridge_comparison(study_rows: list[dict], bridge_rows: list[dict], method: str, alpha: float = 0.05,
                      power: float = 0.8) -> dict:
    """The bridge loop's runs of ``method`` (phase ``bridge``, grouped by rate) against the study's
    evaluation runs of ``method`` (phase ``eval``, TRL): independent random streams, so unpaired
    Welch intervals per evaluation step and for the AUC, Bonferroni over the steps where the runs
    vary and the AUC (:func:`~oblr_theory.rlvr_stats.compare_curves`), for the sampled accuracy
    (the verdict) and the greedy accuracy (secondary). A bridge rate other than the study's is a
    ``control``: a setting the test must call different. Also the means of the quantities both
    loops log (:data:`BRIDGE_LOGS`) over all logged windows of all runs. With fewer than
    :data:`MIN_PAIRS` runs on either side the intervals are shown without a verdict."""
    study = [r for r in runs_of(study_rows, "eval").values() if r["method"] == method]
    bridge = [r for r in runs_of(bridge_rows, "bridge").values() if r["method"] == method]
    if len(study) < 2 or len(bridge) < 2:
        raise ValueError(f"{method}: need >= 2 runs in each, got {len(study)} study (TRL) and {len(bridge)} bridge runs")
    rates = sorted({r["lr"] for r in study})
    if len(rates) != 1:
        raise ValueError(f"{method}: the study's evaluation runs use several rates {rates}")
    groups = []
    for lr in sorted({r["lr"] for r in bridge}):
        runs = sorted((r for r in bridge if r["lr"] == lr), key=lambda r: r["seed"])
        logs = {}
        for b_key, t_key in BRIDGE_LOGS:
            vals = [[lg[k] for r in rr for lg in r["logs"] if k in lg] for rr, k in ((runs, b_key), (study, t_key))]
            logs[b_key] = [float(np.mean(v)) if v else None for v in vals]
        groups.append({"lr": lr, "role": "reproduction" if np.isclose(lr, rates[0], rtol=1e-12) else "control",
                       "seeds": [r["seed"] for r in runs],
                       "sampled": _curve_tests(runs, study, "acc_sampled", alpha, power),
                       "greedy": _curve_tests(runs, study, "acc_greedy", alpha, power), "logs": logs})
    return {"method": method, "study_lr": rates[0], "study_seeds": sorted(r["seed"] for r in study),
            "groups": groups}


def bridge_markdown(c: dict) -> str:
    """:func:`bridge_comparison` as Markdown tables (bridge − TRL)."""
    lines = [f"{c['method']}: the bridge's loop (x) against OBLRPOTrainer (y, the study's evaluation runs at "
             f"lr {c['study_lr']:g}, seeds {c['study_seeds']}). Means ± SE over runs; differences x − y with Welch "
             "intervals at the Bonferroni level; MDE: the difference that test detects with the stated power.", ""]
    for g in c["groups"]:
        for what in ("sampled", "greedy"):
            t = g[what]
            lines += [f"**bridge lr {g['lr']:g} ({g['role']}), {what} accuracy**: {len(g['seeds'])} bridge runs; "
                      f"family of {t['family']} tests at level {1 - t['alpha'] / max(t['family'], 1):.4f} "
                      f"(family-wise {1 - t['alpha']:.2f}), power {t['power']:.2f}: **{t['verdict']}**", "",
                      "| point | bridge | TRL | bridge − TRL [interval] | MDE |", "|---|---|---|---|---|"]
            for r in t["rows"]:
                if r.get("constant"):
                    cell = "identical (no spread: the same checkpoint)" if r["equal"] else "DIFFERENT constants"
                    mde = "—"
                else:
                    cell = f"{r['diff']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]" + ("" if r["covers_zero"] else " **≠ 0**")
                    mde = f"{r['mde']:.4f}"
                lines.append(f"| {r['label']} | {_fmt4(r['x'])} | {_fmt4(r['y'])} | {cell} | {mde} |")
            lines.append("")
        lines += ["Logged means (bridge, TRL): " + "; ".join(
            f"{k} {v[0]:.4g}, {v[1]:.4g}" if None not in v else f"{k} n/a" for k, v in g["logs"].items()), ""]
    return "\n".join(lines)


def _fmt4(ms) -> str:
    return f"{ms[0]:.4f} ± {ms[1]:.4f}"
