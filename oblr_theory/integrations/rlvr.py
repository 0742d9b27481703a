"""The torch side of the RLVR study (``experiments/rlvr_study.py``): the task variants, a
supervised (SFT) stage stopped by held-out accuracy, the held-out evaluation, and one RL run
through :class:`~oblr_theory.integrations.trl.OBLRPOTrainer` with evaluation points.

Held-out problems: ``n_eval`` distinct problems drawn from the variant's law with a fixed seed;
every training prompt (SFT and RL) is drawn from the same law with those problems removed
(rejection), so accuracy is measured on prompts never trained on.

Accuracy, two ways, on the held-out problems:

- greedy: the fraction whose greedy completion (up to ``<eos>``) is the answer exactly;
- sampled: the exact probability that a temperature-1 sample is ``answer ⊕ <eos>`` (teacher
  forcing, :func:`~oblr_theory.bridge.rollout.expected_task_reward`): the RL objective ``J`` on
  the held-out prompts, with no sampling noise.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..bridge.models import TinyQwen3Spec, param_count, supervised_batch, tiny_qwen3
from ..bridge.rollout import encode_prompts, expected_task_reward
from ..bridge.task import ArithmeticTask, CharTokenizer, Problem
from ..rlvr_stats import config_hash

__all__ = ["VARIANTS", "variant_task", "held_out", "TrainSampler", "greedy_accuracy", "evaluate",
           "SFTConfig", "sft_checkpoint", "load_checkpoint", "RunConfig", "rl_run", "bridge_step_config",
           "bridge_run", "MODEL_SPECS", "BandNotReached", "TRL_MAX_GRAD_NORM"]

#: The task variants: ``base`` (operands 0-19, answers of 1-2 digits) and ``hard`` (operands of 1
#: or 2 digits with equal probability, answers of 1-3 digits: completion lengths vary more).
VARIANTS = {
    "base": dict(max_operand=19, ops="+", sampling="uniform"),
    "hard": dict(max_operand=99, ops="+", sampling="digits"),
}

#: Model shapes: ``quick`` (CI), ``cpu`` (the study on a CPU), ``gpu`` (about 25M parameters).
MODEL_SPECS = {
    "quick": TinyQwen3Spec(),
    "cpu": TinyQwen3Spec(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, intermediate_size=256),
    "gpu": TinyQwen3Spec(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                         head_dim=64, intermediate_size=1536),
}


class BandNotReached(RuntimeError):
    """The SFT stage could not put held-out greedy accuracy inside the band within its budget."""


def variant_task(name: str) -> ArithmeticTask:
    if name not in VARIANTS:
        raise ValueError(f"variant={name!r} is not one of {sorted(VARIANTS)}")
    return ArithmeticTask(**VARIANTS[name])


def held_out(task: ArithmeticTask, n_eval: int, seed: int) -> list[Problem]:
    """``n_eval`` distinct problems of ``task``'s law (seeded), in draw order."""
    rng, seen, out = np.random.default_rng(seed), set(), []
    pool = len(task.all_problems())
    if not 1 <= n_eval <= pool // 2:
        raise ValueError(f"n_eval must be in [1, {pool // 2}] (half of the {pool} problems), got {n_eval}")
    while len(out) < n_eval:
        for p in task.sample(n_eval, rng):
            if p not in seen and len(out) < n_eval:
                seen.add(p)
                out.append(p)
    return out


class TrainSampler:
    """Training prompts: ``task``'s law with the held-out problems removed (rejection)."""

    def __init__(self, task: ArithmeticTask, exclude):
        self.task, self.exclude = task, set(exclude)

    def sample(self, n: int, rng: np.random.Generator) -> list[Problem]:
        out = []
        while len(out) < n:
            out.extend(p for p in self.task.sample(n, rng) if p not in self.exclude)
        return out[:n]


