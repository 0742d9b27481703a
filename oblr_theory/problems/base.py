"""What every enumerable problem provides: its outcomes per prompt, with exact probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Largest number of outcomes (sequences) per prompt that ``outcomes`` will enumerate.
MAX_OUTCOMES = 200_000
#: Largest number of float64 entries of one prompt's score matrix ``(n, d)``.
MAX_SCORE_ENTRIES = 50_000_000


@dataclass(frozen=True)
class Outcomes:
    """All outcomes ``y`` of one prompt ``x`` (n of them), exactly.

    probs (n,):     ``π_θ(y|x)``;          rewards (n,):  ``r(x, y)``;
    scores (n, d):  ``s = ∇θ log π_θ(y|x)``; sq_norms (n,): ``S = ||s||²``;
    lengths (n,):   ``ℓ = |y|``;           log_probs (n,): ``log π_θ(y|x)``.
    """

    probs: np.ndarray
    rewards: np.ndarray
    scores: np.ndarray
    sq_norms: np.ndarray
    lengths: np.ndarray
    log_probs: np.ndarray

    @property
    def size(self) -> int:
        return self.probs.shape[0]


def check_enumerable(n_outcomes: int, dim: int, what: str) -> None:
    """Refuse, with a clear message, a problem too large to enumerate."""
    if n_outcomes > MAX_OUTCOMES or n_outcomes * dim > MAX_SCORE_ENTRIES:
        raise ValueError(
            f"{what} is too large to enumerate: {n_outcomes:,} outcomes per prompt x {dim:,} "
            f"parameters (limits: {MAX_OUTCOMES:,} outcomes and {MAX_SCORE_ENTRIES:,} score "
            f"entries); use Monte Carlo instead (oblr_theory.montecarlo for bandits, "
            f"oblr_theory.sequences for token MDPs) or a smaller problem")


def check_prompt_probs(prompt_probs, num_prompts: int) -> np.ndarray:
    """``prompt_probs`` as a validated (X,) probability vector (uniform when None)."""
    if prompt_probs is None:
        return np.full(num_prompts, 1.0 / num_prompts)
    p = np.asarray(prompt_probs, dtype=np.float64)
    if p.shape != (num_prompts,):
        raise ValueError(f"prompt_probs must have shape ({num_prompts},), got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1) > 1e-12:
        raise ValueError("prompt_probs must be finite, >= 0 and sum to 1")
    return p


def check_prompt(x, num_prompts: int) -> int:
    if not (0 <= int(x) < num_prompts) or int(x) != x:
        raise ValueError(f"prompt index x must be an integer in [0, {num_prompts}), got {x!r}")
    return int(x)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise ``log softmax`` over the last axis, stable."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
