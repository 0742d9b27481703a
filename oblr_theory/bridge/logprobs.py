"""Per-token and per-sequence log-probabilities of completions on a Hugging Face causal LM.

Inputs have shape ``(B, G, T)``: ``B`` prompts, each with a group of ``G`` responses, padded to
``T`` tokens (left or right padding). Two masks describe each row:

- ``attention_mask[b, g, t] = 1`` for a real token (prompt or completion), 0 for padding;
- ``completion_mask[b, g, t] = 1`` when token ``t`` is a completion token whose log-probability
  ``log π(y_t | y_<t)`` (predicted from position ``t − 1``) enters the score. Prompt tokens still
  pass through the network; they are only excluded from the sum.

The sequence log-probability is ``log π(y | x) = Σ_{t ∈ completion} log π(y_t | y_<t)``, whose
gradient is the score ``s = ∇_θ log π(y | x)`` of docs/theory.md: Setting and notation.

Position ids are computed from the attention mask (``cumsum − 1``), so the padding side and the
amount of padding do not change any result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "SequenceLogProbs",
    "check_inputs",
    "position_ids_from_mask",
    "token_logprobs_from_logits",
    "logit_proxy_from_logits",
    "forward_logprobs",
    "sequence_logprobs",
    "check_temperature",
]


@dataclass
class SequenceLogProbs:
    """Log-probabilities of one forward pass.

    token_logp_bgt: (B, G, T) ``log π(y_t | y_<t)`` at completion tokens, 0 elsewhere.
    seq_logp_bg:    (B, G)    ``Σ_t token_logp_bgt``.
    lengths_bg:     (B, G)    number of completion tokens ``ℓ``.
    logits_ntv:     (B·G, T, V) raw logits of the flattened batch (kept for proxies), or None.
    """

    token_logp_bgt: torch.Tensor
    seq_logp_bg: torch.Tensor
    lengths_bg: torch.Tensor
    logits_ntv: torch.Tensor | None = None


def _as_mask(mask: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``mask`` as a bool tensor, or raise if it holds anything but 0/1."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    bad = ~((mask == 0) | (mask == 1))
    if bool(bad.any()):
        raise ValueError(f"{name} must contain only 0 and 1")
    return mask.to(torch.bool)


def check_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(B, G, T)`` inputs; return ``(attention_mask, completion_mask)`` as bool tensors.

    Raises ValueError naming the argument when a shape is wrong, a completion token lies outside
    the attention mask, position 0 is marked as a completion token (it has no prefix to be
    predicted from), or a sequence has no completion token (its score would be identically 0).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 3:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)
        raise ValueError(f"input_ids must be a tensor of shape (B, G, T), got {shape}")
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    for name, mask in (("attention_mask", attention_mask), ("completion_mask", completion_mask)):
        if not isinstance(mask, torch.Tensor) or mask.shape != input_ids.shape:
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)
            raise ValueError(
                f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}"
            )
    attn_bgt = _as_mask(attention_mask, "attention_mask")
    comp_bgt = _as_mask(completion_mask, "completion_mask")
    if bool((comp_bgt & ~attn_bgt).any()):
        raise ValueError("completion_mask marks tokens outside attention_mask (padding positions)")
    if bool(comp_bgt[..., 0].any()):
        raise ValueError(
            "completion_mask marks position 0, which has no prefix to be predicted from"
        )
    empty_bg = ~comp_bgt.any(-1)  # (B, G)
    if bool(empty_bg.any()):
        where = [tuple(i) for i in empty_bg.nonzero().tolist()[:5]]
        raise ValueError(
            f"completion_mask has no completion token in sequence(s) (b, g) = {where}; "
            "every sequence needs at least one"
        )
    return attn_bgt, comp_bgt


def position_ids_from_mask(attention_mask_nt: torch.Tensor) -> torch.Tensor:
    """Position ids ``p_t = (Σ_{t' ≤ t} m_t') − 1``, clamped at 0 on leading padding.

    Valid only if real tokens of a row are contiguous (left or right padding).
    """
    return (attention_mask_nt.long().cumsum(-1) - 1).clamp(min=0)


def _log_softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision logits are normalised in float32; float32/64 stay as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _tempered(logits_ntv: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z / τ`` in the log-softmax dtype, for the positions that predict ``t = 1..T−1``; the
    sampling policy at temperature ``τ`` is ``softmax(z / τ)``."""
    z_ntv = logits_ntv[:, :-1].to(_log_softmax_dtype(logits_ntv.dtype))
    return z_ntv if temperature == 1.0 else z_ntv / temperature


def check_temperature(temperature) -> float:
    """``τ`` as a float; refuses a non-finite or non-positive value, naming the argument."""
    t = float(temperature)
    if not (t > 0 and t != float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def token_logprobs_from_logits(
    logits_ntv: torch.Tensor, input_ids_nt: torch.Tensor, completion_nt: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token log-probabilities ``log π(y_t | y_<t) = z_{t−1}[y_t]/τ − logsumexp(z_{t−1}/τ)``
    (``τ``: the sampling temperature, 1 for plain ancestral sampling).

    Returns (N, T) with 0 wherever ``completion_nt`` is False (masked with ``where``, so a
    non-finite logit at a padding position never leaks into the result).
    """
    z_ntv = _tempered(logits_ntv, temperature)  # predicts t = 1..T-1
    target_nt = input_ids_nt[:, 1:]
    picked_nt = z_ntv.gather(-1, target_nt.unsqueeze(-1)).squeeze(-1)
    logp_nt = picked_nt - torch.logsumexp(z_ntv, dim=-1)  # (N, T-1)
    logp_nt = torch.cat([torch.zeros_like(logp_nt[:, :1]), logp_nt], dim=1)  # (N, T)
    return torch.where(completion_nt, logp_nt, torch.zeros_like(logp_nt))


def logit_proxy_from_logits(
    logits_ntv: torch.Tensor, input_ids_nt: torch.Tensor, completion_nt: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Forward-only logit proxy of ``S`` (T8): ``Σ_{t ∈ completion} 1 − 2 π_t(y_t) + ||π_t||²``
    with ``π_t = softmax(z_t / τ)`` (the proxy of the tempered policy, without its ``1/τ²``).

    ``||e_y − π||²/τ²`` is the squared norm of ``∂ log π(y)/∂z`` at one position; summing over
    positions ignores the Jacobian from logits to ``θ`` and the cross terms between positions.
    Returns (N,). Valid only as a proxy: it is not the norm of the parameter score.
    """
    with torch.no_grad():
        z_ntv = _tempered(logits_ntv, temperature)
        pi_ntv = torch.softmax(z_ntv, dim=-1)
        pi_y_nt = pi_ntv.gather(-1, input_ids_nt[:, 1:].unsqueeze(-1)).squeeze(-1)
        per_tok_nt = 1.0 - 2.0 * pi_y_nt + pi_ntv.pow(2).sum(-1)  # (N, T-1)
        per_tok_nt = torch.where(completion_nt[:, 1:], per_tok_nt, torch.zeros_like(per_tok_nt))
        return per_tok_nt.sum(-1) / (temperature * temperature)


def forward_logprobs(
    model: torch.nn.Module,
    input_ids_nt: torch.Tensor,
    attention_nt: torch.Tensor,
    completion_nt: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass on a flattened batch ``(N, T)``; returns ``(token_logp_nt, logits_ntv)``
    (log-probs of the policy at sampling temperature ``temperature``; the raw logits).

    The model is called with explicit position ids from the attention mask and no KV cache.
    Gradients flow if grad mode is on.
    """
    position_ids_nt = position_ids_from_mask(attention_nt)
    out = model(
        input_ids=input_ids_nt,
        attention_mask=attention_nt.long(),
        position_ids=position_ids_nt,
        use_cache=False,
    )
    logits_ntv = out.logits if hasattr(out, "logits") else out[0]
    return token_logprobs_from_logits(logits_ntv, input_ids_nt, completion_nt, temperature), logits_ntv


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    keep_logits: bool = False,
    temperature: float = 1.0,
) -> SequenceLogProbs:
    """Per-token and per-sequence completion log-probs for ``(B, G, T)`` inputs, one forward pass,
    of the policy at sampling temperature ``temperature`` (``softmax(z/τ)``).

    ``seq_logp[b, g] = Σ_t completion_mask[b, g, t] · log π(y_t | y_<t)``. The batch is flattened to
    ``(B·G, T)`` through the model. Runs with the current grad mode, so the result can be
    differentiated (e.g. the GRPO surrogate ``Σ_j A_j seq_logp_j / (B G)``).
    """
    attn_bgt, comp_bgt = check_inputs(input_ids, attention_mask, completion_mask)
    B, G, T = input_ids.shape
    token_logp_nt, logits_ntv = forward_logprobs(
        model, input_ids.reshape(B * G, T), attn_bgt.reshape(B * G, T), comp_bgt.reshape(B * G, T),
        check_temperature(temperature),
    )
    token_logp_bgt = token_logp_nt.reshape(B, G, T)
    return SequenceLogProbs(
        token_logp_bgt=token_logp_bgt,
        seq_logp_bg=token_logp_bgt.sum(-1),
        lengths_bg=comp_bgt.sum(-1),
        logits_ntv=logits_ntv if keep_logits else None,
    )
