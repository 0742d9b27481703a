"""Softmax bandits (docs/theory.md: Problems with exact answers): one or several prompts, K arms each, exact everything."""

from __future__ import annotations

import numpy as np

from .base import Outcomes, check_prompt, check_prompt_probs, log_softmax


class SoftmaxBandit:
    """``π(a|x) = softmax(θ_x)_a`` over ``K`` arms, rewards ``r(x, a)``.

    ``logits`` and ``rewards`` have shape ``(K,)`` (one prompt) or ``(X, K)``; ``θ`` is ``logits``
    flattened row-major, so prompt ``x`` owns ``θ[x*K:(x+1)*K]``. Exact facts used throughout:
    ``s(a) = e_a − π`` (within prompt x's block), ``S(a) = 1 − 2π_a + ||π||²`` (T8),
    ``∇J_x = π ⊙ (r − J_x)``. With rewards in ``[0, 1]``, ``J`` is ``5/2``-smooth (Mei et al.
    2020), and ``L ≤ 5/2 · (max r − min r)`` since the Hessian ignores a reward shift.
    Every arm has length 1.
    """

    def __init__(self, logits, rewards, prompt_probs=None):
        z = np.asarray(logits, dtype=np.float64)
        r = np.asarray(rewards, dtype=np.float64)
        if z.ndim not in (1, 2) or z.shape[-1] < 2:
            raise ValueError(f"logits must have shape (K,) or (X, K) with K >= 2, got {z.shape}")
        if r.shape != z.shape:
            raise ValueError(f"rewards must have the logits' shape {z.shape}, got {r.shape}")
        for name, a in (("logits", z), ("rewards", r)):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} contains non-finite values")
        self.single = z.ndim == 1
        self.logits = np.atleast_2d(z).copy()
        self.rewards = np.atleast_2d(r).copy()
        self.num_prompts, self.num_arms = self.logits.shape
        self.prompt_probs = check_prompt_probs(prompt_probs, self.num_prompts)

    # -- parameters ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.logits.size

    @property
    def theta(self) -> np.ndarray:
        return self.logits.reshape(-1).copy()

    def with_theta(self, theta) -> "SoftmaxBandit":
        """The same bandit at parameters ``theta`` (shape ``(d,)``)."""
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (self.dim,):
            raise ValueError(f"theta must have shape ({self.dim},), got {theta.shape}")
        z = theta.reshape(self.logits.shape)
        return SoftmaxBandit(z[0] if self.single else z, self.rewards[0] if self.single else self.rewards,
                             self.prompt_probs)

    def policy(self, x) -> np.ndarray:
        """``π(·|x)``, shape (K,)."""
        return np.exp(log_softmax(self.logits[check_prompt(x, self.num_prompts)]))

    # -- enumeration --------------------------------------------------------------------------
    def outcomes(self, x) -> Outcomes:
        """The K arms of prompt ``x`` with exact probabilities, rewards and scores."""
        x = check_prompt(x, self.num_prompts)
        K = self.num_arms
        logp = log_softmax(self.logits[x])
        pi = np.exp(logp)
        scores = np.zeros((K, self.dim))
        scores[:, x * K:(x + 1) * K] = np.eye(K) - pi  # s(a) = e_a − π
        sq = 1.0 - 2.0 * pi + pi @ pi  # S(a) = 1 − 2π_a + ||π||²  (T8)
        return Outcomes(pi, self.rewards[x].copy(), scores, sq, np.ones(K), logp)

    def hessian(self) -> np.ndarray:
        """Exact ``∇²J`` (d, d): per prompt ``p_x [diag(π⊙c) − (π⊙c)πᵀ − π(π⊙c)ᵀ]``, ``c = r − J_x``."""
        H = np.zeros((self.dim, self.dim))
        K = self.num_arms
        for x in range(self.num_prompts):
            pi = self.policy(x)
            pc = pi * (self.rewards[x] - pi @ self.rewards[x])
            blk = np.diag(pc) - np.outer(pc, pi) - np.outer(pi, pc)
            H[x * K:(x + 1) * K, x * K:(x + 1) * K] = self.prompt_probs[x] * blk
        return H

    def smoothness_bound(self) -> float:
        """The global constant ``L = 5/2 · max_x (max r − min r)`` (Mei et al. 2020, T4/T5)."""
        return 2.5 * float(np.max(self.rewards.max(axis=1) - self.rewards.min(axis=1)))

    def __repr__(self) -> str:
        return f"SoftmaxBandit(X={self.num_prompts}, K={self.num_arms})"