@torch.no_grad()
def greedy_accuracy(model, tok, problems, max_new_tokens: int) -> float:
    """Fraction of ``problems`` whose greedy completion, cut at ``<eos>``, is the answer."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    ids, attn = encode_prompts(tok, [p.prompt for p in problems], device)
    cfg = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=int(max_new_tokens),
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True)
    was = model.training
    model.eval()
    seqs = model.generate(input_ids=ids, attention_mask=attn, generation_config=cfg)
    model.train(was)
    P = ids.shape[1]
    return float(np.mean([tok.decode(row[P:].tolist()) == p.answer for row, p in zip(seqs, problems)]))


def evaluate(model, tok, problems, max_new_tokens: int) -> dict:
    """``{"acc_greedy", "acc_sampled"}`` on ``problems`` (module docstring)."""
    was = model.training
    model.eval()
    sampled = float(expected_task_reward(model, tok, problems).mean())
    model.train(was)
    return {"acc_greedy": greedy_accuracy(model, tok, problems, max_new_tokens), "acc_sampled": sampled}


# ---------------------------------------------------------------------------------- SFT stage
@dataclass(frozen=True)
class SFTConfig:
    """The supervised stage: stop once held-out greedy accuracy is inside ``band``."""

    variant: str = "base"
    model: str = "cpu"
    band: tuple = (0.3, 0.6)
    max_steps: int = 4000
    check_every: int = 25
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    n_eval: int = 100
    eval_seed: int = 12345
    device: str = "cpu"

    def key(self) -> str:
        return config_hash(asdict(self))


def _sft(model, tok, sampler, problems, cfg: SFTConfig, max_new: int, progress: bool) -> dict:
    """AdamW on cross-entropy of answer tokens until held-out greedy accuracy is in the band.
    Raises :class:`BandNotReached` when the budget runs out, or when one check interval jumps
    over the band (then a smaller ``lr`` or ``check_every`` is the fix)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    lo, hi = cfg.band
    history = []
    bar = tqdm(total=cfg.max_steps, desc=f"sft {cfg.variant}", disable=not progress)
    for step in range(1, cfg.max_steps + 1):
        model.train()
        ids, attn, labels = supervised_batch(sampler.sample(cfg.batch_size, rng), tok, device)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        if step % cfg.check_every == 0:
            acc = greedy_accuracy(model, tok, problems, max_new)
            history.append({"step": step, "loss": float(loss.detach()), "acc_greedy": acc})
            bar.set_postfix(acc=f"{acc:.2f}")
            if lo <= acc <= hi:
                bar.close()
                model.eval()
                for p in model.parameters():
                    p.grad = None
                return {"steps": step, "acc_greedy": acc, "history": history}
            if acc > hi:
                bar.close()
                raise BandNotReached(f"SFT jumped over the band {cfg.band} (accuracy {acc:.3f} at step {step}): "
                                     "lower SFTConfig.lr or check_every")
    bar.close()
    raise BandNotReached(f"SFT did not reach held-out greedy accuracy in {cfg.band} within max_steps="
                         f"{cfg.max_steps} (last {history[-1]['acc_greedy'] if history else 'n/a'}): "
                         "raise SFTConfig.max_steps or use a larger model")


