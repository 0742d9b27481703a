"""One OBLR-PO policy update on a Hugging Face causal LM (and, through the same code, GRPO,
RLOO, OPO, Dr.GRPO: any estimator of the registry).

One update, for a batch of ``B`` prompts with a group of ``G`` completions each:

1. sample ``G`` completions per prompt with HF ``generate`` (seeded; plain ancestral sampling at
   temperature 1 unless asked, so the samples follow ``π_θ`` exactly and T1 applies;
   :mod:`oblr_theory.bridge.rollout`);
2. rewards from the task;
3. the within-group Gram ``K_b = [s_bi · s_bj]`` of per-sequence scores with ``score_gram`` (its
   diagonal is ``S_bj``; proxies ``length`` / ``logit`` for comparison);
4. advantages ``A = f(r, S, ℓ)`` from the registry (:mod:`oblr_theory.estimators`);
5. the surrogate ``L(θ) = −(1/(BG)) Σ_bj A_bj log π_θ(y_bj | x_b)``, whose gradient is
   ``−ĝ`` with ``ĝ = (1/(BG)) Σ_bj A_bj s_bj`` (the batch estimate, docs/theory.md: Setting and notation);
6. the T7 SNR from the per-group gradients ``u_b = (1/G) Σ_j A_bj s_bj``, EMA-smoothed, and the
   T5 step ``η = clip(η_max · SNR/(1+SNR), η_min, η_max)``;
7. an SGD or AdamW step with that learning rate.

T7 needs only two numbers per batch (``oblr_theory.snr.snr_pieces_from_norms``, see
:func:`group_sq_norms`): ``Σ_b ||u_b||²`` with ``||u_b||² = A_bᵀ K_b A_b / G²``
from the within-group Gram, and ``||ĝ||²`` from the gradient the surrogate's
backward already produced. No cross-group Gram is formed, and under data parallelism both numbers
are sums (or the norm of the all-reduced gradient), so they are exact across ranks.

Cost: the Gram pass is one forward and one ghost backward. With ``score_gram(...,
keep_factors=True)`` the same pass also gives ``Σ_bj w_bj s_bj`` (``ScoreGram.weighted_gradients``),
so the update is one pass (``StepConfig.single_pass``, automatic when available); otherwise the
surrogate costs a second forward and backward (about ``1 + ghost/plain`` times a GRPO update).
The single pass computes only the Gram's diagonal ``S`` (``score_gram(..., diagonal_only=True)``,
about ``1/G`` of the full within-group Gram's extra work) and takes ``Σ_b ||u_b||² = B² tr K``
from the diagonal of the B × B Gram ``K`` that ``weighted_gradients(..., diagonal_only=True)``
returns (one reduction pass per layer, see ``OBLRPO.update``); the
two-pass path keeps the full within-group Gram (a cross-check of the same numbers).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .. import _ops, estimators
from ..snr import EMASNR, snr_hat, snr_lr
from .checks import check_update
from .gram import NonFiniteWeights, score_gram
from .logprobs import sequence_logprobs
from .rollout import Rollout, sample_rollout
from .surrogate import (batch_snr_pieces, grad_sq_norm, group_sq_norms, plugin_optimal_baseline,
                        surrogate_loss)
from .task import ArithmeticTask, as_task_tokenizer

# the surrogate's statistics are re-exported: ``from oblr_theory.bridge.step import surrogate_loss``
__all__ = ["StepConfig", "StepDiagnostics", "OBLRPO", "surrogate_loss", "group_sq_norms",
           "batch_snr_pieces", "grad_sq_norm", "plugin_optimal_baseline", "train", "gc_paused"]


# ============================================================================== the update
@contextlib.contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector inside the block (its state is restored after).

    An update allocates thousands of short-lived Python objects (tensor views, hook records,
    autograd nodes' wrappers), all freed by reference counting. While they live the
    collector's allocation counters still run, and every few updates they trigger a full
    collection, which traverses every object of the process (with a Hugging Face model and
    its libraries loaded, ~4·10⁵): a stall that can be longer than the update itself, at
    random updates. An update creates no reference cycles (``tests/bridge/test_step.py``
    checks it), so pausing frees nothing later that it would have freed now.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class StepConfig:
    """One update's knobs. ``estimator`` is any registry name; ``sq_norms`` chooses ``S``:
    ``"ghost"`` / ``"loop"`` (exact) or the proxies ``"length"`` / ``"logit"``. ``lr_rule``:
    ``"snr"`` (T5 with the T7 EMA) or ``"constant"`` (``η = eta_max``).
    """

    estimator: str = "optimal_loo"
    estimator_params: dict = field(default_factory=dict)
    aggregation: str = "seq-mean-token-sum"
    sq_norms: str = "ghost"
    lr_rule: str = "snr"
    eta_max: float = 0.1
    eta_min: float = 0.0
    ema_beta: float = 0.9
    optimizer: str = "sgd"
    single_pass: bool | None = None  # None: when score_gram supports keep_factors
    weight_decay: float = 0.0
    max_grad_norm: float | None = None

    def __post_init__(self):
        estimators.spec(self.estimator)  # clear error for unknown names
        for name, value, allowed in (("sq_norms", self.sq_norms, ("ghost", "loop", "length", "logit")),
                                     ("lr_rule", self.lr_rule, ("snr", "constant")),
                                     ("optimizer", self.optimizer, ("sgd", "adamw"))):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {allowed}")
        if not (0 <= self.eta_min <= self.eta_max):
            raise ValueError(f"need 0 <= eta_min <= eta_max, got {self.eta_min}, {self.eta_max}")


@dataclass
class StepDiagnostics:
    """What one update saw and did (floats, JSON-ready).

    ``plugin_baseline_mean``: the mean over groups of the inclusive plug-in ``Σ_j S_j r_j / Σ_j S_j``
    (:func:`plugin_optimal_baseline`, a sample estimate of T3's ``b*`` that includes each response's
    own reward); ``mean_baseline``: the mean of the group means ``r̄``;
    ``plugin_baseline_minus_mean_abs``: the mean over groups of ``|plug-in − r̄|``."""

    reward_mean: float
    reward_std: float
    frac_groups_with_signal: float
    plugin_baseline_mean: float
    mean_baseline: float
    plugin_baseline_minus_mean_abs: float
    S_mean: float
    S_std: float
    S_min: float
    S_max: float
    corr_S_length: float
    length_mean: float
    adv_abs_mean: float
    grad_sq_norm: float
    grad_norm: float
    snr_batch: float
    snr_ema: float
    grad_sq_norm_hat: float
    noise_var_hat: float
    lr: float
    loss: float
    time_gram_s: float
    time_surrogate_s: float
    time_step_s: float

    def asdict(self) -> dict[str, float]:
        return asdict(self)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two arrays' entries; NaN when either is constant or too short."""
    x, y = x.ravel(), y.ravel()
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


