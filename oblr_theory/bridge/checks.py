"""Refusals before a Gram or an update: model states and inputs that give quietly wrong numbers.

Each check raises a ValueError that names the cause and the fix; none changes the model or the
inputs. :func:`check_score_inputs` runs at the top of ``score_gram`` and :func:`check_update` at
the top of ``OBLRPO.update``; they combine the single checks below.

- **Active dropout.** The score ``s = ∇_θ log π_θ(y | x)`` (docs/theory.md, "Setting and notation") is the gradient
  of a deterministic function of ``θ``. With dropout active (a dropout module with ``p > 0`` in
  train mode, or a config's attention dropout ``> 0`` while the model trains) the forward pass
  is random, so log-probs, the Gram and ``S = ||s||²`` are those of a random sub-network, and
  two identical calls differ.
- **No trainable parameter.** ``s`` is taken over the parameters with ``requires_grad``; with
  none, every Gram is 0 and the gradient-weighted baseline ``b* = E[r S] / E[S]`` (T3) falls back
  to its unweighted form (``optimal_loo`` quietly becomes ``rloo``).
- **Attention-mask layout.** The real tokens of a sequence must form one contiguous run: padding
  before it (left padding), after it (right padding) or both (a rollout: left-padded prompt,
  right padding after ``<eos>``), never a zero between two ones. Position ids are
  ``cumsum(mask) − 1`` (``logprobs.position_ids_from_mask``), which is right only for such a run.
- **Token ids** in ``[0, vocab_size)`` of the model's input embedding, padding positions included
  (they are embedded too): out of range is an index error on a CPU and an asynchronous device
  assert on a GPU.
- **Causality** (:func:`check_causal`, optional, one small forward): the logits at position ``t``
  must not depend on tokens after ``t``, or ``Σ_t log π(y_t | y_<t)`` is not a sequence
  log-probability.
"""

from __future__ import annotations

import torch
from torch import nn

from .logprobs import check_inputs

__all__ = ["check_no_active_dropout", "check_trainable", "check_attention_layout", "check_token_ids",
           "check_causal", "check_score_inputs", "check_update", "vocab_size_of"]

#: Config fields holding a dropout probability that a model applies in train mode without a
#: dropout module (e.g. Qwen3 and Llama pass ``attention_dropout`` to the attention kernel).
CONFIG_DROPOUT_FIELDS = ("attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop",
                         "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob",
                         "dropout", "activation_dropout")


def check_no_active_dropout(model: nn.Module) -> None:
    """Refuse a model whose forward pass is random: a dropout module with ``p > 0`` in train
    mode, or a config dropout field (``CONFIG_DROPOUT_FIELDS``) ``> 0`` with any module training."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.training and mod.p > 0:
            raise ValueError(
                f"dropout is active: module {name or type(mod).__name__!r} has p={mod.p} in train "
                "mode, so log-probs and scores are those of a random sub-network (two identical "
                "calls differ). Call model.eval() (eval mode changes nothing else in a decoder LM "
                "without batch norm) or set its dropout probabilities to 0"
            )
    if not any(mod.training for mod in model.modules()):
        return
    cfg = getattr(model, "config", None)
    for key in CONFIG_DROPOUT_FIELDS:
        p = getattr(cfg, key, None)
        if isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0:
            raise ValueError(
                f"dropout is active: model.config.{key}={p} and the model is in train mode, so "
                "log-probs and scores are those of a random sub-network (two identical calls "
                f"differ). Call model.eval() or set model.config.{key} = 0.0"
            )


def check_trainable(model: nn.Module) -> None:
    """Refuse a model with no parameter that has ``requires_grad`` (every score would be 0)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "model has no parameter with requires_grad, so every score s = ∇_θ log π is 0: the "
            "Gram would be all zeros and 'optimal_loo' would quietly become 'rloo'. Unfreeze the "
            "parameters to train (p.requires_grad_(True)), or use a proxy (method='length' or "
            "'logit') if no gradient is wanted"
        )


