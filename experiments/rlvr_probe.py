"""Theory along training in the RLVR study: T2's plug-in variance, T7, T5's SNR and T4's predicted
gain against what the study's steps actually do, at snapshots of one study run.

    python experiments/rlvr_probe.py run --out results/rlvr_probe                 # grpo's run, seed 0
    python experiments/rlvr_probe.py run --out results/rlvr_probe --method base/optimal_loo/constant/sgd
    python experiments/rlvr_probe.py run --quick --out results/rlvr_probe_quick   # smoke, seconds
    python experiments/rlvr_probe.py report --out results/rlvr_probe

A *trajectory* is one run of the study (``experiments/rlvr_study.py``): a method, its tuned rate (read
from the study's tuning record) and one evaluation seed, rerun through ``OBLRPOTrainer`` from the
study's SFT checkpoint, keeping ``θ`` at the chosen steps (and checked against the study's saved
curve for that run). At each snapshot a *probe* (``oblr_theory/integrations/rlvr_probe.py``) draws
``K`` batches shaped like a training step, and measures every study estimator on the same batches
(the snapshot in float64, exact ``J`` and ``∇J`` over the training prompts). Every estimator takes
the step the trajectory's method takes (rate, TRL's loss scaling, clipping).

Resumable: snapshots (``OUT/snapshots/<trajectory>/step_<t>.pt``) and probes
(``OUT/probes/<trajectory>_K<batches>_step<t>.npz`` with the per-batch record, ``.json`` with statistics,
jackknife errors and claims) are written atomically and never recomputed. ``report`` rebuilds
``OUT/report.md`` / ``report.json`` (and each probe's statistics in its ``.json``) from the saved
probe records alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import rlvr_study as study  # noqa: E402

from oblr_theory import rlvr_stats as rs  # noqa: E402
from oblr_theory.cliutil import int_range, probability  # noqa: E402

#: The estimators probed: every one the study harness knows (its seven, and reinforce: a T2 closed form).
PROBED = {lab: (f["estimator"], "logit" if f["sq_norms_source"] == "logit" else "exact", None)
          for lab, f in study.ESTIMATORS.items()}
CLOSED_FORMS = ("reinforce", "rloo", "dr_grpo")
REFERENCE = "grpo"
#: The saved study reports whose AUC differences the probe report quotes (when present).
DEFAULT_STUDY_REPORTS = ("docs/study_runs/full/report.json", "docs/study_runs/reinforce/report.json")


@dataclasses.dataclass(frozen=True)
class ProbePlan:
    method: str = "base/grpo/constant/sgd"
    seed: int = 0
    steps: tuple = (0, 20, 40, 60)
    batches: int = 64
    alpha: float = 0.05
    quick: bool = False


def parse_method(text: str) -> dict:
    """The study's method parser, plus what the probe needs: the ``base`` variant (a uniform finite
    training law, so that ``J`` is exact) and SGD at a constant rate (T4's step ``θ + η ĝ``)."""
    m = study.parse_method(text)
    if m["variant"] != "base":
        raise SystemExit(f"--method {text!r}: the probe needs a uniform finite training law for exact J; "
                         "only the 'base' variant has one ('hard' draws operands by digit count)")
    if m["optim"] != "sgd" or m["rule"] != "constant":
        raise SystemExit(f"--method {text!r}: T4's step is θ + η ĝ; the probe models SGD at a constant rate only "
                         "(rule=constant, optim=sgd)")
    return m


def trajectory_key(plan: ProbePlan, lr: float, sft_key: str) -> str:
    return f"{plan.method.replace('/', '__')}__seed{plan.seed}__{rs.config_hash([plan.method, plan.seed, lr, sft_key])[:8]}"


def snapshots(st, m: dict, lr: float, plan: ProbePlan, out: str) -> tuple[str, dict]:
    """Run the trajectory once and keep ``θ`` at ``plan.steps`` (or reuse the saved snapshots)."""
    import torch

    from oblr_theory.integrations.rlvr import rl_run

    sft = st.sft_record(m["variant"])
    key = trajectory_key(plan, lr, sft["key"])
    sdir = os.path.join(out, "snapshots", key)
    traj_path = os.path.join(out, f"trajectory_{key}.json")
    want = [os.path.join(sdir, f"step_{t}.pt") for t in plan.steps]
    if not all(map(os.path.exists, want)) or not os.path.exists(traj_path):
        os.makedirs(sdir, exist_ok=True)

        def keep(step, model):
            if step in plan.steps:
                tmp = os.path.join(sdir, f".tmp_step_{step}.pt")
                torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, tmp)
                os.replace(tmp, os.path.join(sdir, f"step_{step}.pt"))

        cfg = st.run_config(m, lr, plan.seed)
        res = rl_run(sft["path"], cfg, st.plan.n_eval, st.plan.eval_seed, on_eval=keep)
        missing = [t for t, p in zip(plan.steps, want) if not os.path.exists(p)]
        if missing:
            raise SystemExit(f"steps {missing} are not evaluation points of the run (every {cfg.eval_every} "
                             f"steps up to {cfg.steps}); choose --steps among them")
        study.write_json_atomic(traj_path, {"method": plan.method, "seed": plan.seed, "lr": lr, "sft": sft["key"],
                                            "config": dataclasses.asdict(cfg), "points": res["points"]})
    with open(traj_path) as fh:
        return key, json.load(fh)


