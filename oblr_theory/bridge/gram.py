"""Within-group Gram matrices of per-sequence scores on a Hugging Face causal LM.

For inputs of shape ``(B, G, T)`` (``B`` prompts, a group of ``G`` responses each), the score of
response ``j`` of prompt ``b`` is

    s_bj = ∇_θ Σ_{t ∈ completion} log π_θ(y_t | y_<t)          (docs/theory.md: Setting and notation)

over every parameter with ``requires_grad``. ``score_gram`` returns ``K[b, i, j] = s_bi · s_bj``;
the diagonal is ``S_bj = ||s_bj||²``, the weight of the gradient-weighted baseline
``b* = E[r S] / E[S]`` (T3) and of the estimators ``optimal`` / ``optimal_loo``. The
off-diagonal terms give ``||ĝ_x||² = (1/G²) Σ_ij A_i A_j K_ij`` for any advantage map (T2, T7).

Methods:

- ``"ghost"``: one forward and one backward for the whole batch (``oblr_theory.per_sample``: a
  ``GhostPass`` and one rule per layer type, see ``docs/bridge.md``). Exact up to floating
  point; valid only if sequences are independent through the model (each flattened row only sees
  itself: true for causal LMs without batch-coupled layers).
- ``"loop"``: the reference. Per group, one forward and one backward per sequence
  (``per_sample.loop.group_gram``); exact for any model, about ``G`` times the cost of training.
- ``"length"``: forward only; ``diag(ℓ_j)`` (OPO's ``S ∝ length`` proxy, T8).
- ``"logit"``: forward only; ``diag(Σ_t 1 − 2π_t(y_t) + ||π_t||²)`` (verl's logit proxy, T8).

Proxies put their value on the diagonal and zeros off it: they do not estimate cross terms.

The update gradient from the same pass. With ``keep_factors=True`` (ghost only) the hooked layer
factors outlive the backward, and ``ScoreGram.weighted_gradients(w_bg)`` turns them, for weights
chosen after seeing the Gram (e.g. ``w = A / (B G)`` with ``A = f(r, S, ℓ)``), into

    .grad += Σ_bg w_bg s_bg = ∇_θ Σ_bg w_bg seq_logp_bg       (the surrogate's gradient)
    K_bc   = ⟨v_b, v_c⟩,  v_b = Σ_g w_bg s_bg                 (B × B, for T7's SNR)

without a second backward pass.

Diagonal only. ``score_gram(..., method="ghost", diagonal_only=True)`` computes only
``S_bj = ||s_bj||²`` and returns ``gram_bgg = diag(S)`` (exact diagonal, **zeros off it**;
``ScoreGram.diagonal_only`` says so). Per sample instead of per pair, it costs about ``1/G`` of
the full Gram's extra work: a linear weight needs ``S_n = Σ_{t,t'} (a_nt·a_nt')(b_nt·b_nt')``,
``T²(d_in + d_out)`` multiply-adds per sample, against ``G T²(d_in + d_out)`` for a row of the
full Gram (or, when cheaper, the materialised ``T d_in d_out``). It combines with
``keep_factors``: the advantages ``A = f(r, S, ℓ)`` need only ``S``, and T7's SNR takes the
B × B Gram of per-group gradients that ``weighted_gradients`` returns, not the within-group Gram.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..per_sample import GhostPass, group_gram, trainable_parameters
from ..per_sample.kernels import logit_span
from .checks import check_score_inputs
from .logprobs import check_inputs, check_temperature, forward_logprobs, logit_proxy_from_logits

__all__ = ["ScoreGram", "score_gram", "METHODS"]

METHODS = ("ghost", "loop", "length", "logit")
ROUTES = ("auto", "ghost", "materialise")


@dataclass
class ScoreGram:
    """Result of ``score_gram``.

    gram_bgg:       (B, G, G) float64 ``s_bi · s_bj`` (proxies: diagonal matrix of the proxy).
    seq_logp_bg:    (B, G) ``Σ_t log π(y_t | y_<t)`` over completion tokens, same forward pass.
    token_logp_bgt: (B, G, T) per-token completion log-probs (0 outside the completion).
    lengths_bg:     (B, G) completion lengths ``ℓ``.
    method:         the method that produced ``gram_bgg``.
    diagonal_only:  True when ``gram_bgg = diag(S)`` holds only the exact diagonal (zeros off
                    it are NOT the cross terms): ``score_gram(..., diagonal_only=True)``.

    With ``keep_factors=True`` (ghost) it also holds the layer factors for one call of
    ``weighted_gradients`` (the update gradient and the B × B per-group Gram, no second backward).
    """

    gram_bgg: torch.Tensor
    seq_logp_bg: torch.Tensor
    token_logp_bgt: torch.Tensor
    lengths_bg: torch.Tensor
    method: str
    diagonal_only: bool = False
    _factors: GhostPass | None = field(default=None, repr=False)

    @property
    def sq_norms_bg(self) -> torch.Tensor:
        """``S_bj = ||s_bj||²`` (or the proxy): the Gram diagonal, (B, G)."""
        return torch.diagonal(self.gram_bgg, dim1=-2, dim2=-1)

    def weighted_gradients(
        self, weights_bg: torch.Tensor, accumulate_grad: bool = True, diagonal_only: bool = False
    ) -> torch.Tensor:
        """Per-group weighted gradients from the kept ghost factors; no second backward.

        With ``v_b = Σ_g w_bg s_bg`` (``w`` = ``weights_bg``, shape (B, G); typically
        ``A_bg / (B G)`` so that ``Σ_b v_b = ĝ``):

        - ``accumulate_grad=True`` adds ``Σ_b v_b = ∇_θ Σ_bg w_bg seq_logp_bg`` into each trainable
          parameter's ``.grad`` (created as zeros when None), exactly as ``backward()`` of that
          surrogate would. It is an ascent direction: negate ``w`` (or the grads) for a loss.
          A parameter sharded by FSDP2 (a DTensor) gets, like FSDP's own backward, the mean over
          its mesh's ranks of their ``Σ_b v_b``, in its shards (every rank must call it).
        - returns ``K_bc = ⟨v_b, v_c⟩``, float64 (B, B): the Gram of per-group gradients that
          ``oblr_theory.snr.snr_pieces_from_gram`` reads (T7; ``u_b = B v_b`` when
          ``w = A/(B G)``, so pass ``B² K``).
        - ``diagonal_only=True`` computes only ``K_bb = ||v_b||²`` (zeros off the diagonal): one
          reduction pass over each ``V`` instead of a Gram; enough for T7's
          ``Σ_b ||u_b||² = B² tr K`` (the update's use).

        Per layer, ``V_b`` is the layer's per-sample rule applied to ``w_bg b_bg`` and summed over
        the group (one batched matmul for a linear weight: the flops of the usual weight-gradient
        matmul); tied and reused parameters are summed over their uses before the Gram. Call it
        once: the kept factors are released afterwards (``release_factors`` drops them without
        calling it).

        Valid only if: this result came from ``score_gram(..., method="ghost",
        keep_factors=True)`` and the parameters have not changed since (a parameter changed in
        place since the pass, e.g. by an optimizer step, is refused with a ValueError).
        """
        if self._factors is None:
            raise ValueError(
                "weighted_gradients needs the layer factors of the ghost pass: call "
                "score_gram(..., method='ghost', keep_factors=True) (got "
                f"method={self.method!r}, or the factors were already released)"
            )
        B, G = self.gram_bgg.shape[:2]
        if not isinstance(weights_bg, torch.Tensor) or tuple(weights_bg.shape) != (B, G):
            is_tensor = isinstance(weights_bg, torch.Tensor)
            shape = tuple(weights_bg.shape) if is_tensor else type(weights_bg)
            raise ValueError(f"weights_bg must be a tensor of shape (B, G) = {(B, G)}, got {shape}")
        # checked after the pass, so that the host does not wait here for the ghost pass's GPU
        # work; on failure every trainable .grad is cleared (it may hold non-finite values)
        finite = torch.isfinite(weights_bg).all()
        violation = self._factors.span_violation()
        params = list(self._factors.trainable.values())
        try:
            out = self._factors.weighted_gradients(
                weights_bg.to(self.gram_bgg.device), accumulate_grad, diagonal_only
            )
        finally:
            self._factors.release_factors()
            self._factors = None
        bad_span = violation is not None and bool(violation)
        if bad_span or not bool(finite):
            if accumulate_grad:
                for p in params:
                    p.grad = None
            check_span(violation)
            raise NonFiniteWeights("weights_bg must be finite (the parameters' .grad were cleared)")
        return out

    def release_factors(self) -> None:
        """Free the kept ghost factors (layer inputs and output gradients) without using them;
        raises if the ghost pass's output-layer crop did not hold (``check_span``)."""
        if self._factors is not None:
            violation = self._factors.span_violation()
            self._factors.release_factors()
            self._factors = None
            check_span(violation)


def check_span(violation: torch.Tensor | None) -> None:
    """Raise if the output layer's gradient was nonzero outside the completion positions its
    factors were cropped to (``GhostPass.span_violation``; one host sync)."""
    if violation is not None and bool(violation):
        raise ValueError(
            "the model's output layer (get_output_embeddings()) received a nonzero gradient at a "
            "position whose logits score no completion token, so it does not map positions to "
            "logits one to one; the ghost Gram cannot crop it (use method='loop')"
        )


class NonFiniteWeights(ValueError):
    """``weighted_gradients`` got weights with a NaN or an infinity (found after its pass)."""


def _flat(x_bgt: torch.Tensor) -> torch.Tensor:
    B, G, T = x_bgt.shape
    return x_bgt.reshape(B * G, T)


def _check_model(model: nn.Module, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if method == "ghost" and checkpointing:
        raise ValueError(
            "model has gradient checkpointing enabled; its recomputed forward would re-fire the "
            "ghost hooks. Disable it (model.gradient_checkpointing_disable()) or use method='loop'"
        )


def gram_loop(
    model: nn.Module, input_ids: torch.Tensor, attn_bgt: torch.Tensor, comp_bgt: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference Gram: per group, one forward of its ``G`` sequences and ``G`` backward passes.

    ``K[b, i, j] = Σ_params ⟨∂ seq_logp_bi/∂θ, ∂ seq_logp_bj/∂θ⟩`` (``per_sample.loop``).
    Returns ``(gram_bgg, token_logp_bgt)``. Memory: ``G`` copies of the trainable parameters.
    """
    params = trainable_parameters(model)
    grams, token_rows = [], []
    for b in range(input_ids.shape[0]):
        with torch.enable_grad():
            token_logp_gt, _ = forward_logprobs(model, input_ids[b], attn_bgt[b], comp_bgt[b],
                                                temperature)
            grams.append(group_gram(token_logp_gt.sum(-1), params))
        token_rows.append(token_logp_gt.detach())
    return torch.stack(grams), torch.stack(token_rows)


def gram_ghost(
    model: nn.Module,
    input_ids: torch.Tensor,
    attn_bgt: torch.Tensor,
    comp_bgt: torch.Tensor,
    route: str = "auto",
    max_elems: int = 2**26,
    keep_factors: bool = False,
    diagonal_only: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, GhostPass | None]:
    """Ghost Gram: one forward and one backward of ``L = Σ_n seq_logp_n`` for the whole batch.

    Per-sample gradients are rebuilt layer by layer by the rules of ``per_sample.rules``.
    ``route`` picks the linear-layer rule ("auto" by cost, or force "ghost" / "materialise");
    ``max_elems`` bounds the entries of any temporary per-sample block. Returns
    ``(gram_bgg, token_logp_bgt, ghost_pass)``, the pass (holding the factors) only when
    ``keep_factors``. ``diagonal_only``: ``gram_bgg = diag(S)``, only the per-sample squared
    norms computed (see the module docstring).
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    B, G, T = input_ids.shape
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    gp = GhostPass(model, B, G, route, max_elems, keep_factors=keep_factors,
                   diagonal_only=diagonal_only, head=head,
                   head_span=logit_span(_flat(comp_bgt)) if head is not None else None)
    with gp, torch.enable_grad():
        token_logp_nt, _ = forward_logprobs(
            model, _flat(input_ids), _flat(attn_bgt), _flat(comp_bgt), temperature
        )
        loss = token_logp_nt.sum()
        if gp.trainable and loss.requires_grad:
            gp.check_graph(loss)
            gp.backward(loss)
    gram_bgg = gp.finalize(input_ids.device)
    if not keep_factors:  # kept: checked at weighted_gradients' host sync instead
        check_span(gp.span_violation())
    kept = gp if keep_factors else None
    return gram_bgg, token_logp_nt.detach().reshape(B, G, T), kept


def _proxy(
    model: nn.Module,
    input_ids: torch.Tensor,
    attn_bgt: torch.Tensor,
    comp_bgt: torch.Tensor,
    method: str,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-only proxies on the diagonal: ``ℓ`` (length) or the logit proxy (T8)."""
    B, G, T = input_ids.shape
    with torch.no_grad():
        token_logp_nt, logits_ntv = forward_logprobs(
            model, _flat(input_ids), _flat(attn_bgt), _flat(comp_bgt), temperature
        )
        if method == "length":
            proxy_n = _flat(comp_bgt).sum(-1).to(torch.float64)
        else:
            proxy_n = logit_proxy_from_logits(logits_ntv, _flat(input_ids), _flat(comp_bgt),
                                              temperature)
    gram_bgg = torch.diag_embed(proxy_n.to(torch.float64).reshape(B, G))
    return gram_bgg, token_logp_nt.reshape(B, G, T)


def score_gram(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    method: str = "ghost",
    *,
    route: str = "auto",
    max_elems: int = 2**26,
    keep_factors: bool = False,
    diagonal_only: bool = False,
    temperature: float = 1.0,
) -> ScoreGram:
    """Within-group Gram ``K[b, i, j] = s_bi · s_bj`` of per-sequence scores, plus log-probs.

    ``s_bj = ∇_θ Σ_{t: completion_mask[b,j,t]=1} log π(y_t | y_<t)`` over parameters with
    ``requires_grad`` (T3's ``S = ||s||²`` is the diagonal). Inputs are ``(B, G, T)``; left or
    right padding; any float dtype (the Gram is returned in float64). The model is used in its
    current train/eval mode and its ``.grad`` fields are left untouched.

    ``keep_factors=True`` (ghost only) keeps the hooked layer factors so that the result's
    ``weighted_gradients(w_bg)`` can form the update gradient and the B × B Gram of per-group
    gradients without a second backward (memory: about the activations of a training step, held
    until that call or ``release_factors``).

    ``diagonal_only=True`` (ghost only) computes just ``S_bj = ||s_bj||²`` and returns
    ``gram_bgg = diag(S)``, zeros off the diagonal (about ``1/G`` of the full Gram's extra cost);
    use it when only ``S`` is needed (advantages), not ``||ĝ_x||²`` from the cross terms.

    ``temperature``: the scores are those of the policy the completions were sampled from,
    ``softmax(z/τ)`` (``s = ∇ Σ_t log softmax(z_t/τ)[y_t]``); 1 for plain sampling.

    Raises ValueError naming the argument for malformed masks, and naming the module for any
    trainable parameter the ghost method cannot account for.
    """
    temperature = check_temperature(temperature)
    _check_model(model, method)
    check_score_inputs(model, input_ids, attention_mask, completion_mask, method)
    if keep_factors and method != "ghost":
        raise ValueError(f"keep_factors=True needs method='ghost', got method={method!r}")
    if diagonal_only and method != "ghost":
        raise ValueError(f"diagonal_only=True needs method='ghost', got method={method!r} "
                         "(the proxies are diagonal already; 'loop' computes the full Gram)")
    attn_bgt, comp_bgt = check_inputs(input_ids, attention_mask, completion_mask)
    kept = None
    if method == "ghost":
        gram_bgg, token_logp_bgt, kept = gram_ghost(
            model, input_ids, attn_bgt, comp_bgt, route=route, max_elems=max_elems,
            keep_factors=keep_factors, diagonal_only=diagonal_only, temperature=temperature,
        )
    elif method == "loop":
        gram_bgg, token_logp_bgt = gram_loop(model, input_ids, attn_bgt, comp_bgt, temperature)
    else:
        gram_bgg, token_logp_bgt = _proxy(model, input_ids, attn_bgt, comp_bgt, method, temperature)
    return ScoreGram(
        gram_bgg=gram_bgg,
        seq_logp_bg=token_logp_bgt.sum(-1),
        token_logp_bgt=token_logp_bgt,
        lengths_bg=comp_bgt.sum(-1),
        method=method,
        diagonal_only=diagonal_only,
        _factors=kept,
    )
