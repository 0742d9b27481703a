"""Shared fixtures: small random problems, seeded."""

import numpy as np
import pytest

from oblr_theory.problems import SoftmaxBandit, TokenMDP


def random_bandit(seed, X=1, K=4):
    rng = np.random.default_rng(seed)
    shape = (K,) if X == 1 else (X, K)
    probs = None if X == 1 else rng.dirichlet(np.ones(X))
    return SoftmaxBandit(rng.normal(size=shape), rng.uniform(size=shape), prompt_probs=probs)


def random_token_mdp(seed, parametrization="loglinear", V=3, H=3, X=2, reward="sum_mod"):
    kwargs = {"sum_mod": {"modulus": 2}, "short_answer": {"token": 1, "max_len": 2},
              "contains": {"token": 1}}[reward]
    return TokenMDP(V, H, reward, num_prompts=X, parametrization=parametrization, seed=seed,
                    reward_kwargs=kwargs)


def short_answer_mdp(par, X=2, V=3, H=3, seed=0):
    """A short-answer token MDP (reward for token 2 within 2 steps), small enough to enumerate."""
    return TokenMDP(V, H, "short_answer", num_prompts=X, parametrization=par, seed=seed,
                    reward_kwargs={"token": 2, "max_len": 2})


@pytest.fixture(params=["bandit", "bandit-multi", "mdp-tabular", "mdp-loglinear"])
def small_problem(request):
    return {
        "bandit": lambda: random_bandit(1, K=3),
        "bandit-multi": lambda: random_bandit(2, X=2, K=3),
        "mdp-tabular": lambda: random_token_mdp(3, "tabular", V=3, H=2),
        "mdp-loglinear": lambda: random_token_mdp(4, "loglinear", V=3, H=2),
    }[request.param]()