def compare_with_study(traj: dict, rows_dir: str | None) -> dict | None:
    """The rerun trajectory's held-out curve against the study's saved eval run (same method, rate
    and seed): the largest absolute difference in sampled accuracy (0 when the run reproduces)."""
    if rows_dir is None:
        return None
    from oblr_theory.rlvr_report import load_rows

    saved = {r["step"]: r["acc_sampled"] for r in load_rows(rows_dir)
             if r.get("method") == traj["method"] and r.get("seed") == traj["seed"] and r.get("phase") == "eval"
             and r.get("status") == "done" and abs(r["lr"] - traj["lr"]) <= 1e-12 * traj["lr"]}
    if not saved:
        return {"matched_points": 0}
    diffs = [abs(p["acc_sampled"] - saved[p["step"]]) for p in traj["points"] if p["step"] in saved]
    return {"matched_points": len(diffs), "max_abs_diff_acc_sampled": float(max(diffs))}


def probe_seed(plan: ProbePlan, step: int) -> int:
    """The probe's sampling seed: distinct for every (run seed, step, K), so probes with another
    ``--batches`` are independent replications, not extensions."""
    return int(np.random.SeedSequence([plan.seed, step, plan.batches]).generate_state(1)[0])


def probe_one(st, m: dict, lr: float, key: str, step: int, plan: ProbePlan, out: str) -> dict:
    """One probe (or the saved one): returns its JSON summary."""
    import torch

    from oblr_theory.bridge.models import make_float64_exact
    from oblr_theory.bridge.task import CharTokenizer
    from oblr_theory.integrations import rlvr_probe as P
    from oblr_theory.integrations.rlvr import TRL_MAX_GRAD_NORM, held_out, load_checkpoint, variant_task

    base = os.path.join(out, "probes", f"{key}_K{plan.batches}_step{step}")
    if os.path.exists(base + ".json"):
        with open(base + ".json") as fh:
            return json.load(fh)
    task = variant_task(m["variant"])
    ho = set(held_out(task, st.plan.n_eval, st.plan.eval_seed))
    pool = [p for p in task.all_problems() if p not in ho]  # the training law: uniform on these
    model = load_checkpoint(st.sft_record(m["variant"])["path"])
    model.load_state_dict(torch.load(os.path.join(out, "snapshots", key, f"step_{step}.pt")))
    model = make_float64_exact(model.double())
    max_grad_norm = TRL_MAX_GRAD_NORM
    cfg = P.ProbeConfig(PROBED, batches=plan.batches, batch_size=st.plan.groups_per_step,
                        group_size=st.plan.num_generations, lr=lr, loss_type="dapo", max_grad_norm=max_grad_norm,
                        max_new_tokens=task.max_answer_chars + 1, seed=probe_seed(plan, step),
                        closed_forms=CLOSED_FORMS)
    rec = P.probe(model, CharTokenizer(), task, pool, cfg, progress=True)
    save_record(base + ".npz", rec)
    summary = summarise(rec, plan.alpha, f"{plan.method} seed {plan.seed} step {step}")
    summary.update(step=step, trajectory=key, lr=lr, probe_seed=probe_seed(plan, step), max_grad_norm=max_grad_norm, pool=len(pool),
                   git_rev=study.git_rev(), plan=dataclasses.asdict(plan))
    study.write_json_atomic(base + ".json", summary)
    return summary


