"""The per-sample gradient rules, registered in one place.

``RULES``: one rule per layer type, asked in order (the first whose ``matches(module)`` is true
covers the module's own parameters). ``PARAM_RULES``: rules for a parameter used by several
hooked calls, asked in order. A new layer type is one file here (a ``LayerRule`` subclass, see
``base.py``) and one line below; a rule that specialises another goes before it.
"""

from __future__ import annotations

from torch import nn

from .base import LayerRule, ParamRule
from .embedding import EmbeddingRule
from .linear import Conv1DRule, LinearRule
from .norm import NormRule
from .offset_norm import OffsetNormRule
from .scaled_embedding import ScaledEmbeddingRule
from .shared import SharedRule
from .tied import TiedRule

RULES: tuple[LayerRule, ...] = (
    LinearRule(),
    Conv1DRule(),
    ScaledEmbeddingRule(),  # before EmbeddingRule: a scaled embedding is an nn.Embedding
    EmbeddingRule(),
    NormRule(),
    OffsetNormRule(),
)

PARAM_RULES: tuple[ParamRule, ...] = (
    TiedRule(),
    SharedRule(),  # the fallback: any other sharing
)


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule covering ``module``'s own parameters, or None when no rule matches."""
    return next((r for r in RULES if r.matches(module)), None)


def param_rule_for(uses: list) -> ParamRule | None:
    """The rule for a parameter with these hooked ``uses``; None for a single use."""
    if len(uses) < 2:
        return None
    return next(r for r in PARAM_RULES if r.matches(uses))


__all__ = ["RULES", "PARAM_RULES", "LayerRule", "ParamRule", "rule_for", "param_rule_for"]
