"""What a ghost pass records: one ``Use`` per call of a hooked module (its factors), and the
``Stack`` of linear layers fed one input. ``GhostPass`` owns them; the rules read and fill them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(eq=False, slots=True)
class Use:
    """One call of a hooked module during the forward pass."""

    name: str
    module: nn.Module
    rule: object  # the module's rule (``rules.rule_for``)
    params: dict  # parameter attribute name -> trainable Parameter
    saved: torch.Tensor | None = None  # what the rule keeps: a (linear), ids (embedding), x̂ or y − c (norm)
    scale: torch.Tensor | None = None  # a norm's o + w when saved is y − c (divide by it)
    node: object = None  # grad_fn of the output, for the reachability check
    got_grad: bool = False
    grad: torch.Tensor | None = None  # b = ∂L/∂y, kept only with keep_factors
    # a trainable embedding's token ids: per group (U_b, inverse_gt), and over the batch (U, inverse_n)
    vocab: list | None = None
    batch_vocab: tuple | None = None
    span: slice | None = None  # positions where b is nonzero (linear factors only)
    in_key: tuple | None = None  # a linear weight's input, to find the layers that share it
    stack_id: int | None = -1  # its stack (``GhostPass._stack_of``): -1 not known yet, None alone


@dataclass(eq=False)
class Stack:
    """Linear layers fed one input (q/k/v, gate/up), kept as one weight ``[W_1; W_2; …]``:
    their output gradients concatenated along the output axis (``b``), one input ``a``."""

    params: list  # the members' weights, in forward order
    bounds: list  # each member's rows (start, end) of the stacked weight
    a: torch.Tensor  # (B, G, T, d_in)
    b: torch.Tensor  # (B, G, T, Σ d_out)


def first_sample(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's inputs with the first tensor (the hidden states) cut to sample 0."""
    if args:
        return (args[0][:1],) + tuple(args[1:]), kwargs
    key = next(iter(kwargs))
    return (), {**kwargs, key: kwargs[key][:1]}


def forward_identity(module: nn.Module):
    """The function behind ``module.forward`` (the one a ghost pass wraps, during a pass)."""
    fwd = module.forward
    fwd = getattr(fwd, "ghost_wrapped", fwd)
    return getattr(fwd, "__func__", fwd)