def check_attention_layout(attention_bgt: torch.Tensor, name: str = "attention_mask") -> None:
    """Refuse a sequence whose real tokens (ones of the 0/1 mask) are not one contiguous run.

    Allowed: left padding, right padding, or both. A run starts where a one follows a zero (or at
    position 0); a gap means two starts in one sequence.
    """
    m = attention_bgt.to(torch.bool)
    starts = m[..., :1].long().sum(-1) + (m[..., 1:] & ~m[..., :-1]).long().sum(-1)
    gap = starts > 1
    if bool(gap.any()):
        where = [tuple(i) for i in gap.nonzero().tolist()[:5]]
        raise ValueError(
            f"{name} has a gap (a 0 between two 1s) in sequence(s) {where}: the real tokens of a "
            "sequence must be contiguous, with padding only before them (left), after them "
            "(right) or both. Move the padding to the ends of the sequence"
        )


def vocab_size_of(model: nn.Module) -> int | None:
    """Rows of the model's input embedding (``config.vocab_size`` as a fallback), or None."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    n = getattr(emb, "num_embeddings", None)
    if n is None:
        n = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(n) if n is not None else None


def check_token_ids(model: nn.Module, input_ids: torch.Tensor, name: str = "input_ids") -> None:
    """Refuse token ids outside ``[0, vocab_size)`` of the model's input embedding."""
    V = vocab_size_of(model)
    if V is None or input_ids.numel() == 0:
        return
    lo_hi = torch.stack([input_ids.min(), input_ids.max()]).tolist()  # one host sync
    if lo_hi[0] < 0 or lo_hi[1] >= V:
        raise ValueError(
            f"{name} holds token ids in [{lo_hi[0]}, {lo_hi[1]}], outside the model's vocabulary "
            f"[0, {V}) (padding positions included: they are embedded too). Encode with the "
            "model's own tokenizer and pad with its pad_token_id"
        )


def check_causal(model: nn.Module, length: int = 4) -> None:
    """Refuse a model whose logits at position ``t`` depend on tokens after ``t``.

    One forward of two sequences of ``length`` tokens that differ only in the last token. A
    causal model computes the logits at positions ``0..length−2`` of both from identical values:
    identical, or (were a kernel to order a length-``n`` accumulation differently per row) apart
    by O(n ε) relative, ``ε`` the unit roundoff of the logits' dtype. The refusal threshold is
    ``√ε · max|z|`` (above n ε for any n < 1/√ε); a bidirectional model changes them by a
    fraction of their size, O(1) relative.
    """
    V = vocab_size_of(model)
    if V is None or V < 2:
        return
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    ids = torch.zeros(2, length, dtype=torch.long, device=device)
    ids[:, :-1] = torch.arange(length - 1, device=device) % V
    ids[1, -1] = 1
    with torch.no_grad():
        z = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    eps = torch.finfo(z.dtype).eps
    z = z.double()
    change = float((z[0, :-1] - z[1, :-1]).abs().max())
    if change > eps**0.5 * float(z.abs().max()):
        raise ValueError(
            f"model {type(model).__name__} is not causal: its logits at earlier positions change "
            f"(by {change:.3g}) when only the last token changes, so Σ_t log π(y_t | y_<t) is not "
            "a sequence log-probability. Use a causal (decoder-only) language model"
        )


def check_score_inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       completion_mask: torch.Tensor, method: str = "ghost") -> None:
    """All refusals of ``score_gram``: input shapes and masks (``logprobs.check_inputs``), the
    mask layout, token ids, active dropout, and (for the exact methods ``"ghost"`` / ``"loop"``)
    at least one trainable parameter."""
    attn_bgt, _ = check_inputs(input_ids, attention_mask, completion_mask)
    check_attention_layout(attn_bgt)
    check_token_ids(model, input_ids)
    check_no_active_dropout(model)
    if method in ("ghost", "loop"):
        check_trainable(model)


def check_update(model: nn.Module, rollout) -> None:
    """All refusals of ``OBLRPO.update`` for a ``Rollout``: those of :func:`check_score_inputs`
    with the trainable-parameter check (an update always needs a gradient)."""
    check_score_inputs(model, rollout.input_ids_bgt, rollout.attention_bgt, rollout.completion_bgt)
