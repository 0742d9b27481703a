"""The RLVR study: does OBLR-PO train a (tiny) language model better than GRPO and its peers?

    python experiments/rlvr_study.py run --quick --out results/rlvr_quick      # CI, minutes
    python experiments/rlvr_study.py run --out results/rlvr --chunk 0/28        # one chunk of the full study
    python experiments/rlvr_study.py run --out results/rlvr --only estimator=grpo,optimal_loo --only rule=snr
    python experiments/rlvr_study.py run --gpu --out results/rlvr_gpu           # ~25M parameters, CUDA only
    python experiments/rlvr_study.py report --out results/rlvr                  # tables + paired bootstrap
    python experiments/rlvr_study.py bridge --out results/rlvr                  # one method through the bridge's loop
    python experiments/rlvr_study.py compare --bridge results/rlvr/bridge       # its curves against the study's

Protocol (docs/study.md): a tiny Qwen3 is supervised on the arithmetic task until held-out greedy
accuracy is inside a band (one safetensors checkpoint per variant, shared by every RL run), then
trained with RL through ``OBLRPOTrainer``. A *method* is (variant, estimator, rate rule, optimizer);
its rate is tuned on TUNING seeds over a geometric grid (score: area under the held-out sampled
accuracy curve), extended automatically while the best rate sits on an edge, and then evaluated on
separate EVALUATION seeds (the same seeds for every method: common random numbers).

Each run is one unit, saved atomically as ``OUT/units/<key>.json`` (``key`` = hash of its full
config); a finished unit is never rerun, so an interrupted study (Ctrl-C) resumes where it stopped.
``OUT/rows.jsonl`` holds the tidy rows (one per run and evaluation point, with the git revision and
the full config); ``OUT/tuning/*.json`` the tuning records.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from oblr_theory import rlvr_stats as rs  # noqa: E402

#: Estimator labels of the study -> OBLRPOConfig fields.
ESTIMATORS = {
    "grpo": dict(estimator="grpo", sq_norms_source="ghost"),
    "dr_grpo": dict(estimator="dr_grpo", sq_norms_source="ghost"),
    "rloo": dict(estimator="rloo", sq_norms_source="ghost"),
    "opo": dict(estimator="opo", sq_norms_source="ghost"),
    "optimal_loo": dict(estimator="optimal_loo", sq_norms_source="ghost"),
    "optimal_loo_logit": dict(estimator="optimal_loo", sq_norms_source="logit"),
    "optimal_loo_shrink": dict(estimator="optimal_loo_shrink", sq_norms_source="ghost"),
    # not in the study's plan; run on request (--estimators), e.g. to test a probe's prediction
    "reinforce": dict(estimator="reinforce", sq_norms_source="ghost"),
}
#: The study's estimators (the plan's default).
STUDY_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "opo", "optimal_loo", "optimal_loo_logit", "optimal_loo_shrink")
RULES = ("constant", "snr", "local")
OPTIMS = ("adamw_torch", "sgd")
#: Centre of each optimizer's first tuning grid.
GRID_CENTER = {"adamw_torch": 1.25e-4, "sgd": 0.1}
#: Training loops -> their subdirectory of OUT (units and rows): OBLRPOTrainer, the bridge's loop.
LOOPS = {"trl": (), "bridge": ("bridge",)}
#: The method the bridge loop reproduces by default, and where the full study's tuned rates are.
BRIDGE_METHOD = "base/optimal_loo/constant/sgd"
STUDY_ROWS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "study_runs", "full")


@dataclass(frozen=True)
class Plan:
    """Everything that defines a study (its hash keys every unit, with the run's own config)."""

    mode: str = "full"
    variants: tuple = ("base", "hard")
    estimators: tuple = STUDY_ESTIMATORS
    rules: tuple = RULES
    optims: tuple = OPTIMS
    tune_seeds: tuple = (1000, 1001)
    eval_seeds: tuple = tuple(range(8))
    steps: int = 60
    eval_every: int = 10
    num_generations: int = 8
    groups_per_step: int = 8
    grid_n: int = 4
    grid_factor: float = 2.0
    max_extend: int = 3
    snr_factor_min: float = 0.05
    model: str = "cpu"
    n_eval: int = 100
    eval_seed: int = 12345
    device: str = "cpu"
    sft_max_steps: int = 4000
    sft_lr: float = 1e-3

    def methods(self) -> list[dict]:
        return [dict(variant=v, estimator=e, rule=r, optim=o)
                for v in self.variants for o in self.optims for r in self.rules for e in self.estimators]


def make_plan(quick: bool, gpu: bool) -> Plan:
    if quick and gpu:
        raise SystemExit("--quick and --gpu are exclusive")
    if quick:
        return Plan(mode="quick", variants=("base",), estimators=("grpo", "optimal_loo"), rules=RULES,
                    optims=OPTIMS, tune_seeds=(1000,), eval_seeds=(0, 1), steps=4, eval_every=2,
                    groups_per_step=4, grid_n=2, max_extend=0, model="quick", n_eval=50, sft_lr=3e-3)
    if gpu:
        return Plan(mode="gpu", model="gpu", device="cuda", groups_per_step=16, steps=200, eval_every=20,
                    n_eval=200, sft_lr=3e-4)
    return Plan()


def method_name(m: dict) -> str:
    return f"{m['variant']}/{m['estimator']}/{m['rule']}/{m['optim']}"


def git_rev() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_json_atomic(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------- running
class Study:
    def __init__(self, plan: Plan, out: str, progress: bool = True):
        self.plan, self.out, self.progress = plan, out, progress
        self.rev = git_rev()
        self.sft: dict = {}

    def sft_record(self, variant: str) -> dict:
        from oblr_theory.integrations.rlvr import SFTConfig, sft_checkpoint

        if variant not in self.sft:
            p = self.plan
            cfg = SFTConfig(variant=variant, model=p.model, max_steps=p.sft_max_steps, lr=p.sft_lr,
                            n_eval=p.n_eval, eval_seed=p.eval_seed, device=p.device)
            rec = sft_checkpoint(os.path.join(self.out, "checkpoints"), cfg, progress=self.progress)
            print(f"SFT {variant}: held-out greedy accuracy {rec['acc_greedy']:.3f} (sampled "
                  f"{rec['acc_sampled']:.3f}) after {rec['steps']} steps, {rec['params']} parameters, "
                  f"{rec['path']}", file=sys.stderr)
            _check_restored_sft(self.out, rec)
            self.sft[variant] = rec
        return self.sft[variant]

    def run_config(self, m: dict, lr: float, seed: int):
        from oblr_theory.integrations.rlvr import RunConfig

        p = self.plan
        return RunConfig(variant=m["variant"], lr_rule=m["rule"], optim=m["optim"], lr=float(lr), seed=int(seed),
                         steps=p.steps, eval_every=p.eval_every, num_generations=p.num_generations,
                         groups_per_step=p.groups_per_step, snr_factor_min=p.snr_factor_min, device=p.device,
                         **ESTIMATORS[m["estimator"]])

    def unit(self, m: dict, lr: float, seed: int, phase: str, loop: str = "trl") -> dict:
        """Run (or reuse) one unit; returns its record. ``loop="trl"``: ``OBLRPOTrainer``
        (``rl_run``), units in ``OUT/units``; ``loop="bridge"``: the bridge's own loop
        (``bridge_run``, the same step), units in ``OUT/bridge/units``."""
        from oblr_theory.integrations.rlvr import TRL_MAX_GRAD_NORM, bridge_run, rl_run

        if loop not in LOOPS:
            raise ValueError(f"loop={loop!r} is not one of {LOOPS}")
        sft = self.sft_record(m["variant"])
        cfg = self.run_config(m, lr, seed)
        ident = {"run": asdict(cfg), "sft_key": sft["key"], "n_eval": self.plan.n_eval,
                 "eval_seed": self.plan.eval_seed}
        if loop == "bridge":
            ident.update(loop="bridge", max_grad_norm=TRL_MAX_GRAD_NORM)
        key = rs.config_hash(ident)
        path = os.path.join(self.out, *LOOPS[loop], "units", f"{key}.json")
        if os.path.exists(path):
            with open(path) as fh:
                rec = json.load(fh)
            if rec["status"] == "done":  # a skipped (refused) unit is asked again: the code may support it now
                return rec
        t = time.perf_counter()
        if loop == "bridge":
            res = bridge_run(sft["path"], cfg, self.plan.n_eval, self.plan.eval_seed)
        else:
            res = rl_run(sft["path"], cfg, self.plan.n_eval, self.plan.eval_seed)
        rec = {"key": key, "phase": phase, "method": method_name(m), **m, "lr": float(lr), "seed": int(seed),
               "git_rev": self.rev, "config": {**ident, "plan": asdict(self.plan)},
               "sft": {k: sft[k] for k in ("key", "acc_greedy", "acc_sampled", "steps", "params")},
               "elapsed_s": time.perf_counter() - t, **res}
        write_json_atomic(path, rec)
        return rec

    def tune(self, m: dict) -> dict:
        """Tune ``m``'s rate on the tuning seeds; extends the grid while the best rate is on an
        edge (at most ``max_extend`` times); the record says where the chosen rate sits."""
        p = self.plan
        grid = rs.geometric_grid(GRID_CENTER[m["optim"]], p.grid_factor, p.grid_n)
        runs: dict = {}
        extensions = 0
        while True:
            for lr in grid:
                for s in p.tune_seeds:
                    if (lr, s) not in runs:
                        rec = self.unit(m, lr, s, "tune")
                        if rec["status"] == "skipped":
                            return {"method": method_name(m), "status": "skipped", "reason": rec["reason"]}
                        runs[(lr, s)] = rec
            scores = {lr: float(np.mean([score(runs[(lr, s)]) for s in p.tune_seeds])) for lr in grid}
            best, pos = rs.pick_rate(scores)
            if pos == "interior" or extensions >= p.max_extend:
                break
            grid = rs.extend_grid(grid, pos, p.grid_factor)
            extensions += 1
        rec = {"method": method_name(m), **m, "status": "done", "grid": sorted(grid),
               "scores": {repr(k): v for k, v in sorted(scores.items())}, "best_lr": best, "position": pos,
               "extensions": extensions, "tune_seeds": list(p.tune_seeds)}
        write_json_atomic(os.path.join(self.out, "tuning", method_name(m).replace("/", "__") + ".json"), rec)
        return rec

    def method(self, m: dict) -> None:
        t = self.tune(m)
        if t["status"] == "skipped":
            print(f"{method_name(m)}: skipped ({t['reason']})", file=sys.stderr)
            write_json_atomic(os.path.join(self.out, "tuning", method_name(m).replace("/", "__") + ".json"),
                              {**t, **m})
            return
        if t["position"] != "interior":
            print(f"{method_name(m)}: tuned rate {t['best_lr']:g} is on the {t['position']} of its grid "
                  f"{t['grid']} (flagged in the report)", file=sys.stderr)
        for s in self.plan.eval_seeds:
            self.unit(m, t["best_lr"], s, "eval")


def score(rec: dict) -> float:
    """Tuning score of a run: area under its held-out sampled-accuracy curve."""
    pts = rec["points"]
    return rs.area_under_curve([q["step"] for q in pts], [q["acc_sampled"] for q in pts])


def select(methods: list[dict], only: list[str], chunk: str | None) -> list[dict]:
    """``--only key=v1,v2`` filters (keys: variant, estimator, rule, optim); ``--chunk i/n`` keeps
    the methods ``j`` with ``j % n == i`` (a fixed round-robin split of the filtered list)."""
    for item in only:
        k, _, v = item.partition("=")
        if k not in ("variant", "estimator", "rule", "optim") or not v:
            raise SystemExit(f"--only {item!r}: expected KEY=V1,V2 with KEY in variant/estimator/rule/optim")
        methods = [m for m in methods if m[k] in v.split(",")]
    if chunk:
        try:
            i, n = map(int, chunk.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise SystemExit(f"--chunk {chunk!r}: expected I/N with 0 <= I < N") from None
        methods = [m for j, m in enumerate(methods) if j % n == i]
    return methods


def write_rows(out: str) -> int:
    """``OUT/rows.jsonl`` rebuilt from the unit files (atomically): one row per run and evaluation
    point; a skipped unit is one row with ``status="skipped"`` and its reason."""
    udir = os.path.join(out, "units")
    rows = []
    for f in sorted(os.listdir(udir)) if os.path.isdir(udir) else []:
        if not f.endswith(".json"):
            continue
        with open(os.path.join(udir, f)) as fh:
            rec = json.load(fh)
        base = {k: rec[k] for k in ("key", "phase", "method", "variant", "estimator", "rule", "optim", "lr",
                                    "seed", "status", "git_rev", "config", "sft")}
        if rec["status"] != "done":
            rows.append({**base, "reason": rec.get("reason")})
            continue
        for q in rec["points"]:
            rows.append({**base, "step": q["step"], "wall_s": q["wall_s"], "acc_greedy": q["acc_greedy"],
                         "acc_sampled": q["acc_sampled"], "train_log": q["train_log"]})
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".rows_")
    with os.fdopen(fd, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    os.replace(tmp, os.path.join(out, "rows.jsonl"))
    return len(rows)


def restore_units(src: str, out: str) -> int:
    """Unit files for ``out`` rebuilt from the saved rows of ``src`` (``rows.jsonl`` or its
    ``.gz``): the inverse of :func:`write_rows` for finished runs, so that ``run --out OUT``
    reuses them instead of running them again (a unit's key is the hash of its full config, SFT
    checkpoint key included). An existing unit file is kept. The SFT figures the restored runs
    saw are written to ``OUT/restored_sft.json``: ``run`` refuses to mix them with runs from an
    SFT checkpoint that came out differently here. Returns the number of units written."""
    from oblr_theory.rlvr_report import load_rows

    runs: dict = {}
    for r in load_rows(src):
        if r.get("status") != "done":
            continue  # skipped cells are asked again by `run` anyway
        rec = runs.setdefault(r["key"], {**{k: r[k] for k in ("key", "phase", "method", "variant", "estimator",
                                                              "rule", "optim", "lr", "seed", "status", "git_rev",
                                                              "config", "sft")},
                                         "restored_from": os.path.abspath(src), "points": []})
        rec["points"].append({k: r[k] for k in ("step", "wall_s", "acc_greedy", "acc_sampled", "train_log")})
    os.makedirs(os.path.join(out, "units"), exist_ok=True)
    written, sfts = 0, {}
    for key, rec in runs.items():
        rec["points"].sort(key=lambda q: q["step"])
        sfts[rec["sft"]["key"]] = rec["sft"]
        path = os.path.join(out, "units", f"{key}.json")
        if not os.path.exists(path):
            write_json_atomic(path, rec)
            written += 1
    write_json_atomic(os.path.join(out, "restored_sft.json"), sfts)
    return written


def _check_restored_sft(out: str, rec: dict) -> None:
    """Refuse an SFT checkpoint whose held-out figures differ from those the restored runs saw."""
    path = os.path.join(out, "restored_sft.json")
    if not os.path.exists(path):
        return
    with open(path) as fh:
        seen = json.load(fh).get(rec["key"])
    if seen is not None and any(seen[k] != rec[k] for k in ("acc_greedy", "acc_sampled", "steps")):
        raise SystemExit(f"the SFT checkpoint trained here ({rec['key']}: greedy {rec['acc_greedy']}, sampled "
                         f"{rec['acc_sampled']}, {rec['steps']} steps) differs from the one the restored runs "
                         f"used ({seen}); do not mix them: run into a fresh --out")


def cmd_run(a) -> int:
    plan = make_plan(a.quick, a.gpu)
    if plan.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA GPU and none is visible; run it on a GPU machine "
                             f"(the plan it would run: model {plan.model}, {plan.steps} steps)")
    over = {k: v for k, v in dict(steps=a.steps, eval_every=a.eval_every).items() if v is not None}
    if a.estimators is not None:
        names = tuple(a.estimators.split(","))
        bad = [e for e in names if e not in ESTIMATORS]
        if bad:
            raise SystemExit(f"--estimators: {bad} not among {list(ESTIMATORS)}")
        over["estimators"] = names
    if a.eval_seeds is not None:
        over["eval_seeds"] = tuple(range(a.eval_seeds))
    if a.tune_seeds is not None:
        over["tune_seeds"] = tuple(range(1000, 1000 + a.tune_seeds))
    plan = replace(plan, **over)
    if len(plan.eval_seeds) < 8 and plan.mode != "quick":
        print(f"warning: {len(plan.eval_seeds)} evaluation seeds (< 8): a slice, not the study",
              file=sys.stderr)
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    write_json_atomic(os.path.join(a.out, "plan.json"), asdict(plan))
    methods = select(plan.methods(), a.only, a.chunk)
    study = Study(plan, a.out, progress=not a.no_progress)
    try:
        for m in tqdm(methods, desc="methods", disable=a.no_progress):
            if a.fixed_lr is None:
                study.method(m)
            else:  # a same-rate check: no tuning, the evaluation seeds at the given rate
                for s in plan.eval_seeds:
                    study.unit(m, a.fixed_lr, s, "fixed")
    except KeyboardInterrupt:
        print("interrupted: finished units are kept; rerun the same command to resume", file=sys.stderr)
        write_rows(a.out)
        return 130
    n = write_rows(a.out)
    print(json.dumps({"out": a.out, "methods": len(methods), "rows": n}))
    return 0


def parse_method(text: str) -> dict:
    """``"variant/estimator/rule/optim"`` -> the method dict; refuses unknown parts by name."""
    parts = text.split("/")
    if len(parts) != 4:
        raise SystemExit(f"--method {text!r}: expected VARIANT/ESTIMATOR/RULE/OPTIM, e.g. {BRIDGE_METHOD}")
    m = dict(zip(("variant", "estimator", "rule", "optim"), parts))
    for k, allowed in (("variant", Plan().variants), ("estimator", tuple(ESTIMATORS)), ("rule", RULES),
                       ("optim", OPTIMS)):
        if m[k] not in allowed:
            raise SystemExit(f"--method {text!r}: {k} {m[k]!r} is not one of {allowed}")
    return m


def tuned_rate(tuning_dir: str, m: dict) -> float:
    """The tuned rate of ``m`` in ``tuning_dir`` (``<method>.json``, as ``run`` writes it); refuses
    a missing or skipped record; warns when the rate sits on an edge of its grid."""
    path = os.path.join(tuning_dir, method_name(m).replace("/", "__") + ".json")
    if not os.path.exists(path):
        raise SystemExit(f"no tuning record {path}: pass --lr, or --tuning DIR holding {method_name(m)}'s record")
    with open(path) as fh:
        rec = json.load(fh)
    if rec.get("status") != "done":
        raise SystemExit(f"{path}: {method_name(m)} was not tuned ({rec.get('reason')}); pass --lr")
    if rec["position"] != "interior":
        print(f"warning: {method_name(m)}'s tuned rate {rec['best_lr']} is on the {rec['position']} of its grid",
              file=sys.stderr)
    return float(rec["best_lr"])


def cmd_bridge(a) -> int:
    """``method`` on the evaluation seeds through the bridge's own loop, from the study's SFT
    checkpoint (``OUT/checkpoints``, refused when it differs from the restored runs'), at the rate
    ``--lr`` or the tuned one; units in ``OUT/bridge/units``, rows in ``OUT/bridge/rows.jsonl``."""
    from oblr_theory.integrations.rlvr import bridge_step_config

    plan = make_plan(a.quick, False)
    over = {k: v for k, v in dict(steps=a.steps, eval_every=a.eval_every).items() if v is not None}
    if a.eval_seeds is not None:
        over["eval_seeds"] = tuple(range(a.eval_seeds))
    plan = replace(plan, **over)
    m = parse_method(a.method)
    if m["variant"] not in plan.variants:
        raise SystemExit(f"--method {a.method!r}: variant {m['variant']!r} is not in the plan's {plan.variants}")
    lr = a.lr if a.lr is not None else tuned_rate(a.tuning, m)
    if not lr > 0:
        raise SystemExit(f"--lr must be > 0, got {lr}")
    import torch

    torch.set_num_threads(a.threads)
    study = Study(plan, a.out, progress=False)
    try:
        bridge_step_config(study.run_config(m, lr, 0))  # refuse before any SFT work
    except ValueError as err:
        raise SystemExit(f"--method {a.method!r}: {err}") from None
    os.makedirs(a.out, exist_ok=True)
    for s in plan.eval_seeds:
        rec = study.unit(m, lr, s, "bridge", loop="bridge")
        auc = score(rec)
        print(f"bridge {method_name(m)} lr={lr:g} seed={s}: sampled-accuracy AUC {auc:.4f}", file=sys.stderr)
    bdir = os.path.join(a.out, *LOOPS["bridge"])
    n = write_rows(bdir)
    print(json.dumps({"out": bdir, "method": method_name(m), "lr": lr, "seeds": len(plan.eval_seeds), "rows": n}))
    return 0


def cmd_compare(a) -> int:
    """The bridge loop's curves against the study's TRL curves of the same method (Welch, unpaired):
    ``OUT/compare.json`` and ``OUT/compare.md`` next to the bridge rows."""
    from oblr_theory.rlvr_report import bridge_comparison, bridge_markdown, load_rows

    m = method_name(parse_method(a.method))
    res = bridge_comparison(load_rows(a.study), load_rows(a.bridge), m, alpha=a.alpha, power=a.power)
    md = bridge_markdown(res)
    write_json_atomic(os.path.join(a.bridge, "compare.json"), res)
    with open(os.path.join(a.bridge, "compare.md"), "w") as fh:
        fh.write(md)
    print(md)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) the study")
    r.add_argument("--out", required=True)
    r.add_argument("--quick", action="store_true", help="CI slice: tiny model, 2 estimators, 2 seeds")
    r.add_argument("--gpu", action="store_true", help="~25M-parameter model on CUDA")
    r.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2")
    r.add_argument("--estimators", default=None, metavar="E1,E2",
                   help=f"the plan's estimators (default: the study's {len(STUDY_ESTIMATORS)}); e.g. reinforce")
    r.add_argument("--chunk", default=None, metavar="I/N")
    r.add_argument("--steps", type=int, default=None)
    r.add_argument("--eval-every", type=int, default=None)
    r.add_argument("--eval-seeds", type=int, default=None, help="evaluation seeds 0..N-1")
    r.add_argument("--tune-seeds", type=int, default=None, help="tuning seeds 1000..1000+N-1")
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    r.add_argument("--fixed-lr", type=float, default=None,
                   help="same-rate check: run the selected methods on the evaluation seeds at this rate, untuned")
    r.add_argument("--no-progress", action="store_true")
    rs_ = sub.add_parser("restore", help="unit files from saved rows, so that `run` resumes a committed study")
    rs_.add_argument("--rows", required=True, help="directory holding rows.jsonl or rows.jsonl.gz")
    rs_.add_argument("--out", required=True)
    rp = sub.add_parser("report", help="tables and paired bootstrap intervals from the saved rows")
    rp.add_argument("--out", required=True)
    rp.add_argument("--n-boot", type=int, default=10000)
    rp.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    b = sub.add_parser("bridge", help="one method on the evaluation seeds through the bridge's own loop")
    b.add_argument("--out", required=True, help="the study's OUT (its SFT checkpoint); rows go to OUT/bridge")
    b.add_argument("--method", default=BRIDGE_METHOD, metavar="VARIANT/ESTIMATOR/RULE/OPTIM")
    b.add_argument("--lr", type=float, default=None, help="rate (default: the method's tuned rate in --tuning)")
    b.add_argument("--tuning", default=os.path.join(STUDY_ROWS, "tuning"), help="directory of tuning records")
    b.add_argument("--quick", action="store_true", help="the quick plan's model, steps and seeds (smoke)")
    b.add_argument("--steps", type=int, default=None)
    b.add_argument("--eval-every", type=int, default=None)
    b.add_argument("--eval-seeds", type=int, default=None, help="evaluation seeds 0..N-1")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    c = sub.add_parser("compare", help="the bridge loop's curves against the study's TRL curves (Welch)")
    c.add_argument("--bridge", required=True, help="directory of the bridge rows (OUT/bridge)")
    c.add_argument("--study", default=STUDY_ROWS, help="directory of the study's rows")
    c.add_argument("--method", default=BRIDGE_METHOD, metavar="VARIANT/ESTIMATOR/RULE/OPTIM")
    c.add_argument("--alpha", type=float, default=0.05, help="family-wise level (Bonferroni)")
    c.add_argument("--power", type=float, default=0.8, help="power of the minimum detectable effect")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        return cmd_run(a)
    if a.cmd == "bridge":
        return cmd_bridge(a)
    if a.cmd == "compare":
        return cmd_compare(a)
    if a.cmd == "restore":
        n = restore_units(a.rows, a.out)
        print(json.dumps({"out": a.out, "units_written": n}))
        return 0
    from oblr_theory.rlvr_report import report

    if os.path.isdir(os.path.join(a.out, "units")):  # else: saved rows only (e.g. a committed run)
        write_rows(a.out)
    print(report(a.out, n_boot=a.n_boot, seed=a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