def sft_checkpoint(out_dir: str, cfg: SFTConfig, progress: bool = False) -> dict:
    """The shared SFT checkpoint ``out_dir/sft_<variant>_<key>`` (safetensors + tokenizer +
    ``sft.json``): reused when its ``sft.json`` holds the same config key, else trained and saved
    (atomically: a temporary directory renamed into place). Returns the ``sft.json`` record."""
    from .trl_task import hf_char_tokenizer

    path = os.path.join(out_dir, f"sft_{cfg.variant}_{cfg.key()}")
    meta = os.path.join(path, "sft.json")
    if os.path.exists(meta):
        with open(meta) as fh:
            rec = json.load(fh)
        if rec.get("key") == cfg.key():
            return rec
    tok, task = CharTokenizer(), variant_task(cfg.variant)
    problems = held_out(task, cfg.n_eval, cfg.eval_seed)
    model = tiny_qwen3(tok, spec=MODEL_SPECS[cfg.model], seed=cfg.seed).to(cfg.device)
    max_new = task.max_answer_chars + 1
    res = _sft(model, tok, TrainSampler(task, problems), problems, cfg, max_new, progress)
    acc = evaluate(model, tok, problems, max_new)
    rec = {"key": cfg.key(), "config": asdict(cfg), "path": path, "params": param_count(model),
           "acc_greedy": acc["acc_greedy"], "acc_sampled": acc["acc_sampled"], "steps": res["steps"],
           "history": res["history"]}
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out_dir, prefix=".sft_tmp_")
    model.save_pretrained(tmp, safe_serialization=True)
    hf_char_tokenizer().save_pretrained(tmp)
    with open(os.path.join(tmp, "sft.json"), "w") as fh:
        json.dump(rec, fh, indent=1)
    import shutil

    if os.path.exists(path):  # a stale checkpoint of another config under the same name
        shutil.rmtree(path, ignore_errors=True)
    try:
        os.replace(tmp, path)
    except OSError:  # another process (a parallel chunk) saved the same checkpoint first
        shutil.rmtree(tmp, ignore_errors=True)
        with open(meta) as fh:
            return json.load(fh)
    return rec


