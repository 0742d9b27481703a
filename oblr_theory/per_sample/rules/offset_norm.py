"""Offset norms (Gemma, Gemma 2, Gemma 3 RMSNorm): ``y = x̂ ⊙ (1 + w)``.

The norm rule with offset ``o = 1`` (formulas in ``norm.py``): ``∇w_n = Σ_pos b_n ⊙ x̂_n`` with
``x̂ = y / (1 + w)``. Matched by a norm whose probe (``weight_offset``) finds ``y(w=1) = 2 y(w=0)``.
"""

from __future__ import annotations

from .norm import NormRule


class OffsetNormRule(NormRule):
    """``y = x̂ ⊙ (1 + w) + c``."""

    name = "offset_norm"
    offset = 1.0