class OBLRPO:
    """OBLR-PO (or any registry estimator) updates of ``model`` from rollouts.

    ``reduce`` (optional) is the distributed hook: ``reduce(tensor) -> tensor`` sums a float64
    tensor over ranks (identity on one process); the gradient itself is averaged by DDP
    (``forward_model``, the wrapper that runs the surrogate's forward and backward; the Gram
    always runs on the unwrapped ``model``) or by ``grad_sync()``; ``||ĝ||²`` comes from
    :func:`grad_sq_norm`, which also reads FSDP's sharded gradients. ``prepare()`` (optional) runs
    at the start of every update (FSDP: reshard, so that the ghost pass sees the sharded
    parameters the optimizer holds). Whole groups stay on one rank
    (:mod:`oblr_theory.bridge.distributed`).
    """

    def __init__(self, model, config: StepConfig = StepConfig(), *, reduce=None, grad_sync=None,
                 forward_model=None, prepare=None):
        self.model, self.cfg = model, config
        self.forward_model = forward_model if forward_model is not None else model
        self.estimator = estimators.get(config.estimator, aggregation=config.aggregation,
                                        **config.estimator_params)
        if self.estimator.batch_coupled and reduce is not None:
            raise ValueError(f"estimator {config.estimator!r} with aggregation={config.aggregation!r} couples the "
                             "groups of a batch (e.g. one token count over the batch), but under data parallelism "
                             "each rank sees only its own groups; use a per-group aggregation")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no parameter with requires_grad")
        self.params = params
        if config.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=config.eta_max, weight_decay=config.weight_decay)
        else:
            self.opt = torch.optim.AdamW(params, lr=config.eta_max, weight_decay=config.weight_decay)
        self.ema = EMASNR(config.ema_beta)
        self.reduce = reduce or (lambda t: t)
        self.grad_sync = grad_sync or (lambda: None)
        self.prepare = prepare or (lambda: None)
        self.steps = 0

    # ------------------------------------------------------------------ pieces of the update
    @property
    def needs_gram(self) -> bool:
        return self.cfg.lr_rule == "snr" or "sq_norms" in self.estimator.needs

    @property
    def single_pass(self) -> bool:
        """Whether the update takes ``ĝ`` from the ghost pass's kept factors (one pass).

        Needs an exact ghost Gram in the update and a ``score_gram`` with ``keep_factors``;
        ``StepConfig.single_pass`` forces it on (error if unsupported) or off.
        """
        wanted = self.cfg.single_pass
        possible = self.needs_gram and self.cfg.sq_norms != "loop" and (
            self.cfg.lr_rule == "snr" or self.cfg.sq_norms == "ghost")
        if wanted is False or not possible:
            if wanted and not possible:
                raise ValueError("single_pass=True needs an exact ghost Gram in the update "
                                 "(lr_rule='snr' or sq_norms='ghost', not 'loop')")
            return False
        supported = "keep_factors" in inspect.signature(score_gram).parameters
        if wanted and not supported:
            raise ValueError("single_pass=True needs score_gram(..., keep_factors=True), which this "
                             "version of oblr_theory.bridge.gram lacks")
        return supported

    def sq_norms_and_gram(self, rollout: Rollout, keep_factors: bool = False):
        """``(S_bg, exact Gram (B, G, G) or None, ScoreGram holding factors or None)``.

        ``keep_factors=True`` (the single-pass update) runs the ghost pass with
        ``diagonal_only=True``: only ``S`` is computed (the advantages need nothing else; T7
        then reads the B × B Gram of ``weighted_gradients``), and the returned Gram is None.
        """
        args = (rollout.input_ids_bgt, rollout.attention_bgt, rollout.completion_bgt)
        sg, gram = None, None
        if self.cfg.lr_rule == "snr" or self.cfg.sq_norms in ("ghost", "loop"):
            if keep_factors:
                sg = score_gram(self.model, *args, method="ghost", keep_factors=True,
                                diagonal_only=True)
            else:
                sg = score_gram(self.model, *args, method="loop" if self.cfg.sq_norms == "loop" else "ghost")
            gram = None if sg.diagonal_only else sg.gram_bgg
        if self.cfg.sq_norms in ("ghost", "loop"):
            S = sg.sq_norms_bg
        else:
            S = torch.diagonal(score_gram(self.model, *args, method=self.cfg.sq_norms).gram_bgg,
                               dim1=-2, dim2=-1)
        return S, gram, (sg if keep_factors else None)

    def advantages(self, rollout: Rollout, S_bg: torch.Tensor | None,
                   check_values: bool = True) -> torch.Tensor:
        """``A = f(r, S, ℓ)`` from the registry, float64, on the rollout's device
        (``check_values``: see ``Estimator.advantages``). A batch-coupled estimator (e.g.
        ``aggregation="batch-token-mean"``: ``A_bj · BG / Σ_{b,k} ℓ_bk``) couples the rollout's
        ``B`` groups (axis 0)."""
        r = rollout.rewards_bg.to(torch.float64)
        ell = rollout.lengths_bg.to(torch.float64)
        S = S_bg.to(torch.float64) if S_bg is not None else None
        return self.estimator.advantages(r, sq_norms=S if "sq_norms" in self.estimator.needs else None,
                                         lengths=ell if "lengths" in self.estimator.needs else None,
                                         check_values=check_values,
                                         batch_axis=0 if self.estimator.batch_coupled else None)

    def _grad_sq_norm(self) -> torch.Tensor:
        return grad_sq_norm(self.params)

    # ------------------------------------------------------------------ one update
    def update(self, rollout: Rollout, apply: bool = True) -> StepDiagnostics:
        """One policy update from ``rollout`` (generation excluded); returns diagnostics.

        ``apply=False`` computes everything (gradient, SNR, EMA, learning rate) but leaves the
        parameters unchanged: a measurement at fixed ``θ``.

        Single pass (when :attr:`single_pass`): the ghost pass keeps its layer factors and
        ``ScoreGram.weighted_gradients(w)`` with ``w = −A/(BG)`` writes ``p.grad = −ĝ`` (the
        surrogate's gradient, exactly) without a second forward/backward. Otherwise two passes:
        the Gram, then the surrogate's forward and backward (through ``forward_model``).

        T7 needs ``Σ_b ||u_b||²`` with ``u_b = (1/G) Σ_j A_bj s_bj``. Two passes: from the
        within-group Gram, ``||u_b||² = A_bᵀ K_b A_b / G²`` (``group_sq_norms``). Single pass: the
        ghost pass computes only ``S`` (``diagonal_only``), and ``weighted_gradients`` returns
        the diagonal ``K_bb = ||v_b||²`` for ``v_b = Σ_j w_bj s_bj = −u_b / B``, so
        ``||u_b||² = B² K_bb`` and ``Σ_b ||u_b||² = B² tr K`` (the sign cancels in the square;
        ``B`` is this rank's number of groups, the sum is then reduced over ranks).
        ``||ĝ||²`` comes from ``p.grad`` in both paths (after the data-parallel average).

        No host synchronisation between the ghost pass and the weighted pass in the single pass:
        the rewards are checked before the ghost pass, ``S`` (sums of squares) and the
        advantages through the weights, which ``weighted_gradients`` checks after its pass. So on
        a GPU the host issues the weighted pass while the device still runs the ghost pass.
        Python's cyclic garbage collector is paused meanwhile (:func:`gc_paused`).
        """
        check_update(self.model, rollout)
        with gc_paused():
            return self._update(rollout, apply)

    def _update(self, rollout: Rollout, apply: bool) -> StepDiagnostics:
        B, G, _ = rollout.shape
        single = self.single_pass
        self.prepare()
        t0 = time.perf_counter()
        if single:  # now, while the device queue is short (see above)
            _ops.check_array("rewards", rollout.rewards_bg.to(torch.float64))
        S_bg, gram, sg = self.sq_norms_and_gram(rollout, keep_factors=single) if self.needs_gram \
            else (None, None, None)
        A_bg = self.advantages(rollout, S_bg, check_values=not single)
        t1 = time.perf_counter()

        self.opt.zero_grad(set_to_none=True)
        if single:
            w_bg = -A_bg / (B * G)  # the surrogate L = Σ w log π; its gradient is −ĝ
            try:
                K_bb = sg.weighted_gradients(w_bg.to(sg.gram_bgg.dtype), diagonal_only=True)
            except NonFiniteWeights as err:
                raise ValueError(f"estimator {self.cfg.estimator!r} gave non-finite advantages "
                                 f"(from the rewards and S = ||s||²); no update made: {err}") from err
            group_sq_sum = B**2 * torch.diagonal(K_bb).sum()  # Σ_b ||u_b||², u_b = −B v_b
            loss = (w_bg * sg.seq_logp_bg.double()).sum()
            self.grad_sync()  # data parallel: average the gradient over ranks
        else:
            group_sq_sum = group_sq_norms(gram, A_bg).sum() if gram is not None else None
            seq = sequence_logprobs(self.forward_model, rollout.input_ids_bgt, rollout.attention_bgt,
                                    rollout.completion_bgt)
            loss = surrogate_loss(seq.seq_logp_bg, A_bg)
            loss.backward()
            if self.forward_model is self.model:
                self.grad_sync()  # a DDP forward_model has averaged the gradient already
        t2 = time.perf_counter()

        grad_sq = self._grad_sq_norm()  # ||ĝ||² (p.grad = −ĝ)
        n_groups = int(self.reduce(torch.tensor(float(B), dtype=torch.float64)).item())
        if self.cfg.lr_rule == "snr":
            if n_groups < 2:
                raise ValueError(f"lr_rule='snr' needs B >= 2 prompt groups per batch (T7), got {n_groups}")
            trace = self.reduce(group_sq_sum)
            # two numbers to the host in one copy: T7 and T5 are scalar arithmetic, done in numpy
            trace_h, grad_sq_h = torch.stack([trace.to(torch.float64),
                                              grad_sq.to(trace.device, torch.float64)]).cpu().numpy()
            pieces = batch_snr_pieces(trace_h, n_groups, grad_sq_h)
            snr_batch = float(snr_hat(pieces))
            snr_ema = float(self.ema.update(pieces))
            lr = float(snr_lr(np.float64(snr_ema), self.cfg.eta_max, self.cfg.eta_min))
            gsq_hat, var_hat = float(pieces.grad_sq_norm_hat), float(pieces.noise_var_hat)
        else:
            snr_batch = snr_ema = gsq_hat = var_hat = float("nan")
            lr = self.cfg.eta_max
        if self.cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if apply:
            self.opt.step()
        t3 = time.perf_counter()
        self.steps += 1
        return self._diagnostics(rollout, S_bg, A_bg, grad_sq, snr_batch, snr_ema, gsq_hat, var_hat,
                                 lr, float(loss.detach()), (t1 - t0, t2 - t1, t3 - t2))

    def _diagnostics(self, rollout, S_bg, A_bg, grad_sq, snr_batch, snr_ema, gsq_hat, var_hat, lr,
                     loss, times) -> StepDiagnostics:
        """Statistics of the (B, G) arrays, computed on the host in numpy after one copy (on a
        GPU, a few dozen tiny kernels and host syncs fewer per update); standard deviations
        with Bessel's correction."""
        rows = [rollout.rewards_bg, rollout.lengths_bg, A_bg] + ([S_bg] if S_bg is not None else [])
        host = torch.stack([x.detach().to(A_bg.device, torch.float64) for x in rows]).cpu().numpy()
        r, ell, A = host[:3]
        nan = float("nan")
        if S_bg is not None:
            S = host[3]
            plugin_b, mean_b = plugin_optimal_baseline(r, S), r.mean(-1)
            bs = (float(plugin_b.mean()), float(mean_b.mean()), float(np.abs(plugin_b - mean_b).mean()))
            s_stats = (float(S.mean()), float(S.std(ddof=1)) if S.size > 1 else nan,
                       float(S.min()), float(S.max()))
            corr = _corr(S, ell)
        else:
            bs, s_stats, corr = (nan,) * 3, (nan,) * 4, nan
        return StepDiagnostics(
            reward_mean=float(r.mean()), reward_std=float(r.std(ddof=1)) if r.size > 1 else nan,
            frac_groups_with_signal=float((r.std(-1) > 0).mean()) if r.shape[-1] > 1 else nan,
            plugin_baseline_mean=bs[0], mean_baseline=bs[1], plugin_baseline_minus_mean_abs=bs[2],
            S_mean=s_stats[0], S_std=s_stats[1], S_min=s_stats[2], S_max=s_stats[3],
            corr_S_length=corr, length_mean=float(ell.mean()), adv_abs_mean=float(np.abs(A).mean()),
            grad_sq_norm=float(grad_sq), grad_norm=float(grad_sq.sqrt()), snr_batch=snr_batch,
            snr_ema=snr_ema, grad_sq_norm_hat=gsq_hat, noise_var_hat=var_hat, lr=lr, loss=loss,
            time_gram_s=times[0], time_surrogate_s=times[1], time_step_s=times[2])


