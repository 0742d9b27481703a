"""OBLR-PO inside TRL: ``OBLRPOConfig(GRPOConfig)`` and ``OBLRPOTrainer(GRPOTrainer)``.

Usage (everything else is TRL's: generation, vLLM, accelerate, PEFT, logging)::

    from oblr_theory.integrations.trl import OBLRPOConfig, OBLRPOTrainer
    args = OBLRPOConfig(output_dir="out", learning_rate=1e-6, num_generations=8)
    OBLRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=ds).train()

What changes against ``GRPOTrainer`` (one hook, ``_generate_and_score_completions``, after TRL
has generated, scored and gathered the rewards):

1. ``S_j = ||∇θ Σ_t log π(y_t | ·)||²`` for every completion (``sq_norms_source="ghost"``: the
   bridge's exact ghost pass; ``"logit"`` / ``"length"``: the T8 proxies), gathered across
   processes as TRL gathers rewards;
2. the advantages ``A = f(r, S, ℓ)`` of the registry estimator (default ``optimal_loo``, T1/T3)
   on whole groups replace TRL's; the loss, clipping and aggregation stay TRL's;
3. ``lr_rule="snr"``: T7's pieces from per-group gradients at the sampling policy, exact under
   the data-parallel split, EMA-smoothed, and the T5 factor ``SNR/(1+SNR)`` multiplies TRL's
   scheduled learning rate at every optimizer step (optimizer pre-step hook; the scheduled rate
   is restored after the step).

Metrics go to TRL's logs under ``oblrpo/*``. See ``docs/trl.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from .. import estimators
from ..snr import EMASNR
from ._trl_math import (SNR_LOSS_WEIGHTS, diagnostics, informative, lr_factor, snr_metrics,
                        snr_pieces_dp)
from ._trl_pass import Comm, LocalBatch, oblrpo_generation

__all__ = ["OBLRPOConfig", "OBLRPOTrainer", "AccelerateComm"]

SQ_NORMS_SOURCES = ("ghost", "logit", "length")
LR_RULES = ("snr", "constant")


@dataclass
class OBLRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the OBLR-PO knobs; the defaults give OBLR-PO (``optimal_loo``, exact
    ``S``, the T5/T7 learning rate)."""

    estimator: str = field(default="optimal_loo", metadata={
        "help": "Advantage estimator: any name of oblr_theory.estimators.names()."})
    estimator_params: dict | None = field(default=None, metadata={
        "help": "Parameters of the estimator, e.g. {'eps': 1e-4, 'ddof': 1} for grpo."})
    sq_norms_source: str = field(default="ghost", metadata={
        "help": "S = ||score||²: 'ghost' (exact, one ghost pass) or the proxies 'logit', 'length'."})
    lr_rule: str = field(default="snr", metadata={
        "help": "'snr': scheduled rate x clip(SNR/(1+SNR), snr_factor_min, snr_factor_max) (T5/T7); "
                "'constant': the scheduled rate."})
    snr_ema_beta: float = field(default=0.9, metadata={
        "help": "EMA factor of the SNR's numerator and denominator (T7), one update per generation."})
    snr_factor_min: float = field(default=0.0, metadata={
        "help": "Floor of the T5 factor (keeps learning alive while the smoothed SNR estimate is 0)."})
    snr_factor_max: float = field(default=1.0, metadata={"help": "Ceiling of the T5 factor."})
    sq_norms_batch_size: int | None = field(default=None, metadata={
        "help": "Completions per ghost pass (memory); default per_device_train_batch_size."})

    def __post_init__(self):
        super().__post_init__()
        estimators.get(self.estimator, **(self.estimator_params or {}))  # unknown name / params
        if self.sq_norms_source not in SQ_NORMS_SOURCES:
            raise ValueError(f"sq_norms_source={self.sq_norms_source!r} is not one of {SQ_NORMS_SOURCES}")
        if self.lr_rule not in LR_RULES:
            raise ValueError(f"lr_rule={self.lr_rule!r} is not one of {LR_RULES}")
        if not 0.0 <= self.snr_ema_beta < 1.0:
            raise ValueError(f"snr_ema_beta must be in [0, 1), got {self.snr_ema_beta!r}")
        if not 0.0 <= self.snr_factor_min <= self.snr_factor_max <= 1.0:
            raise ValueError("need 0 <= snr_factor_min <= snr_factor_max <= 1, got "
                             f"{self.snr_factor_min!r}, {self.snr_factor_max!r}")
        if self.sq_norms_batch_size is not None and self.sq_norms_batch_size < 1:
            raise ValueError(f"sq_norms_batch_size must be >= 1, got {self.sq_norms_batch_size!r}")