def load_checkpoint(path: str, device: str = "cpu"):
    """The saved SFT model (safetensors only, no network), float32, on ``device``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, local_files_only=True,
                                                 dtype=torch.float32)
    return model.to(device)


# ---------------------------------------------------------------------------------- RL runs
@dataclass(frozen=True)
class RunConfig:
    """One RL run (a unit of the study): method, rate, seed, variant, and the shared settings."""

    variant: str
    estimator: str
    sq_norms_source: str
    lr_rule: str
    optim: str
    lr: float
    seed: int
    steps: int = 60
    eval_every: int = 10
    num_generations: int = 8
    groups_per_step: int = 8
    snr_factor_min: float = 0.05
    estimator_params: dict | None = field(default=None)
    device: str = "cpu"


class _EvalCallback:
    """Evaluates at step 0, every ``eval_every`` steps and at the end; keeps the training wall
    time (evaluation time excluded)."""

    def __init__(self, fn, every: int, last: int, hook=None):
        self.fn, self.every, self.last, self.hook = fn, every, last, hook
        self.points, self.t0, self.eval_s = [], None, 0.0

    def make(self):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                outer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                s = state.global_step
                if s % outer.every == 0 or s == outer.last:
                    outer.record(s)

        return CB()

    def record(self, step: int):
        t = time.perf_counter()
        wall = 0.0 if self.t0 is None else t - self.t0 - self.eval_s
        self.points.append({"step": step, "wall_s": wall, **self.fn()})
        if self.hook is not None:
            self.hook(step)
        self.eval_s += time.perf_counter() - t


def _window_means(log_history, lo: int, hi: int, marker: str = "reward") -> dict:
    """Mean of every numeric per-step metric logged over the optimizer steps ``lo < step <= hi``
    (entries holding ``marker``: TRL's training summary entry, which has no ``reward``, is left out)."""
    acc: dict = {}
    for h in log_history:
        if marker in h and lo < h.get("step", -1) <= hi:
            for k, v in h.items():
                if k != "step" and isinstance(v, (int, float)) and np.isfinite(v):
                    acc.setdefault(k, []).append(float(v))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def rl_run(ckpt_path: str, cfg: RunConfig, n_eval: int, eval_seed: int, on_eval=None) -> dict:
    """Train the SFT checkpoint with ``OBLRPOTrainer`` under ``cfg``; returns
    ``{"status": "done", "points": [...]}`` (one dict per evaluation point: step, training wall
    time, held-out accuracies, and the means of TRL's logged metrics, ``oblrpo/*`` included, over
    the steps since the previous point), or ``{"status": "skipped", "reason": ...}`` when
    ``OBLRPOConfig`` refuses the configuration (e.g. a learning-rate rule it does not have).

    Common random numbers: the seed fixes the prompt order and TRL's sampling seed, the same for
    every method. ``on_eval(step, model)``, when given, is called at every evaluation point (its
    time counts as evaluation, not training), e.g. to keep snapshots of ``θ``.
    """
    from .trl import OBLRPOConfig, OBLRPOTrainer
    from .trl_task import answer_ids_reward, cpu_config_kwargs, hf_char_tokenizer

    from datasets import Dataset
    from transformers import PrinterCallback

    task, tok = variant_task(cfg.variant), CharTokenizer()
    problems = held_out(task, n_eval, eval_seed)
    max_new = task.max_answer_chars + 1
    G, B = cfg.num_generations, cfg.groups_per_step
    with tempfile.TemporaryDirectory() as tmp:
        try:
            args = OBLRPOConfig(**cpu_config_kwargs(
                output_dir=tmp, use_cpu=cfg.device == "cpu", max_steps=cfg.steps, learning_rate=cfg.lr,
                optim=cfg.optim, seed=cfg.seed, per_device_train_batch_size=G * B, num_generations=G,
                max_completion_length=max_new, gradient_checkpointing=False, weight_decay=0.0,
                estimator=cfg.estimator, estimator_params=cfg.estimator_params,
                sq_norms_source=cfg.sq_norms_source, lr_rule=cfg.lr_rule, snr_factor_min=cfg.snr_factor_min,
                bf16=False))
        except ValueError as err:
            return {"status": "skipped", "reason": f"OBLRPOConfig refused it: {err}"}
        model = load_checkpoint(ckpt_path, cfg.device)
        probs = TrainSampler(task, problems).sample(cfg.steps * B * 2, np.random.default_rng(cfg.seed))
        data = Dataset.from_dict({"prompt": [p.prompt for p in probs], "answer": [p.answer for p in probs]})
        hook = None if on_eval is None else (lambda step: on_eval(step, model))
        ev = _EvalCallback(lambda: evaluate(model, tok, problems, max_new), cfg.eval_every, cfg.steps, hook)
        ev.record(0)
        try:
            trainer = OBLRPOTrainer(model=model, reward_funcs=answer_ids_reward, args=args, train_dataset=data,
                                    processing_class=hf_char_tokenizer(), callbacks=[ev.make()])
        except ValueError as err:
            if not str(err).startswith("OBLRPOTrainer cannot run these settings"):
                raise
            return {"status": "skipped", "reason": str(err)}
        trainer.remove_callback(PrinterCallback)  # rows keep the logs; no dicts on stdout
        trainer.train()
        hist = trainer.state.log_history
    prev = 0
    for pt in ev.points:
        pt["train_log"] = _window_means(hist, prev, pt["step"]) if pt["step"] else {}
        prev = pt["step"]
    return {"status": "done", "points": ev.points}


# ------------------------------------------------------------------- the bridge's own loop
#: ``GRPOConfig.max_grad_norm``'s default, which the study's TRL runs keep (``cpu_config_kwargs``
#: does not set it): the whole gradient is clipped to this norm before every step.
TRL_MAX_GRAD_NORM = 1.0
#: TRL's ``optim`` names -> the bridge's ``StepConfig.optimizer`` (the same torch optimizers, with
#: torch's defaults, as TRL builds them; weight decay 0 in both).
_BRIDGE_OPTIMS = {"sgd": "sgd", "adamw_torch": "adamw"}
_BRIDGE_SQ_NORMS = {"ghost": "ghost", "logit": "logit", "length": "length"}


def bridge_step_config(cfg: RunConfig, max_grad_norm: float | None = TRL_MAX_GRAD_NORM):
    """The bridge's :class:`~oblr_theory.bridge.step.StepConfig` that takes the same step as the
    study's TRL run of ``cfg`` (``loss_type="dapo"``, ``beta = 0``, one step per generation):

    TRL's dapo loss has the gradient ``−(1/N) Σ_bj A_bj s_bj`` with ``N = Σ_bj ℓ_bj`` the
    generation batch's completion tokens; the bridge's surrogate has ``−(1/(BG)) Σ_bj A'_bj s_bj``,
    and ``aggregation="batch-token-mean"`` sets ``A'_bj = A_bj · BG/N``: the same gradient. Then
    ``clip_grad_norm_(max_grad_norm)`` and a step at the constant rate ``cfg.lr`` in both
    (replayed to float32 rounding for ``optimal_loo`` with exact ``S`` and SGD:
    ``tests/integrations/test_trl_bridge_step.py``).

    Only ``lr_rule="constant"``: the trainer's ``snr`` and ``local`` rules (EMA updated only on
    informative batches, the factor floor, secant curvature) are not the bridge's ``snr`` rule.
    """
    from ..bridge.step import StepConfig

    if cfg.lr_rule != "constant":
        raise ValueError(f"lr_rule={cfg.lr_rule!r}: the bridge loop runs the study's lr_rule='constant' only "
                         "(its 'snr' rule is not OBLRPOTrainer's snr/local rule); pick a constant-rule method")
    if cfg.optim not in _BRIDGE_OPTIMS:
        raise ValueError(f"optim={cfg.optim!r} is not one of {sorted(_BRIDGE_OPTIMS)}")
    if cfg.sq_norms_source not in _BRIDGE_SQ_NORMS:
        raise ValueError(f"sq_norms_source={cfg.sq_norms_source!r} is not one of {sorted(_BRIDGE_SQ_NORMS)}")
    return StepConfig(estimator=cfg.estimator, estimator_params=dict(cfg.estimator_params or {}),
                      aggregation="batch-token-mean", sq_norms=_BRIDGE_SQ_NORMS[cfg.sq_norms_source],
                      lr_rule="constant", eta_max=float(cfg.lr), optimizer=_BRIDGE_OPTIMS[cfg.optim],
                      weight_decay=0.0, max_grad_norm=max_grad_norm)


def bridge_run(ckpt_path: str, cfg: RunConfig, n_eval: int, eval_seed: int,
               max_grad_norm: float | None = TRL_MAX_GRAD_NORM, on_eval=None) -> dict:
    """:func:`rl_run`'s run through the bridge's own loop (:func:`oblr_theory.bridge.step.train`:
    ``sample_rollout`` + ``OBLRPO.update``) instead of ``OBLRPOTrainer``: the same checkpoint,
    training law (held-out problems excluded), group shape, steps, step
    (:func:`bridge_step_config`) and evaluation points. Its random streams differ from TRL's
    (``SeedSequence(cfg.seed)`` draws the prompts and the sampling seeds), so its runs are not
    paired with the study's. Returns ``{"status": "done", "points": [...]}`` as :func:`rl_run`,
    with the means of the bridge's per-update diagnostics (``StepDiagnostics``) as ``train_log``;
    ``on_eval(step, model)`` as in :func:`rl_run`."""
    from ..bridge.step import train

    step_cfg = bridge_step_config(cfg, max_grad_norm)
    task, tok = variant_task(cfg.variant), CharTokenizer()
    problems = held_out(task, n_eval, eval_seed)
    max_new = task.max_answer_chars + 1
    model = load_checkpoint(ckpt_path, cfg.device)
    hook = None if on_eval is None else (lambda step: on_eval(step, model))
    ev = _EvalCallback(lambda: evaluate(model, tok, problems, max_new), cfg.eval_every, cfg.steps, hook)
    ev.record(0)
    log: list = []

    def after(done: int, row: dict) -> None:
        log.append({**row, "step": done})
        if done % cfg.eval_every == 0 or done == cfg.steps:
            ev.record(done)

    ev.t0, ev.eval_s = time.perf_counter(), 0.0  # training wall time from here, evaluation excluded
    train(model, tok, task, step_cfg, steps=cfg.steps, batch_size=cfg.groups_per_step,
          group_size=cfg.num_generations, max_new_tokens=max_new, seed=cfg.seed,
          sampler=TrainSampler(task, problems), callback=after)
    prev = 0
    for pt in ev.points:
        pt["train_log"] = _window_means(log, prev, pt["step"], marker="reward_mean") if pt["step"] else {}
        prev = pt["step"]
    return {"status": "done", "points": ev.points}