def train(model, tokenizer, task: ArithmeticTask, config: StepConfig, steps: int, batch_size: int,
          group_size: int, max_new_tokens: int, seed: int = 0, progress: bool = False, *,
          sampler=None, callback=None) -> list[dict[str, Any]]:
    """A short OBLR-PO run: ``steps`` updates on fresh i.i.d. prompts; one diagnostics row each.

    Seeds (prompts and generation) come from ``SeedSequence(seed).spawn``. ``sampler`` (an object
    with ``sample(n, rng) -> problems``, default ``task``) draws each update's prompts, e.g. the
    task's law with held-out problems removed; ``callback(done, row)``, if given, runs after
    each update with the number of updates done and that update's row (evaluation hooks).
    """
    from tqdm.auto import tqdm

    algo = OBLRPO(model, config)
    tok = as_task_tokenizer(tokenizer)
    draw = task if sampler is None else sampler
    rows = []
    children = np.random.SeedSequence(seed).spawn(steps)
    for t in tqdm(range(steps), desc=f"train {config.estimator}", disable=not progress):
        rng = np.random.default_rng(children[t])
        problems = draw.sample(batch_size, rng)
        roll = sample_rollout(model, tok, task, problems, group_size, max_new_tokens,
                              seed=int(rng.integers(2**31)))
        model.train()
        rows.append({"step": t, **algo.update(roll).asdict()})
        if callback is not None:
            callback(t + 1, rows[-1])
    model.eval()
    return rows
