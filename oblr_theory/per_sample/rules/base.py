"""The two kinds of rule a ghost pass asks.

A ``LayerRule`` covers one module type's own parameters. Its per-sample gradient is linear in the
module's output gradient ``b = ∂L/∂y`` (``L = Σ_n seq_logp_n``; per-sample independence gives
``b_n = ∂ seq_logp_n / ∂y_n``), so one rule answers every question a pass asks of a layer:

- ``matches(module)``: does this rule cover the module's own parameters? (``rule_for`` asks the
  rules of ``RULES`` in order; the first that matches wins);
- ``check(name, module, own)``: refuse, naming the module, a configuration it cannot account for;
- ``capture(gp, use, x, output, args, kwargs)``: after the module's forward, keep in ``use`` what
  its per-sample gradients need (its input, token ids, a normalised input);
- ``output_grad(use, g)``: the gradient the rule's formulas read, from the one autograd hands it;
- ``add(gp, use, pname, p, g_bg_)``: add parameter ``p``'s contribution to the within-group Gram
  ``(B, G, G)``, or with ``gp.diagonal_only`` to its diagonal ``S_n = ||∇p_n||²``;
- ``per_sample(gp, use, pname, p, g_bg_)``: the materialised per-sample gradients ``(N, *p.shape)``
  (a parameter shared by several calls sums them before its Gram);
- ``weighted_source(wp, use, pname, p, g_bg_)``: the per-group weighted gradient
  ``V_b = Σ_g w_bg ∇p_bg`` as rows, the same rule applied to ``w b``.

A ``ParamRule`` covers a parameter used by more than one hooked call (``matches(uses)``): tied
embedding and output layer, or any other sharing. ``PARAM_RULES`` are asked in order.

``gp`` is the ``GhostPass`` (its helpers ``add``, ``add_parts``, ``add_rows``, ``to_panel``,
``linear_factors``), ``wp`` the ``WeightedPass`` (``fold``, ``folded_input``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class LayerRule(ABC):
    """One module type's per-sample gradient rule (see the module docstring)."""

    name = "layer"
    roots_backward = False  # its outputs root the backward (embeddings: hooked even if frozen)
    stackable = False  # linear weights fed one input are stacked into one
    tie_role: str | None = None  # "embedding" or "head": a use of a tied matrix

    @abstractmethod
    def matches(self, module: nn.Module) -> bool:
        ...

    def check(self, name: str, module: nn.Module, own: dict) -> None:
        """Refuse a configuration the rule cannot account for (default: none)."""

    def zero_scale(self, module: nn.Module, own: dict) -> torch.Tensor | None:
        """A tensor whose exact zeros change how ``capture`` works (a norm's ``o + w``), checked
        for all modules at once when the pass starts; None: none."""
        return None

    def exact_forward(self, module: nn.Module):
        """A forward computing in the input's dtype where the module's own upcasts (for float64
        reference models, ``bridge.models.make_float64_exact``); None: keep its own."""
        return None

    @abstractmethod
    def capture(self, gp, use, x: torch.Tensor, output: torch.Tensor, args, kwargs) -> None:
        ...

    def output_grad(self, use, g: torch.Tensor) -> torch.Tensor:
        return g

    @abstractmethod
    def add(self, gp, use, pname: str, p: torch.Tensor, g_bg_: torch.Tensor) -> None:
        ...

    @abstractmethod
    def per_sample(self, gp, use, pname: str, p: torch.Tensor, g_bg_: torch.Tensor) -> torch.Tensor:
        ...

    @abstractmethod
    def weighted_source(self, wp, use, pname: str, p: torch.Tensor, g_bg_: torch.Tensor):
        """``("rows", f)`` with ``f(slice) -> (B, R, …)`` rows of ``V`` along ``p``'s first axis
        (``f(None)``: all of them), or ``("sparse", (U, rows_bu…, cuts))``."""
        ...


class ParamRule(ABC):
    """A rule for a parameter used by several hooked calls (see the module docstring)."""

    name = "param"

    @abstractmethod
    def matches(self, uses: list) -> bool:
        ...

    @abstractmethod
    def add(self, gp, use, pname: str, p: torch.Tensor, g_bg_: torch.Tensor) -> None:
        ...

    def finalize(self, gp) -> None:
        """Add what was held back until every use's gradient arrived (default: nothing)."""

    def reset(self, gp) -> None:
        """Drop the pass's state kept by this rule (default: nothing)."""
