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
3. the single-pass update (``single_pass="auto"``, where TRL's on-policy gradient has the
   per-sequence form ``−c Σ_j λ_j A_j s_j``): the ghost pass that gives ``S`` also forms that
   gradient from its kept factors, so TRL's own forward and backward of the loss are skipped;
4. ``lr_rule="snr"`` (or ``"local"``): T7's pieces from per-group gradients at the sampling policy, exact under
   the data-parallel split, EMA-smoothed, and the T5 factor ``SNR/(1+SNR)`` multiplies TRL's
   scheduled learning rate at every optimizer step (optimizer pre-step hook; the scheduled rate
   is restored after the step). ``lr_rule="local"`` (plain SGD): T5 with the curvature along
   the recent steps from T7-corrected secants instead of the fixed scheduled ``η_max``.

Metrics go to TRL's logs under ``oblrpo/*``. See ``docs/trl.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math
import time

import torch
from trl import GRPOConfig, GRPOTrainer

from .. import estimators
from ..snr import EMASNR
from ._trl_math import (SNR_LOSS_WEIGHTS, LocalRate, diagnostics, informative, loss_scale,
                        lr_factor, sequence_weights, snr_metrics, snr_pieces_dp)
from ._trl_pass import Comm, LocalBatch, oblrpo_generation

__all__ = ["OBLRPOConfig", "OBLRPOTrainer", "AccelerateComm", "unsupported_reasons",
           "single_pass_reasons"]

SQ_NORMS_SOURCES = ("ghost", "logit", "length")
LR_RULES = ("snr", "constant", "local")
SINGLE_PASS = ("auto", "on", "off")


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
                "'constant': the scheduled rate; 'local' (plain SGD): clip(SNR/(1+SNR)/kappa, "
                "snr_factor_min x rate, snr_factor_max x rate), kappa the secant curvature along "
                "recent steps (T5-local)."})
    snr_ema_beta: float = field(default=0.9, metadata={
        "help": "EMA factor of the SNR's numerator and denominator (T7), one update per generation."})
    snr_factor_min: float = field(default=0.0, metadata={
        "help": "Floor of the T5 factor (keeps learning alive while the smoothed SNR estimate is 0)."})
    snr_factor_max: float = field(default=1.0, metadata={"help": "Ceiling of the T5 factor."})
    sq_norms_batch_size: int | None = field(default=None, metadata={
        "help": "Completions per ghost pass (memory); default per_device_train_batch_size."})
    single_pass: str = field(default="auto", metadata={
        "help": "'on': the update gradient comes from the ghost pass that gives S (no second forward "
                "and backward; settings that prevent it are refused); 'off': TRL's own loss and "
                "backward; 'auto': 'on' where supported (see single_pass_reasons)."})

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
        if self.single_pass not in SINGLE_PASS:
            raise ValueError(f"single_pass={self.single_pass!r} is not one of {SINGLE_PASS}")


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


def _gradient_form_reasons(args: OBLRPOConfig, what: str) -> list[str]:
    """Settings under which TRL's on-policy gradient is not ``−c Σ_j λ_j A_j s_j`` (the form that
    T7's per-group gradients and the single-pass update rely on), each with its reason."""
    why = []
    if args.loss_type not in SNR_LOSS_WEIGHTS:
        why.append(f"{what} with loss_type={args.loss_type!r}: its gradient is not a fixed "
                   f"per-sequence weighting of A_j s_j (supported: {sorted(SNR_LOSS_WEIGHTS)})")
    if args.beta != 0.0:
        why.append(f"{what} with beta != 0: the KL term is not of the form A_j s_j")
    if args.top_entropy_quantile < 1.0 or getattr(args, "entropy_coef", 0.0) \
            or getattr(args, "use_adaptive_entropy", False):
        why.append(f"{what} with entropy masking or an entropy bonus: not of the form A_j s_j")
    if args.importance_sampling_level != "token":
        why.append(f"{what} with importance_sampling_level={args.importance_sampling_level!r}: the "
                   "sequence-level ratio reweights each token by 1/length")
    if getattr(args, "off_policy_mask_threshold", None) is not None:
        why.append(f"{what} with off_policy_mask_threshold: the mask depends on the advantages' sign")
    if getattr(args, "delta", None) is not None and args.delta <= 1.0:
        why.append(f"{what} with delta={args.delta} <= 1: the two-sided clip zeroes the on-policy gradient")
    if args.mask_truncated_completions:
        why.append(f"{what} with mask_truncated_completions: a completion with no loss token has no "
                   "score to weight")
    return why


