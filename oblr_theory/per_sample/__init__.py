"""The per-sample gradient engine (torch only).

- ``GhostPass`` (``ghost_pass.py``): the within-group Gram of per-sample gradients (or its
  diagonal) in one forward and one backward, and with kept factors the per-group weighted
  gradients (``weighted.py``) without a second backward;
- ``rules/``: one rule per layer type (linear / Conv1D, embeddings, norms) and per kind of
  parameter sharing (tied, shared), registered in ``rules/__init__.py``;
- ``loop.py``: the reference, one backward per sequence;
- ``kernels.py``: the pure functions the rules share (precision policy, sparse rows, spans).

``oblr_theory.bridge.score_gram`` is the public front.
"""

from .ghost_pass import GhostPass
from .loop import group_gram, trainable_parameters
from .rules import PARAM_RULES, RULES, param_rule_for, rule_for

__all__ = ["GhostPass", "RULES", "PARAM_RULES", "rule_for", "param_rule_for", "group_gram",
           "trainable_parameters"]
