"""The per-generation OBLR-PO pass of the TRL integration, written against a small communicator
so that one process, several processes and tests run the same code.

``oblrpo_generation(...)`` takes one process's completions (TRL's flat rows, group ``b`` of the
gathered batch is rows ``b·G .. b·G + G − 1``) and returns ``S`` and the advantages of the whole
gathered batch, and (when asked) the two T7 sums. Only public functions of
:mod:`oblr_theory.bridge` are used (``score_gram`` and its ``ScoreGram.weighted_gradients``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..bridge import score_gram
from ._trl_math import group_advantages, sequence_weights

__all__ = ["Comm", "LocalBatch", "GenerationResult", "oblrpo_generation"]


class Comm:
    """One process (the identity). Subclasses gather along dim 0 in rank order and sum in place."""

    rank, world = 0, 1

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_reduce_sum_(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass
class LocalBatch:
    """One process's completions: ``(n, T)`` ids and attention, the loss mask over the same ``T``
    columns (prompt columns 0), and the completion lengths ``ℓ`` (loss tokens)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.loss_mask.sum(-1)

    @classmethod
    def from_trl(cls, out: dict) -> "LocalBatch":
        """From the dict of ``GRPOTrainer._generate_and_score_completions`` (left-padded prompt,
        right-padded completion; ``tool_mask`` multiplies the completion mask as in TRL's loss)."""
        comp = out["completion_mask"]
        if "tool_mask" in out:
            comp = comp * out["tool_mask"]
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attn = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        loss = torch.cat([torch.zeros_like(out["prompt_mask"]), comp], dim=1)
        return cls(ids, attn, loss)


@dataclass
class GenerationResult:
    """Gathered (all processes, TRL order) ``sq_norms`` (computed for every estimator, for the
    diagnostics), ``advantages`` (float64), ``lengths``; this process's slice; the T7 sums (None unless
    asked): ``sum_group_sq = Σ_b ||u_b||²`` and ``mean_grad_sq = ||ū||²`` over all ``n_groups``;
    ``group_grad_sum``: ``Σ_b u_b`` over all processes, flattened over the trainable parameters
    in ``model.parameters()`` order, float64 (only when asked with ``keep_sum``)."""

    sq_norms: torch.Tensor | None
    advantages: torch.Tensor
    lengths: torch.Tensor
    local: slice
    sum_group_sq: float | None = None
    mean_grad_sq: float | None = None
    n_groups: int = 0
    group_grad_sum: torch.Tensor | None = None


def _sq_norms_rows(model, batch: LocalBatch, source: str, rows: int, temperature: float) -> torch.Tensor:
    """``S_n`` per row, ``rows`` rows per pass, float64 on the batch's device; a row with no loss
    token has ``s = 0`` exactly and is not passed to ``score_gram`` (which refuses it)."""
    n = batch.input_ids.shape[0]
    S = torch.zeros(n, dtype=torch.float64, device=batch.input_ids.device)
    live = torch.nonzero(batch.lengths > 0).flatten()
    for c0 in range(0, live.numel(), rows):
        idx = live[c0:c0 + rows]
        sg = score_gram(model, batch.input_ids[idx][None], batch.attention_mask[idx][None],
                        batch.loss_mask[idx][None], method=source, temperature=temperature,
                        **({"diagonal_only": True} if source == "ghost" else {}))
        S[idx] = sg.sq_norms_bg[0].to(torch.float64)
    return S


@contextlib.contextmanager
def _scratch_grads(params, keep_factor: float | None = None):
    """Empty ``.grad`` fields inside the block. After it, the caller's gradients are restored, or
    (``keep_factor`` given, and the block finished) become ``saved + keep_factor · scratch``."""
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    done = False
    try:
        yield
        done = True
    finally:
        for p, g in zip(params, saved):
            scratch = p.grad
            p.grad = g
            if done and keep_factor is not None and scratch is not None:
                scratch.mul_(keep_factor)
                p.grad = scratch if g is None else g.add_(scratch)


def _groups_view(batch: LocalBatch, b0: int, b1: int, G: int):
    rows = slice(b0 * G, b1 * G)
    return tuple(x[rows].reshape(b1 - b0, G, -1) for x in
                 (batch.input_ids, batch.attention_mask, batch.loss_mask))