def _whole_groups_reasons(args: OBLRPOConfig, num_processes: int, what: str) -> list[str]:
    local = args.per_device_train_batch_size * args.steps_per_generation
    if local % args.num_generations:
        return [f"{what} needs whole groups on each process (T7's unit): "
                f"per_device_train_batch_size*steps_per_generation={local} is not a multiple of "
                f"num_generations={args.num_generations}"]
    return []


def unsupported_reasons(args: OBLRPOConfig, num_processes: int, deepspeed: bool, fsdp: bool) -> list[str]:
    """Every setting ``OBLRPOTrainer`` refuses, each with its reason (empty: supported)."""
    why = []
    if args.multi_objective_aggregation != "sum_then_normalize":
        why.append("multi_objective_aggregation must be 'sum_then_normalize': the registry "
                   "estimator takes the weighted reward sum r")
    if args.scale_rewards != "group":
        why.append(f"scale_rewards={args.scale_rewards!r} would be ignored: the advantages come from "
                   "the registry (use estimator='dr_grpo' for no std scaling, 'grpo' for group std)")
    if args.lr_rule in ("snr", "local"):
        what = f"lr_rule={args.lr_rule!r}"
        why += _gradient_form_reasons(args, what)
        whole = _whole_groups_reasons(args, num_processes, what)
        why += whole
        local = args.per_device_train_batch_size * args.steps_per_generation
        if not whole and local // args.num_generations * num_processes < 2:
            why.append(f"{what} needs >= 2 prompt groups per generation batch (T7), got "
                       f"{local // args.num_generations * num_processes}")
        if deepspeed or fsdp:
            why.append(f"{what} under DeepSpeed or FSDP: sharded parameters and DeepSpeed's own "
                       "optimizer step are not supported (use lr_rule='constant')")
    if args.lr_rule == "local":
        why += _local_rule_reasons(args)
    if args.single_pass == "on":
        why += single_pass_reasons(args, num_processes, deepspeed, fsdp)
    return why


def _local_rule_reasons(args: OBLRPOConfig) -> list[str]:
    """``lr_rule="local"``: its secant divides by the step along ``ĝ``, so the step must be plain
    SGD along the fresh gradient of each generation batch, with a positive floor."""
    why = []
    if args.optim != "sgd":
        why.append(f"lr_rule='local' needs optim='sgd' (its secant assumes the step is along the "
                   f"gradient), got {args.optim!r}; use lr_rule='snr' to scale {args.optim!r}'s rate")
    if args.weight_decay != 0.0:
        why.append(f"lr_rule='local' needs weight_decay=0 (the decay moves θ off the gradient), "
                   f"got {args.weight_decay}")
    if args.num_iterations != 1 or args.steps_per_generation != args.gradient_accumulation_steps:
        why.append("lr_rule='local' needs one optimizer step per generation batch (num_iterations=1, "
                   "steps_per_generation == gradient_accumulation_steps): each secant needs a fresh "
                   "gradient at the new parameters")
    if not args.snr_factor_min > 0:
        why.append("lr_rule='local' needs snr_factor_min > 0: its floor eta_min = snr_factor_min x "
                   "the scheduled rate (e.g. 0.05)")
    return why