class AccelerateComm(Comm):
    """The communicator of an ``accelerate.Accelerator``: TRL's gather, and a sum all-reduce."""

    def __init__(self, accelerator):
        self.acc = accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes

    def gather(self, x):
        return self.acc.gather(x) if self.world > 1 else x

    def all_reduce_sum_(self, x):
        if self.world > 1:
            torch.distributed.all_reduce(x)
        return x


def unsupported_reasons(args: OBLRPOConfig, num_processes: int, deepspeed: bool, fsdp: bool) -> list[str]:
    """Every setting ``OBLRPOTrainer`` refuses, each with its reason (empty: supported)."""
    why = []
    if args.multi_objective_aggregation != "sum_then_normalize":
        why.append("multi_objective_aggregation must be 'sum_then_normalize': the registry "
                   "estimator takes the weighted reward sum r")
    if args.scale_rewards != "group":
        why.append(f"scale_rewards={args.scale_rewards!r} would be ignored: the advantages come from "
                   "the registry (use estimator='dr_grpo' for no std scaling, 'grpo' for group std)")
    if args.lr_rule == "snr":
        if args.loss_type not in SNR_LOSS_WEIGHTS:
            why.append(f"lr_rule='snr' with loss_type={args.loss_type!r}: its gradient is not a fixed "
                       f"per-sequence weighting of A_j s_j (supported: {sorted(SNR_LOSS_WEIGHTS)})")
        if args.beta != 0.0:
            why.append("lr_rule='snr' with beta != 0: the KL term is not part of T7's per-group gradients")
        if args.top_entropy_quantile < 1.0 or getattr(args, "entropy_coef", 0.0):
            why.append("lr_rule='snr' with entropy masking or an entropy bonus: not part of T7's gradients")
        local = args.per_device_train_batch_size * args.steps_per_generation
        if local % args.num_generations:
            why.append(f"lr_rule='snr' needs whole groups on each process (T7's unit): "
                       f"per_device_train_batch_size*steps_per_generation={local} is not a multiple of "
                       f"num_generations={args.num_generations}")
        elif local // args.num_generations * num_processes < 2:
            why.append("lr_rule='snr' needs >= 2 prompt groups per generation batch (T7), got "
                       f"{local // args.num_generations * num_processes}")
        if deepspeed or fsdp:
            why.append("lr_rule='snr' under DeepSpeed or FSDP: sharded parameters and DeepSpeed's own "
                       "optimizer step are not supported (use lr_rule='constant')")
    return why


class OBLRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with registry advantages from exact ``S`` and the T5/T7 learning rate.

    ``args`` must be an :class:`OBLRPOConfig`. Settings it cannot honour raise ``ValueError`` at
    construction, naming the setting and why (:func:`unsupported_reasons`). After each generation,
    ``self.oblrpo_last`` holds the gathered ``rewards``, ``sq_norms``, ``advantages``, ``lengths``
    and the T7 ``pieces`` (None under ``lr_rule='constant'``).
    """

    def __init__(self, model, reward_funcs, args: OBLRPOConfig | None = None, **kwargs):
        if not isinstance(args, OBLRPOConfig):
            raise TypeError(f"args must be an OBLRPOConfig, got {type(args).__name__}")
        # checked before TRL builds anything (models, reference model, vLLM)
        why = unsupported_reasons(args, args.world_size, bool(args.deepspeed), bool(args.fsdp))
        if why:
            raise ValueError("OBLRPOTrainer cannot run these settings: " + "; ".join(why))
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        self.oblrpo_estimator = estimators.get(args.estimator, **(args.estimator_params or {}))
        self.oblrpo_ema = EMASNR(args.snr_ema_beta)
        self.oblrpo_lr_factor = 1.0 if args.lr_rule == "constant" else None
        self.oblrpo_last: dict = {}
        self._oblrpo_rewards_per_func = None
        self._oblrpo_hooked = None

    # ------------------------------------------------------------------ the learning rate (T5)
    def create_optimizer(self, model=None):
        opt = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.args.lr_rule == "snr" and self._oblrpo_hooked is not opt:
            opt.register_step_pre_hook(self._oblrpo_pre_step)
            opt.register_step_post_hook(self._oblrpo_post_step)
            self._oblrpo_hooked = opt
        return opt

    def _oblrpo_pre_step(self, optimizer, args, kwargs):
        """Scheduled rate × the T5 factor of the latest generation, for this step only."""
        if self.oblrpo_lr_factor is None:
            raise RuntimeError("optimizer step before any generation: no SNR estimate yet")
        for group in optimizer.param_groups:
            group["oblrpo_scheduled_lr"] = group["lr"]
            group["lr"] = group["lr"] * self.oblrpo_lr_factor

    def _oblrpo_post_step(self, optimizer, args, kwargs):
        for group in optimizer.param_groups:
            group["lr"] = group.pop("oblrpo_scheduled_lr")

    # ------------------------------------------------------------------ advantages and T7
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._oblrpo_rewards_per_func = out  # gathered across processes, TRL's order
        return out

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else self.num_generations_eval
        rpf = self._oblrpo_rewards_per_func
        rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rpf).all(dim=1)] = torch.nan  # unscored: refused by the estimator step
        snr = mode == "train" and self.args.lr_rule == "snr"
        model = self.accelerator.unwrap_model(self.model)
        rows = self.args.sq_norms_batch_size or self.args.per_device_train_batch_size
        with _no_checkpointing(model, self.args.gradient_checkpointing_kwargs):
            res = oblrpo_generation(model, LocalBatch.from_trl(out), rewards, self.oblrpo_estimator,
                                    group_size=G, comm=AccelerateComm(self.accelerator),
                                    source=self.args.sq_norms_source, rows_per_pass=rows,
                                    snr_loss_type=self.args.loss_type if snr else None)
        out["advantages"] = res.advantages[res.local].to(out["advantages"].dtype)
        logged = self._logs["advantages"]  # TRL logged its own advantages: replace them
        for _ in range(min(len(logged), res.advantages.numel())):
            logged.pop()
        logged.extend(res.advantages.tolist())
        pieces = None
        stats = diagnostics(rewards, res.sq_norms, res.lengths, G)
        if snr:
            pieces = snr_pieces_dp(res.sum_group_sq, res.mean_grad_sq, res.n_groups)
            if informative(res.advantages, rewards):
                snr_ema = float(self.oblrpo_ema.update(pieces))
                self.oblrpo_lr_factor = lr_factor(snr_ema, self.args.snr_factor_min,
                                                  self.args.snr_factor_max)
            elif self.oblrpo_lr_factor is None:  # nothing measured yet: the floor
                self.oblrpo_lr_factor = self.args.snr_factor_min
            snr_ema = float(self.oblrpo_ema.snr) if self.oblrpo_ema.steps else float("nan")
            stats.update(snr_metrics(pieces, snr_ema, self.oblrpo_lr_factor))
        for k, v in stats.items():
            self._metrics[mode][f"oblrpo/{k}"].append(v)
        self.oblrpo_last = {"rewards": rewards, "sq_norms": res.sq_norms, "advantages": res.advantages,
                            "lengths": res.lengths, "pieces": pieces}
        return out


class _no_checkpointing:
    """Gradient checkpointing off for the ghost pass (its recomputed forward would re-fire the
    hooks), restored after; memory is bounded by ``sq_norms_batch_size`` rows per pass."""

    def __init__(self, model, kwargs):
        self.model, self.kwargs = model, kwargs
        new = hasattr(model, "is_activation_checkpointing")  # transformers >= 5 names
        self.prefix = "activation" if new else "gradient"
        self.was = bool(getattr(model, f"is_{self.prefix}_checkpointing", False))

    def __enter__(self):
        if self.was:
            getattr(self.model, f"{self.prefix}_checkpointing_disable")()

    def __exit__(self, *exc):
        if self.was:
            getattr(self.model, f"{self.prefix}_checkpointing_enable")(self.kwargs)
        return False