def oblrpo_generation(model, batch: LocalBatch, rewards_all: torch.Tensor, estimator, *,
                      group_size: int, comm: Comm = Comm(), source: str = "ghost",
                      rows_per_pass: int = 8, loss_type: str | None = None,
                      update_factor: float | None = None, temperature: float = 1.0,
                      keep_sum: bool = False) -> GenerationResult:
    """``S``, advantages and (``loss_type`` given) the T7 sums for one generation batch; with
    ``update_factor`` also the training gradient (the single-pass update).

    ``temperature``: TRL's sampling temperature ``τ``; scores, ``S`` and the update are those of
    ``softmax(z/τ)``, the policy TRL samples from and differentiates.

    ``rewards_all``: the gathered rewards (all processes, TRL order). ``S`` of this process's
    rows comes from ``score_gram`` (``source``: ``"ghost"`` exact, ``"logit"``/``"length"``
    proxies) and is gathered like the rewards, so the registry sees whole groups even when a
    group is split across processes (``estimator.advantages`` on ``(B, G)``).

    T7 (``loss_type`` set): ``u_b = (1/G) Σ_j λ_j A_bj s_bj`` (``λ``: TRL's per-sequence
    weight for that loss type, :func:`sequence_weights`). Per chunk of whole local groups one
    ghost pass keeps its factors, ``ScoreGram.weighted_gradients(w)`` with ``w = λA/G`` adds
    ``Σ_b u_b`` into scratch ``.grad`` fields and returns ``||u_b||²``; then ``Σ_b ||u_b||²`` is
    summed and the ``.grad`` fields all-reduced across processes, giving ``||ū||²`` exactly.
    With ``source="ghost"`` that one pass also gives ``S`` (no separate ``S`` pass): the groups
    are whole on this process, so its advantages need no other process's ``S``.

    Single-pass update (``update_factor = κ`` given, ``source="ghost"``): the all-reduced
    ``Σ_b u_b`` over all processes is kept, ``.grad ← .grad + κ Σ_b u_b``. With
    ``κ = −c G`` (``c``: :func:`~._trl_math.loss_scale`) this is TRL's on-policy gradient
    ``−c Σ_j λ_j A_j s_j`` of the whole generation batch, already averaged over processes, so the
    caller's forward and backward of TRL's loss are not needed. ``keep_sum``: a float64 copy of
    ``Σ_b u_b`` is returned too (memory: one copy of the trainable parameters in float64).

    Valid only if (T7): every group is whole on one process, the model's trainable parameters
    are not sharded, and the caller's gradients may be set aside during the call (they are).
    """
    G = int(group_size)
    n = batch.input_ids.shape[0]
    local = slice(comm.rank * n, (comm.rank + 1) * n)
    ell = batch.lengths
    lengths_all = comm.gather(ell)
    weighted = loss_type is not None
    if update_factor is not None and not (weighted and source == "ghost"):
        raise ValueError("update_factor needs loss_type and source='ghost' (the update comes from "
                         "the ghost pass's weighted gradients)")
    if keep_sum and not weighted:
        raise ValueError("keep_sum needs loss_type (the weighted pass forms Σ_b u_b)")
    if weighted and n % G:
        raise ValueError(f"lr_rule='snr' and the single-pass update need whole groups on each process: "
                         f"{n} local completions are not a multiple of num_generations={G}")
    if weighted and not bool((ell > 0).all()):
        raise ValueError("lr_rule='snr' and the single-pass update need at least one loss token per "
                         "completion (mask_truncated_completions or tool masks left a completion empty)")
    fused = weighted and source == "ghost"
    result_S = None
    params = [p for p in model.parameters() if p.requires_grad]
    if fused:
        S_loc = torch.zeros(n, dtype=torch.float64, device=ell.device)
        A_loc = torch.zeros(n, dtype=torch.float64, device=ell.device)
        r_loc = rewards_all[local]
    else:
        S_loc = _sq_norms_rows(model, batch, source, rows_per_pass, temperature)  # also diagnostics
        S_all = comm.gather(S_loc)
        A_all = group_advantages(estimator, rewards_all, S_all, lengths_all, G)
        A_loc, result_S = A_all[local], S_all
    if not weighted:
        return GenerationResult(result_S, A_all, lengths_all, local)

    lam = sequence_weights(loss_type, ell)
    gpc = max(1, rows_per_pass // G)  # whole groups per ghost pass
    sum_sq = torch.zeros((), dtype=torch.float64, device=ell.device)
    with _scratch_grads(params, keep_factor=update_factor):
        for b0 in range(0, n // G, gpc):
            b1 = min(n // G, b0 + gpc)
            rows = slice(b0 * G, b1 * G)
            sg = score_gram(model, *_groups_view(batch, b0, b1, G), method="ghost",
                            keep_factors=True, diagonal_only=True, temperature=temperature)
            if fused:
                S_loc[rows] = sg.sq_norms_bg.reshape(-1).to(torch.float64)
                A_loc[rows] = group_advantages(estimator, r_loc[rows], S_loc[rows], ell[rows], G)
            w_bg = (lam[rows] * A_loc[rows] / G).reshape(b1 - b0, G)
            K_bb = sg.weighted_gradients(w_bg.to(sg.gram_bgg.dtype), accumulate_grad=True,
                                         diagonal_only=True)
            sum_sq = sum_sq + torch.diagonal(K_bb).sum()
        grad_sq = torch.zeros((), dtype=torch.float64, device=ell.device)
        for p in params:
            if p.grad is None:  # no local group reached it: its local sum is 0
                p.grad = torch.zeros_like(p)
            comm.all_reduce_sum_(p.grad)
            grad_sq = grad_sq + p.grad.to(torch.float64).pow(2).sum()
        kept = (torch.cat([p.grad.detach().reshape(-1).to(torch.float64) for p in params])
                if keep_sum else None)
    sum_sq = comm.all_reduce_sum_(sum_sq)
    B = int(comm.all_reduce_sum_(torch.tensor(float(n // G), dtype=torch.float64, device=ell.device)).item())
    if fused:
        result_S, A_all = comm.gather(S_loc), comm.gather(A_loc)
    return GenerationResult(result_S, A_all, lengths_all, local, float(sum_sq),
                            float(grad_sq) / B**2, B, kept)
