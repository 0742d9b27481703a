"""oblr_theory: exact and statistical verification of policy-gradient estimators (OBLR-PO theory).

The math is in docs/theory.md (labels T1–T8); the estimator registry is :mod:`oblr_theory.estimators`.
Torch is needed only by :mod:`oblr_theory.bridge`, imported lazily.
"""

__version__ = "0.1.0"

from . import peers  # noqa: E402,F401  (registers the peers' estimators in the registry)
