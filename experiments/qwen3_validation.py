"""Theory against practice on a Qwen3 causal LM at a fixed θ (T1-T3, T5, T7, T8).

Runs offline on the built-in arithmetic task with a tiny Qwen3 (briefly pretrained, float64 on a
CPU) by default; ``--model PATH`` uses a local Hugging Face checkpoint (safetensors; by default
on a visible GPU, else the CPU, in the checkpoint's own dtype). ``--device`` and ``--dtype``
(float64, float32, bfloat16, float16) override those defaults; ``--gram-method`` picks the
score Gram's method (``ghost``: one backward pass; ``loop``: one backward per sequence, the
reference). Stages, each resumable (finished pieces are kept under ``OUT/work`` and skipped on rerun):

1. the fixed θ (its parameter checksum is part of the configuration);
2. per prompt: ``M·G`` sampled completions, their ghost Gram, lengths and logit proxy;
3. per batch ``m`` (group ``m`` of every prompt): the cross-prompt ghost Gram (T7 SNR);
4. where completions can be enumerated (``max_new_tokens <= 2``): the exact reference;
5. statistics with delete-one-batch jackknife errors and z-tests.

Writes ``OUT/report.json`` (configuration, seed, git revision, statistics, errors, claims),
``OUT/claims.csv`` and ``OUT/statistics.csv`` (tidy: one row per quantity), atomically.
Figures: ``python paper_figures/qwen3_validation.py OUT``.

    python experiments/qwen3_validation.py --out results/qwen3_validation
    python experiments/qwen3_validation.py --model ./Qwen3-4B-Base --device cuda --dtype bfloat16 --out ...
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from oblr_theory.bridge import exact_lm  # noqa: E402
from oblr_theory.bridge import validate as V  # noqa: E402
from oblr_theory.bridge import validate_claims as VC  # noqa: E402
from oblr_theory.bridge.models import DTYPES, load_model  # noqa: E402
from oblr_theory.bridge.task import ArithmeticTask  # noqa: E402
from oblr_theory.results import git_revision, jsonable  # noqa: E402


@dataclass
class Config:
    model: str | None = None  # None: the built-in tiny Qwen3; else a local checkpoint directory
    prompts: int = 8  # P
    groups: int = 16  # M (independent groups per prompt)
    group_size: int = 8  # G
    max_operand: int = 9
    max_answer: int | None = 9  # single-digit answers: completions enumerable with 2 tokens
    max_new_tokens: int | None = None  # default: longest answer + 1 (eos)
    pretrain_steps: int = 50
    seed: int = 0
    alpha: float = 0.05  # family-wise false-failure rate of the z-tests
    ema_beta: float = 0.9
    eta_max: float = 1.0
    batch_gram: bool = True
    exact: bool = True
    device: str | None = None  # None: the CPU for the built-in models, a visible GPU for --model PATH
    dtype: str | None = None  # None: float64 for the built-in models, the checkpoint's own for --model PATH
    gram_method: str = "ghost"  # "ghost" (one backward) or "loop" (one backward per sequence)


GRAM_METHODS = ("ghost", "loop")


def _builtin(model: str | None) -> bool:
    return model in (None, "tiny") or str(model).startswith("shape:")


def atomic_write(path: str, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, then rename (never a half-written file)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def atomic_npz(path: str, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def param_checksum(model) -> str:
    h = hashlib.sha1()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def run(cfg: Config, out: str, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    work = os.path.join(out, "work")
    os.makedirs(work, exist_ok=True)
    task = ArithmeticTask(max_operand=cfg.max_operand, max_answer=cfg.max_answer)
    H = cfg.max_new_tokens or task.max_answer_chars + 1
    if cfg.gram_method not in GRAM_METHODS:
        raise SystemExit(f"--gram-method must be one of {GRAM_METHODS}, got {cfg.gram_method!r}")
    torch.manual_seed(cfg.seed)
    dtype = cfg.dtype or ("float64" if _builtin(cfg.model) else None)
    try:
        model, tok = load_model(cfg.model, task, seed=cfg.seed, pretrain_steps=cfg.pretrain_steps,
                                device=cfg.device, dtype=dtype, progress=progress)
    except ValueError as err:  # one line with the fix, not a traceback
        raise SystemExit(f"error: {err}") from None
    model.eval()
    p0 = next(model.parameters())
    ident = {**asdict(cfg), "max_new_tokens": H, "theta": param_checksum(model),
             "dtype": str(p0.dtype).removeprefix("torch."), "device": str(p0.device)}
    ident_path = os.path.join(work, "config.json")
    data_keys = ("model", "prompts", "groups", "group_size", "max_operand", "max_answer",
                 "max_new_tokens", "pretrain_steps", "seed", "theta", "dtype", "gram_method")
    if os.path.exists(ident_path):
        old = json.load(open(ident_path))
        diff = {k: (old.get(k), ident[k]) for k in data_keys if old.get(k) != ident[k]}
        if diff:
            raise SystemExit(f"{work} holds samples from another configuration {diff}; "
                             "use a fresh --out folder")
    atomic_write(ident_path, json.dumps(ident, indent=2))

    seeds = np.random.SeedSequence(cfg.seed).spawn(cfg.prompts + 1)
    problems = task.sample(cfg.prompts, np.random.default_rng(seeds[-1]))
    n = cfg.groups * cfg.group_size
    samples = []
    for p in tqdm(range(cfg.prompts), desc="prompts (sample + ghost Gram)", disable=not progress):
        path = os.path.join(work, f"prompt_{p:04d}.npz")
        if not os.path.exists(path):
            s = V.collect_prompt(model, tok, task, problems[p], n, H,
                                 seed=int(np.random.default_rng(seeds[p]).integers(2**31)),
                                 method=cfg.gram_method)
            atomic_npz(path, s.to_npz())
        with np.load(path) as z:
            samples.append(V.PromptSamples(**{k: z[k] for k in z.files}))
    batch_grams = None
    if cfg.batch_gram:
        batch_grams = []
        for m in tqdm(range(cfg.groups), desc="batches (cross-prompt Gram)", disable=not progress):
            path = os.path.join(work, f"batch_{m:04d}.npz")
            if not os.path.exists(path):
                atomic_npz(path, {"gram": V.batch_gram(model, samples, m, cfg.group_size, tok.pad_token_id,
                                                       method=cfg.gram_method)})
            with np.load(path) as z:
                batch_grams.append(z["gram"])
    exact_ref = None
    if cfg.exact and H <= 2 and tok.vocab_size ** H <= 50_000:
        path = os.path.join(work, "exact.json")
        if not os.path.exists(path):
            ref = exact_lm.exact_reference(model, tok, task, problems, H, cfg.group_size, progress=progress)
            atomic_write(path, json.dumps(ref, indent=2))
        exact_ref = json.load(open(path))

    arr = lambda k: np.stack([getattr(s, k) for s in samples])  # noqa: E731
    data = (arr("rewards_n"), arr("sq_norms_n"), arr("lengths_n"), arr("logit_n"), arr("gram_nn"))
    pre = V.precompute(*data, cfg.group_size, batch_grams)
    fn = lambda keep: V.statistics(pre, keep, cfg.ema_beta, cfg.eta_max)  # noqa: E731
    full, se = VC.jackknife(fn, cfg.groups, progress=progress)
    claims = VC.analyse(full, se, cfg.group_size, cfg.alpha, exact_ref, n_batches=cfg.groups,
                        problem=cfg.model or "tiny Qwen3")
    report = {
        "experiment": "qwen3_validation",
        "config": ident,
        "git_revision": git_revision(),
        "problems": [dataclasses.asdict(p) for p in problems],
        "reward_mean": float(data[0].mean()),
        "statistics": full,
        "standard_errors": se,
        "exact_reference": exact_ref,
        "claims": [_row(c) for c in claims],
        "verdict": dict(VC.tally(claims),
                        failed_rows=[f"{c.claim}: {c.statement}" for c in claims if c.passed is False],
                        untested_rows=[f"{c.claim}: {c.statement}" for c in claims
                                       if c.passed is None and c.kind != "measurement"]),
    }
    # strict JSON: a non-finite number (a quantity with no prediction, an undefined z) is null
    atomic_write(os.path.join(out, "report.json"),
                 json.dumps(jsonable(report), indent=2, allow_nan=False))
    atomic_write(os.path.join(out, "claims.csv"), _csv([_flat(_row(c)) for c in claims]))
    atomic_write(os.path.join(out, "statistics.csv"),
                 _csv([{"quantity": k, "value": v, "se": se.get(k, float("nan")), "seed": cfg.seed,
                        "git_revision": report["git_revision"]} for k, v in full.items()]))
    return report


def _row(c) -> dict:
    """A claim row as a dict with its verdict and outcome (non-finite numbers stay floats here;
    the report's strict JSON writes them as null)."""
    return {**asdict(c), "verdict": c.verdict, "outcome": c.outcome}


def _flat(row: dict) -> dict:
    """A report row for the CSV: ``details`` spread into ``details.<key>`` columns."""
    d = dict(row)
    details = d.pop("details")
    return {**d, **{f"details.{k}": v for k, v in details.items()}}


def summary(report: dict) -> str:
    v = report["verdict"]
    lines = [f"reward mean {report['reward_mean']:.3f}; claims tested {v['tested']}, hold {v['hold']}, "
             f"fail {v['fail']}, untested {v['untested']} (+ {v['measured']} measured only)"]
    num = lambda x: "nan" if x is None else f"{x:.4g}"  # noqa: E731
    for c in report["claims"]:
        d = c["details"]
        pred = "" if c["exact"] is None else f" predicted {c['exact']:.4g}"
        cmp = ">" if c["kind"] == "negative-control" else "<"
        test = "" if c["kind"] == "measurement" else (
            f" |z|={num(c['statistic'])} ({cmp}{num(c['threshold'])}): {c['verdict']}")
        note = f"  ({c['note']})" if c["note"] else ""
        lines.append(f"  [{c['claim']}] {c['statement']}: {num(c['estimate'])} ± {num(d['se'])}{pred}{test}{note}")
    for what, key in (("FAILED", "failed_rows"), ("untested (the test could not decide)", "untested_rows")):
        if v[key]:
            lines.append(f"{what}: " + "; ".join(v[key]))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results") + "/qwen3_validation")
    for f in dataclasses.fields(Config):
        default = f.default
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = {"model": str, "max_answer": int, "max_new_tokens": int, "device": str,
                    "dtype": str, "gram_method": str}.get(f.name, type(default))
            choices = {"dtype": sorted(DTYPES), "gram_method": GRAM_METHODS}.get(f.name)
            ap.add_argument(flag, type=kind, default=default, choices=choices)
    ap.add_argument("--quiet", action="store_true")
    ns = vars(ap.parse_args(argv))
    out, quiet = ns.pop("out"), ns.pop("quiet")
    cfg = Config(**ns)
    report = run(cfg, out, progress=not quiet)
    print(summary(report))
    print(f"wrote {out}/report.json, claims.csv, statistics.csv")


if __name__ == "__main__":
    main()