def single_pass_reasons(args: OBLRPOConfig, num_processes: int, deepspeed: bool, fsdp: bool) -> list[str]:
    """Why the update cannot come from the ghost pass (empty: it can).

    The single pass replaces TRL's forward and backward of the loss by the ghost pass's weighted
    gradients at the sampling policy, so it needs: exact ``S`` (``"ghost"``); one optimizer step
    per generation batch, at the policy that sampled it (``num_iterations = 1`` and
    ``steps_per_generation = gradient_accumulation_steps``); TRL's gradient of the form
    ``−c Σ_j λ_j A_j s_j`` (:func:`_gradient_form_reasons`); whole groups on each process;
    gradients the optimizer reads as they are (no fp16 loss scaling, no DeepSpeed or FSDP
    gradient handling); generation by the model itself (vLLM's importance-sampling weights
    are not applied).
    """
    what = "single_pass"
    why = []
    if args.sq_norms_source != "ghost":
        why.append(f"{what} needs sq_norms_source='ghost', got {args.sq_norms_source!r}")
    if args.num_iterations != 1:
        why.append(f"{what} needs num_iterations=1 (later iterations are off the sampling policy)")
    if args.steps_per_generation != args.gradient_accumulation_steps:
        why.append(f"{what} needs steps_per_generation == gradient_accumulation_steps (one generation "
                   f"batch per optimizer step), got {args.steps_per_generation} and "
                   f"{args.gradient_accumulation_steps}")
    why += _gradient_form_reasons(args, what)
    why += _whole_groups_reasons(args, num_processes, what)
    if args.fp16:
        why.append(f"{what} with fp16: the gradient scaler expects scaled gradients from its backward")
    if deepspeed or fsdp:
        why.append(f"{what} under DeepSpeed or FSDP: their gradient handling runs inside backward")
    if args.use_vllm:
        why.append(f"{what} with use_vllm: vLLM's importance-sampling weights are not applied")
    return why


class OBLRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with registry advantages from exact ``S`` and the T5/T7 learning rate.

    ``args`` must be an :class:`OBLRPOConfig`. Settings it cannot honour raise ``ValueError`` at
    construction, naming the setting and why (:func:`unsupported_reasons`;
    :func:`single_pass_reasons` with ``single_pass="on"``). ``self.oblrpo_single_pass`` says
    whether the update comes from the ghost pass. After each generation, ``self.oblrpo_last``
    holds the gathered ``rewards``, ``sq_norms``, ``advantages``, ``lengths``, the T7 ``pieces``
    (None when no weighted pass ran: ``lr_rule='constant'`` on the two-pass path) and, with
    ``lr_rule='local'``, ``ghat`` (the step's ascent direction in TRL's gradient scale).
    """

    def __init__(self, model, reward_funcs, args: OBLRPOConfig | None = None, **kwargs):
        if not isinstance(args, OBLRPOConfig):
            raise TypeError(f"args must be an OBLRPOConfig, got {type(args).__name__}")
        # checked before TRL builds anything (models, reference model, vLLM)
        why = unsupported_reasons(args, args.world_size, bool(args.deepspeed), bool(args.fsdp))
        if why:
            raise ValueError("OBLRPOTrainer cannot run these settings: " + "; ".join(why))
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        why = single_pass_reasons(args, args.world_size, bool(args.deepspeed), bool(args.fsdp))
        if self.aux_loss_enabled:
            why.append("single_pass with a router auxiliary loss (MoE): not of the form A_j s_j")
        if why and args.single_pass == "on":
            raise ValueError("OBLRPOTrainer cannot run these settings: " + "; ".join(why))
        #: True when the update comes from the ghost pass (``single_pass``), not TRL's backward
        self.oblrpo_single_pass = args.single_pass != "off" and not why
        self.oblrpo_estimator = estimators.get(args.estimator, **(args.estimator_params or {}))
        self.oblrpo_ema = EMASNR(args.snr_ema_beta)
        self.oblrpo_lr_factor = 1.0 if args.lr_rule == "constant" else None
        self.oblrpo_local = LocalRate(args.snr_ema_beta) if args.lr_rule == "local" else None
        self.oblrpo_last: dict = {}
        self._oblrpo_rewards_per_func = None
        self._oblrpo_hooked = None

    # ------------------------------------------------------------------ the learning rate (T5)
    def create_optimizer(self, model=None):
        opt = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.args.lr_rule in ("snr", "local") and self._oblrpo_hooked is not opt:
            if self.args.lr_rule == "local":
                _check_plain_sgd(opt)
            opt.register_step_pre_hook(self._oblrpo_pre_step)
            opt.register_step_post_hook(self._oblrpo_post_step)
            self._oblrpo_hooked = opt
        return opt

    def _oblrpo_pre_step(self, optimizer, args, kwargs):
        """Scheduled rate × the T5 factor of the latest generation, for this step only."""
        if self.oblrpo_local is not None:
            self._oblrpo_local_factor(optimizer)
        if self.oblrpo_lr_factor is None:
            raise RuntimeError("optimizer step before any generation: no SNR estimate yet")
        for group in optimizer.param_groups:
            group["oblrpo_scheduled_lr"] = group["lr"]
            group["lr"] = group["lr"] * self.oblrpo_lr_factor

    def _oblrpo_local_factor(self, optimizer):
        """T5-local: ``η_t`` from the scheduled rate (``η_max``, ``η_min`` its fractions), the
        smoothed SNR and ``κ_t``; records the step along ``ĝ_t`` (rate × the clipping factor
        ``||clipped grad|| / ||ĝ_t||``) for the next secant."""
        last = self.oblrpo_last
        if "ghat" not in last:
            raise RuntimeError("optimizer step before any generation: no gradient estimate yet")
        rates = {g["lr"] for g in optimizer.param_groups}
        if len(rates) != 1:  # one step size along ĝ is what the secant divides by
            raise ValueError(f"lr_rule='local' needs one learning rate for every parameter group, got {sorted(rates)}")
        sched = rates.pop()
        snr = float(self.oblrpo_ema.snr) if self.oblrpo_ema.steps else 0.0
        eta = self.oblrpo_local.rate(snr, self.args.snr_factor_max * sched, self.args.snr_factor_min * sched)
        self.oblrpo_lr_factor = eta / sched
        ghat_sq = float(last["ghat"].pow(2).sum())
        grad_sq = sum(float(p.grad.detach().to(torch.float64).pow(2).sum())
                      for g in optimizer.param_groups for p in g["params"] if p.grad is not None)
        rho = math.sqrt(grad_sq / ghat_sq) if ghat_sq > 0 else 0.0
        self.oblrpo_local.stepped(eta * min(rho, 1.0))
        self._metrics["train"]["oblrpo/lr_factor"].append(self.oblrpo_lr_factor)
        self._metrics["train"]["oblrpo/kappa"].append(self.oblrpo_local.kappa(self.args.snr_factor_max * sched))

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
        snr = mode == "train" and self.args.lr_rule in ("snr", "local")
        local = mode == "train" and self.oblrpo_local is not None
        single = mode == "train" and self.oblrpo_single_pass
        scale = None
        if single or local:  # TRL's gradient is −c Σ λ A s over the generation batch (all processes)
            scale = loss_scale(self.args.loss_type, rewards.numel(), int(out["num_items_in_batch"]),
                               self.max_completion_length)
        model = self.accelerator.unwrap_model(self.model)
        rows = self.args.sq_norms_batch_size or self.args.per_device_train_batch_size
        with _no_checkpointing(model, self.args.gradient_checkpointing_kwargs):
            res = oblrpo_generation(model, LocalBatch.from_trl(out), rewards, self.oblrpo_estimator,
                                    group_size=G, comm=AccelerateComm(self.accelerator),
                                    source=self.args.sq_norms_source, rows_per_pass=rows,
                                    loss_type=self.args.loss_type if snr or single else None,
                                    update_factor=-scale * G if single else None,
                                    temperature=self.temperature, keep_sum=local)
        out["advantages"] = res.advantages[res.local].to(out["advantages"].dtype)
        if single:  # TRL's loss value at the sampling policy, per row: its micro-batch sums add up
            ell = res.lengths[res.local].to(torch.float64)
            lam = sequence_weights(self.args.loss_type, ell)
            P = self.accelerator.num_processes
            out["oblrpo_row_loss"] = -P * scale * lam * ell * res.advantages[res.local]
        logged = self._logs["advantages"]  # TRL logged its own advantages: replace them
        for _ in range(min(len(logged), res.advantages.numel())):
            logged.pop()
        logged.extend(res.advantages.tolist())
        pieces = None
        stats = diagnostics(rewards, res.sq_norms, res.lengths, G)
        if res.n_groups >= 2:  # the weighted pass ran: T7's pieces come free
            pieces = snr_pieces_dp(res.sum_group_sq, res.mean_grad_sq, res.n_groups)
        if snr:
            if informative(res.advantages, rewards):
                self.oblrpo_lr_factor = lr_factor(float(self.oblrpo_ema.update(pieces)),
                                                  self.args.snr_factor_min, self.args.snr_factor_max)
            elif self.oblrpo_lr_factor is None:  # nothing measured yet: the floor
                self.oblrpo_lr_factor = self.args.snr_factor_min
        extra = {}
        if local:  # ĝ_t = c G Σ_b u_b (TRL's scale, ascent), n̂_t = (c G B)² n̂(ū)
            extra["ghat"] = scale * G * res.group_grad_sum
            k = scale * G * res.n_groups
            self.oblrpo_local.observe(extra["ghat"], k * k * float(pieces.grad_sq_norm_hat))
        if pieces is not None:
            snr_ema = float(self.oblrpo_ema.snr) if self.oblrpo_ema.steps else float("nan")
            stats.update(snr_metrics(pieces, snr_ema, self.oblrpo_lr_factor))
            if local:  # its factor is set at the optimizer step (it needs the scheduled rate)
                del stats["lr_factor"]
        for k, v in stats.items():
            self._metrics[mode][f"oblrpo/{k}"].append(v)
        self.oblrpo_last = {"rewards": rewards, "sq_norms": res.sq_norms, "advantages": res.advantages,
                            "lengths": res.lengths, "pieces": pieces, **extra}
        return out

    # ------------------------------------------------------------------ the single-pass update
    def training_step(self, model, inputs, num_items_in_batch):
        """With the single pass, the gradient of this optimizer step was set in ``.grad`` by the
        generation (at the first micro-step of the accumulation window): no forward or backward
        here. The returned loss is TRL's loss value at the sampling policy for this micro-batch.
        The bookkeeping is ``GRPOTrainer.training_step``'s (step counter, ``step_time``)."""
        if not self.oblrpo_single_pass:
            return super().training_step(model, inputs, num_items_in_batch)
        t0 = time.perf_counter()
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        loss = inputs["oblrpo_row_loss"].sum().detach().to(torch.float32)
        self._step += 1
        self._current_train_step_time += time.perf_counter() - t0
        if self._step % self.current_gradient_accumulation_steps == 0:
            self._metrics["train"]["step_time"].append(self._current_train_step_time)
            self._current_train_step_time = 0.0
        return loss


def _check_plain_sgd(optimizer):
    """``lr_rule="local"`` needs every step along the gradient: SGD without momentum or decay."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    if not isinstance(inner, torch.optim.SGD):
        raise ValueError(f"lr_rule='local' needs torch.optim.SGD, got {type(inner).__name__}")
    for g in inner.param_groups:
        if g.get("momentum", 0) or g.get("weight_decay", 0) or g.get("nesterov", False):
            raise ValueError("lr_rule='local' needs SGD without momentum, nesterov or weight decay "
                             f"(optim_args gave momentum={g.get('momentum')}, "
                             f"weight_decay={g.get('weight_decay')})")


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
