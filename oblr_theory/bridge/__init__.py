"""Torch bridge: the project's estimators and statistics on Hugging Face causal LMs.

Imported lazily: ``import oblr_theory`` (and ``import oblr_theory.bridge``) never imports torch;
the first attribute access does. Needs the ``[torch]`` extra.

- ``score_gram(model, input_ids, attention_mask, completion_mask, method="ghost")``: within-group
  Gram matrices ``(B, G, G)`` of per-sequence scores (diag = ``S_j``), plus log-probs.
- ``sequence_logprobs(model, input_ids, attention_mask, completion_mask)``: per-token and
  per-sequence completion log-probs for ``(B, G, T)`` inputs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "score_gram": "gram",
    "ScoreGram": "gram",
    "METHODS": "gram",
    "sequence_logprobs": "logprobs",
    "SequenceLogProbs": "logprobs",
    "token_logprobs_from_logits": "logprobs",
    "logit_proxy_from_logits": "logprobs",
    "position_ids_from_mask": "logprobs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'oblr_theory.bridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
