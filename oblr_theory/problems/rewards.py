"""Verifiable rewards on finished token sequences, vectorised.

A reward is a callable ``reward(prompts_n, tokens_nh, lengths_n) -> rewards_n`` (float64):
``prompts_n`` (n,) prompt indices, ``tokens_nh`` (n, H) the sampled tokens padded with ``-1``
after the end (a sequence that stopped on EOS keeps its EOS token ``0``), ``lengths_n`` (n,)
the number of sampled tokens. It must be pure and vectorised (the Monte Carlo sampler calls
it on many sequences at once).
"""

from __future__ import annotations

import numpy as np

EOS = 0


def _ended(tokens_nh, lengths_n):
    """True where the sequence stopped on EOS (not truncated at the horizon)."""
    last = tokens_nh[np.arange(len(lengths_n)), np.maximum(lengths_n - 1, 0)]
    return last == EOS


def exact_match(targets):
    """``r = 1`` iff the response is ``targets[x]`` followed by EOS (sparse, RLVR-like)."""
    targets = [tuple(int(v) for v in t) for t in targets]
    if any(EOS in t for t in targets):
        raise ValueError("targets must not contain the EOS token 0")

    def reward(prompts_n, tokens_nh, lengths_n):
        H = tokens_nh.shape[1]
        padded = np.full((len(targets), H), -1)
        for x, t in enumerate(targets):
            full = t + (EOS,)
            padded[x, :min(len(full), H)] = full[:H] if len(full) <= H else -2  # too long: never
        return np.all(tokens_nh == padded[prompts_n], axis=1).astype(np.float64)

    reward.name = f"exact_match({targets})"
    return reward


def contains(token: int):
    """``r = 1`` iff ``token`` occurs in the response."""
    if token == EOS:
        raise ValueError("token must not be EOS (0)")

    def reward(prompts_n, tokens_nh, lengths_n):
        return np.any(tokens_nh == token, axis=1).astype(np.float64)

    reward.name = f"contains({token})"
    return reward


def sum_mod(modulus: int):
    """``r = 1`` iff the response stops on EOS and ``Σ tokens ≡ x (mod modulus)`` (a verifiable sum)."""
    if modulus < 2:
        raise ValueError(f"modulus must be >= 2, got {modulus}")

    def reward(prompts_n, tokens_nh, lengths_n):
        total = np.where(tokens_nh > 0, tokens_nh, 0).sum(axis=1)
        ok = (total % modulus == prompts_n % modulus) & _ended(tokens_nh, lengths_n)
        return ok.astype(np.float64)

    reward.name = f"sum_mod({modulus})"
    return reward


def short_answer(token: int, max_len: int):
    """``r = 1`` iff the response contains ``token`` and stops on EOS within ``max_len`` tokens.

    Length-correlated: long (and truncated) responses are wrong, so ``Cov(S, r) < 0`` and the
    gradient-weighted ``b*`` sits below the mean reward (T3).
    """
    def reward(prompts_n, tokens_nh, lengths_n):
        ok = np.any(tokens_nh == token, axis=1) & (lengths_n <= max_len) & _ended(tokens_nh, lengths_n)
        return ok.astype(np.float64)

    reward.name = f"short_answer({token}, {max_len})"
    return reward


BUILTIN = {"exact_match": exact_match, "contains": contains, "sum_mod": sum_mod,
           "short_answer": short_answer}
