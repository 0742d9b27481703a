"""Scaled embeddings (Gemma 3's ``Gemma3TextScaledWordEmbedding``): ``y_t = s E[i_t]``.

The output gradient ``b`` arrives at the scaled output, so ``∂L/∂E[i_t] = s b_t`` and every
formula of the embedding rule holds with ``s b`` for ``b`` (``output_grad``). Matched by an
``nn.Embedding`` with an ``embed_scale`` attribute; the form ``y = s E[i]`` is checked on the
module's first call (``EmbeddingRule.check_form``).
"""

from __future__ import annotations

import torch
from torch import nn

from .embedding import EmbeddingRule


class ScaledEmbeddingRule(EmbeddingRule):
    """``y_t = s E[i_t]`` with ``s = module.embed_scale``."""

    name = "scaled_embedding"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Embedding) and hasattr(module, "embed_scale")

    def scale(self, module: nn.Module) -> torch.Tensor:
        s = module.embed_scale
        return s.to(module.weight.dtype) if isinstance(s, torch.Tensor) else torch.tensor(
            s, dtype=module.weight.dtype, device=module.weight.device)
