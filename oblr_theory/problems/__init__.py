"""Exact, enumerable toy problems: softmax bandits and token MDPs (docs/theory.md: Problems with exact answers)."""

from . import rewards
from .bandit import SoftmaxBandit
from .base import MAX_OUTCOMES, Outcomes
from .token_mdp import TokenMDP

__all__ = ["SoftmaxBandit", "TokenMDP", "Outcomes", "rewards", "MAX_OUTCOMES"]
