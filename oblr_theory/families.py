"""The toy problem families of the dynamics, the estimator map and the OBLR-PO comparison.

Each constructor is deterministic (fixed logits / seeds) so results are reproducible by name.

* ``hard_arm_bandit``: softmax bandit, 3 prompts x 4 arms; the best arm (reward 1) starts with
  the lowest logit, a decent arm (0.6) with the highest: the classic trap where a policy can
  collapse onto the decoy before it discovers the best arm.
* ``length_mdp``: log-linear token MDP (V = 3, H = 3, 2 prompts), reward
  ``short_answer(token=1, max_len=2)``: long responses are wrong, so ``Cov(S, r) ≠ 0`` and the
  gradient-weighted ``b*`` differs from the mean reward (T3).
* ``sparse_mdp``: log-linear token MDP (V = 4, H = 3, 2 prompts), reward ``exact_match`` of one
  target per prompt: the initial success probability is a few percent, so most groups have no
  signal (all-zero rewards).
"""

from __future__ import annotations

import numpy as np

from .problems import SoftmaxBandit, TokenMDP

__all__ = ["FAMILIES", "make", "optimum"]


def hard_arm_bandit() -> SoftmaxBandit:
    logits = np.array([[-2.0, 1.0, 0.5, 0.0], [-2.5, 1.5, 0.0, 0.0], [-1.5, 0.5, 0.5, 0.0]])
    rewards = np.array([[1.0, 0.6, 0.3, 0.0], [1.0, 0.5, 0.2, 0.1], [1.0, 0.7, 0.0, 0.3]])
    return SoftmaxBandit(logits, rewards)


def length_mdp() -> TokenMDP:
    return TokenMDP(3, 3, "short_answer", num_prompts=2, parametrization="loglinear", seed=1,
                    init_scale=0.5, reward_kwargs={"token": 1, "max_len": 2})


def sparse_mdp() -> TokenMDP:
    return TokenMDP(4, 3, "exact_match", num_prompts=2, parametrization="loglinear", seed=2,
                    init_scale=0.3, reward_kwargs={"targets": [(2, 3), (3, 1)]})


FAMILIES = {"hard_arm_bandit": hard_arm_bandit, "length_mdp": length_mdp, "sparse_mdp": sparse_mdp}


def make(name: str):
    """The problem of family ``name`` (clear error for unknown names)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family={name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]()


def optimum(problem) -> float:
    """``J* = Σ_x p_x max_y r(x, y)``: every prompt's best response is reachable in the limit of
    a deterministic policy (true for all families here: each response has its own logit path
    under the tabular policy; under the log-linear policy it is the supremum the runs approach)."""
    from . import exact

    return float(sum(p * o.rewards.max() for p, o in zip(problem.prompt_probs, exact.all_outcomes(problem))))