def save_record(path: str, rec: dict) -> None:
    """The per-batch record as one ``.npz`` (atomic)."""
    arrays = {"meta": np.array(json.dumps({k: rec[k] for k in ("exact", "batch_size", "group_size", "batches")}))}
    for e, r in rec["estimators"].items():
        for k, v in r.items():
            arrays[f"{e}/{k}"] = v
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_", suffix=".npz")
    with os.fdopen(fd, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    os.replace(tmp, path)


def load_record(path: str) -> dict:
    with np.load(path) as z:
        rec = json.loads(str(z["meta"]))
        rec["estimators"] = {}
        for name in z.files:
            if name != "meta":
                e, k = name.split("/", 1)
                rec["estimators"].setdefault(e, {})[k] = z[name]
    return rec


def summarise(rec: dict, alpha: float, problem: str) -> dict:
    """Statistics with delete-one-batch jackknife errors, T4's split, and the claim rows."""
    from oblr_theory.bridge.validate_claims import jackknife
    from oblr_theory.integrations import rlvr_probe as P
    from oblr_theory.integrations.rlvr_probe_claims import claims

    names = {e: PROBED[e][0] for e in rec["estimators"]}
    full, se = jackknife(lambda keep: P.statistics(rec, names, keep, REFERENCE), rec["batches"])
    t4 = P.t4_split(rec)
    rows = claims(full, se, t4, [e for e in CLOSED_FORMS if e in rec["estimators"]], rec["batches"], alpha,
               problem, REFERENCE)
    return {"statistics": full, "se": se, "t4": t4, "claims": [dataclasses.asdict(r) for r in rows]}


def cmd_run(a) -> int:
    import torch

    torch.set_num_threads(a.threads)
    m = parse_method(a.method)
    splan = study.make_plan(a.quick, False)
    steps = a.steps or ([0, splan.steps] if a.quick else list(ProbePlan.steps))
    batches = a.batches or (4 if a.quick else ProbePlan.batches)
    plan = ProbePlan(method=a.method, seed=a.seed, steps=tuple(steps), batches=batches, alpha=a.alpha, quick=a.quick)
    if max(plan.steps) > splan.steps or any(t % splan.eval_every and t != splan.steps for t in plan.steps):
        raise SystemExit(f"--steps {list(plan.steps)}: each must be an evaluation point (multiples of "
                         f"{splan.eval_every} up to {splan.steps})")
    lr = a.lr if a.lr is not None else study.GRID_CENTER["sgd"] if a.quick else study.tuned_rate(a.tuning, m)
    st = study.Study(splan, a.study_out, progress=not a.no_progress)
    os.makedirs(os.path.join(a.out, "probes"), exist_ok=True)
    key, traj = snapshots(st, m, lr, plan, a.out)
    check = compare_with_study(traj, None if a.quick else a.rows)
    if check is not None:
        print(f"trajectory against the study's saved run: {check}", file=sys.stderr)
        study.write_json_atomic(os.path.join(a.out, f"trajectory_{key}_check.json"), check)
    for t in plan.steps:
        s = probe_one(st, m, lr, key, t, plan, a.out)
        tally = {k: sum(r["passed"] is v for r in s["claims"] if r["kind"] != "measurement")
                 for k, v in (("hold", True), ("fail", False), ("untested", None))}
        print(f"step {t}: claims {tally}", file=sys.stderr)
    print(report(a.out, a.study_report))
    return 0


# ---------------------------------------------------------------------------------- report
def _fmt(v, se=None) -> str:
    if v is None or not np.isfinite(v):
        return "undefined"
    return f"{v:.4g}" if se is None or not np.isfinite(se) else f"{v:.4g} ± {se:.2g}"


def _step_of(f: str) -> tuple:
    stem = f[:-len(".npz")]
    head, _, step = stem.rpartition("_step")
    return head, int(step)


def study_auc_deltas(paths, variant: str = "base", rule: str = "constant", optim: str = "sgd") -> dict:
    """The study's paired AUC differences against grpo (bootstrap mean and interval) per estimator,
    for the probed rule and optimizer, from its ``report.json`` files (the first that has an
    estimator wins); empty without any."""
    out: dict = {}
    for path in paths or ():
        if not os.path.exists(path):
            raise SystemExit(f"--study-report {path}: no such file")
        with open(path) as fh:
            paired = json.load(fh)["paired"]
        for p in paired:
            v, e, r, o = p["method"].split("/")
            if p["kind"] == "vs_grpo" and (v, r, o) == (variant, rule, optim) and e not in out:
                out[e] = p["auc"]
    return out


def along_training(js: list, auc: dict) -> list[str]:
    """The question of the probes: does an estimator's variance reduction (T2/T3) predict its speed-up?
    One row per estimator: V / V[grpo], merit / merit[grpo] (T5) and the realised one-step gain
    minus grpo's at every probed step, beside the study's AUC difference against grpo."""
    steps = sorted({j["step"] for j in js})
    by = {j["step"]: j for j in js}
    ests = [e for e in PROBED if e != REFERENCE and f"V_ratio/{e}" in js[0]["statistics"]]
    head = "| estimator | " + " | ".join(f"V/V[grpo] @{t}" for t in steps) + " | " + \
        " | ".join(f"merit/merit[grpo] @{t}" for t in steps) + " | " + \
        " | ".join(f"gain − grpo's @{t} (×1e-4)" for t in steps) + " | study ΔAUC vs grpo |"
    lines = [head, "|" + "---|" * (1 + 3 * len(steps) + 1)]
    for e in ests:
        cell = lambda k, t, f=1.0: _fmt(by[t]["statistics"][f"{k}/{e}"] * f, by[t]["se"][f"{k}/{e}"] * f)  # noqa: E731
        a = auc.get(e)
        study_cell = "—" if a is None else f"{a['mean']:+.4f} [{a['low']:+.4f}, {a['high']:+.4f}] {a['verdict']}"
        lines.append("| " + " | ".join([e] + [cell("V_ratio", t) for t in steps] + [cell("merit_ratio", t) for t in steps]
                                        + [cell("realised_minus_ref", t, 1e4) for t in steps] + [study_cell]) + " |")
    lines += ["", "| step | exact J | ||∇J||² | between-prompt share of rloo's V (plug-in) | grpo's SNR | "
              "optimal_loo's SNR | T5 factor (optimal_loo) | local L̂ (bound) | L_eff (model) | claims held / tested (untested) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for t in steps:
        st, ex = by[t]["statistics"], by[t]
        share = (ex["between_over_B"] / st["V_predicted/rloo"]) if st.get("V_predicted/rloo") else float("nan")
        cl = [r for r in ex["claims"] if r["kind"] != "measurement"]
        tested = [r for r in cl if r["passed"] is not None]
        lines.append(f"| {t} | {st['exact/J']:.4f} | {st['exact/grad_sq_norm']:.4g} | {share:.2f} | "
                     f"{_fmt(st['snr/grpo'], ex['se']['snr/grpo'])} | {_fmt(st['snr/optimal_loo'], ex['se']['snr/optimal_loo'])} | "
                     f"{_fmt(st['T5_fraction/optimal_loo'], ex['se']['T5_fraction/optimal_loo'])} | {ex['t4']['L_local']:.4g} | "
                     f"{ex['t4']['L_eff']:.4g} | "
                     f"{sum(r['passed'] is True for r in tested)} / {len(tested)} ({len(cl) - len(tested)}) |")
    return lines


def report(out: str, study_report: str | None = None) -> str:
    """``OUT/report.md`` and ``report.json`` from the saved probe records (statistics recomputed)."""
    pdir = os.path.join(out, "probes")
    recs = sorted((f for f in os.listdir(pdir) if f.endswith(".npz")), key=_step_of) if os.path.isdir(pdir) else []
    if not recs:
        raise SystemExit(f"no probe records under {pdir}: run `rlvr_probe.py run --out {out}` first")
    auc = study_auc_deltas(study_report)
    sections, js, groups = [], [], {}
    for f in recs:
        with open(os.path.join(pdir, f.replace(".npz", ".json"))) as fh:
            meta = json.load(fh)
        rec = load_record(os.path.join(pdir, f))
        s = summarise(rec, meta["plan"]["alpha"], f"{meta['plan']['method']} seed {meta['plan']['seed']} step {meta['step']}")
        if any(meta.get(k) != json.loads(json.dumps(v)) for k, v in s.items()):  # derived: rebuilt from the record
            study.write_json_atomic(os.path.join(pdir, f.replace(".npz", ".json")), {**meta, **s})
        full, se, t4 = s["statistics"], s["se"], s["t4"]
        entry = {"file": f, "step": meta["step"], "trajectory": meta["trajectory"], "batches": rec["batches"],
                 "between_over_B": rec["exact"]["between"] / rec["batch_size"], **s}
        js.append(entry)
        groups.setdefault(_step_of(f)[0], []).append(entry)
        claims = [r for r in s["claims"] if r["kind"] != "measurement"]
        held = sum(r["passed"] is True for r in claims)
        failed = [r["statement"] for r in claims if r["passed"] is False]
        untested = [r["statement"] for r in claims if r["passed"] is None]
        sections += [f"### {meta['trajectory']}, K = {rec['batches']}, step {meta['step']}", "",
                     f"B = {rec['batch_size']} prompts × G = {rec['group_size']}; "
                     f"exact J = {full['exact/J']:.4f}, ||∇J||² = {full['exact/grad_sq_norm']:.4g}; "
                     f"rate {meta['lr']:g}, clipping at {meta['max_grad_norm']:g}; local L̂ = {t4['L_local']:.4g}.",
                     f"Claims: {held} of {len(claims)} hold" + (f"; FAIL: {failed}" if failed else "") +
                     (f"; untested: {untested}" if untested else "") + ".", "",
                     "| estimator | V measured | V plug-in (T2) | V / V[grpo] | SNR | T5 factor | merit / merit[grpo] "
                     "| first-order gain | realised gain | realised − grpo's | T4 bound (L̂) |",
                     "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in rec["estimators"]:
            g = lambda k: (full.get(f"{k}/{e}", float("nan")), se.get(f"{k}/{e}", float("nan")))  # noqa: E731
            sections.append("| " + " | ".join([e, _fmt(*g("V_measured")), _fmt(*g("V_predicted")), _fmt(*g("V_ratio")),
                                                _fmt(*g("snr")), _fmt(*g("T5_fraction")), _fmt(*g("merit_ratio")),
                                                _fmt(*g("step/first_order")), _fmt(*g("step/realised")),
                                                _fmt(*g("realised_minus_ref")), _fmt(t4[e]["predicted"])]) + " |")
        sections.append("")
    lines = ["# Theory along training: probes of the RLVR study", ""]
    for name, entries in groups.items():
        lines += [f"## {name}: along training", ""] + along_training(entries, auc) + [""]
    text = "\n".join(lines + ["## Each probe", ""] + sections)
    study.write_json_atomic(os.path.join(out, "report.json"), js)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".report_")
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.replace(tmp, os.path.join(out, "report.md"))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) the probes of one trajectory")
    r.add_argument("--out", required=True)
    r.add_argument("--method", default=ProbePlan.method, help="VARIANT/ESTIMATOR/constant/sgd (base only)")
    r.add_argument("--seed", type=int, default=0, help="the study's evaluation seed of the trajectory")
    r.add_argument("--steps", type=int, nargs="+", default=None, help="default: 0 20 40 60 (quick: 0 and the last)")
    r.add_argument("--batches", type=int_range(4), default=None, help="K >= 4 batches per probe (default 64; quick: 4)")
    r.add_argument("--alpha", type=probability, default=0.05, help="family-wise false-failure rate per claim family")
    r.add_argument("--lr", type=float, default=None,
                   help="default: the study's tuned rate (--tuning); quick: the SGD grid's centre")
    r.add_argument("--tuning", default="docs/study_runs/full/tuning")
    r.add_argument("--rows", default="docs/study_runs/full", help="the study's saved rows, to check the trajectory")
    r.add_argument("--study-out", default="results/rlvr", help="where the study's SFT checkpoint is (or is made)")
    r.add_argument("--quick", action="store_true", help="smoke: the quick study's model and plan")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--no-progress", action="store_true")
    rp = sub.add_parser("report", help="tables from the saved probe records")
    rp.add_argument("--out", required=True)
    for p_ in (r, rp):
        p_.add_argument("--study-report", action="append", default=None,
                        help="the study's report.json, for its AUC differences against grpo (repeatable; "
                             "default: docs/study_runs/full and docs/study_runs/reinforce)")
    a = ap.parse_args(argv)
    if a.study_report is None:
        a.study_report = [p for p in DEFAULT_STUDY_REPORTS if os.path.exists(p)]
    if a.cmd == "run":
        return cmd_run(a)
    print(report(a.out, a.study_report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
