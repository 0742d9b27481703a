"""The toy problem families of the dynamics, the estimator map and the OBLR-PO comparison.

Each constructor is deterministic (fixed logits / seeds), so results are reproducible by name.
The token families stay small enough for the exact multiset engine at the group sizes of
:data:`oblr_theory.exact_map.FAMILY_GROUP_SIZES` (``C(n+G−1, G)`` multisets for ``n``
responses per prompt): ``length_mdp`` has ``n = 15``, ``sparse_mdp`` ``n = 40``.

* ``hard_arm_bandit``: softmax bandit, 3 prompts x 4 arms; the best arm (reward 1) starts with
  the lowest logit, a decent arm (0.5–0.7) with the highest: the classic trap where a policy can
  collapse onto the decoy before it discovers the best arm.
* ``length_mdp``: log-linear token MDP (``V = 3``, ``H = 3``, 2 prompts, shared tables), graded
  length-correlated reward :func:`graded_short_answer`: 1 for the short answer ``(1, EOS)``,
  ``LONG_CREDIT`` for a correct answer of length 3, 0 otherwise. The initial policy prefers
  *long wrong* answers: a shared bias row lowers EOS (most responses are truncated at ``H``)
  and token 1 (most lack it), so the initial success probability is below 1% per prompt, and
  the long partial-credit answers are a decoy to collapse onto (as in the bandit). Rewards and
  ``S`` are correlated (the rare rewarded token has a large score ``||e_1 − π||²``, T8), so
  T3's ``b* = m_rS/m_S`` differs from ``μ`` (:func:`baseline_gap` reports ``μ``, ``b*`` and
  ``|b* − μ|`` per prompt; at ``θ_0``, ``b*`` is several times ``μ``).
* ``sparse_mdp``: log-linear token MDP (``V = 4``, ``H = 3``, 2 prompts, shared tables), reward
  ``exact_match`` of one two-token target (+ EOS) per prompt: ``(1, 2)`` and ``(1, 3)``. The
  initial success probability is about 1% per prompt (:func:`initial_success`), so a group of
  ``G = 8`` has a success with probability ``1 − (1 − p)^8 ≈ 6–11%``: most groups carry no
  signal (all-zero rewards), as in RLVR on hard prompts. The targets share their first token
  and differ only in the second, which the shared ``prev`` row cannot tell apart: the prompt
  row must, so learning one prompt pushes the other towards the wrong second token
  (interference). Exact gradient ascent from ``θ_0`` still reaches ``J ≈ 1`` (checked in the
  tests), so ``J* = 1`` is attainable; noisy large steps instead make one prompt deterministic
  on a wrong answer, after which its groups are all-zero and it never recovers (collapse).
  Design note: the earlier targets ``(2, 3)`` and ``(3, 1)`` stalled every method at
  ``J ≈ 0.5`` because even exact gradient ascent solves one prompt and drives the other's
  success probability to 0 (its gradient is ``∝ p``); a tabular sparse MDP has no interference
  and no upper limit on useful step sizes, so it does not separate the methods either.
"""

from __future__ import annotations

import numpy as np

from .problems import SoftmaxBandit, TokenMDP
from .problems.rewards import _ended

__all__ = ["FAMILIES", "make", "optimum", "initial_success", "baseline_gap"]

#: ``length_mdp``: logit penalties of EOS and of the rewarded token in the shared bias row.
LENGTH_EOS_PENALTY, LENGTH_TOKEN_PENALTY = 2.5, 1.5
#: ``length_mdp``: the reward of a correct but long answer (the short one earns 1).
LONG_CREDIT = 0.5
#: ``sparse_mdp``: the target (without EOS) of each prompt.
SPARSE_TARGETS = [(1, 2), (1, 3)]


def hard_arm_bandit() -> SoftmaxBandit:
    logits = np.array([[-2.0, 1.0, 0.5, 0.0], [-2.5, 1.5, 0.0, 0.0], [-1.5, 0.5, 0.5, 0.0]])
    rewards = np.array([[1.0, 0.6, 0.3, 0.0], [1.0, 0.5, 0.2, 0.1], [1.0, 0.7, 0.0, 0.3]])
    return SoftmaxBandit(logits, rewards)


def graded_short_answer(prompts_n, tokens_nh, lengths_n):
    """``r = 1`` if the response contains token 1, stops on EOS and ``|y| ≤ 2`` (i.e. ``(1, EOS)``);
    ``r = LONG_CREDIT`` for a correct but long answer (contains 1, stops on EOS, ``|y| = 3``);
    ``r = 0`` otherwise (no token 1, or truncated at ``H`` without EOS)."""
    ok = np.any(tokens_nh == 1, axis=1) & _ended(tokens_nh, lengths_n)
    return np.where(ok, np.where(lengths_n <= 2, 1.0, LONG_CREDIT), 0.0)


graded_short_answer.name = "graded_short_answer"


def length_mdp() -> TokenMDP:
    """Log-linear ``z_t(v) = bias[v] + pos[t, v] + prev[y_{t−1}, v] + prompt[x, v]`` (``V = 3``,
    ``H = 3``, 2 prompts), reward :func:`graded_short_answer`. ``θ_0 = 0.5·N(0, 1)`` (seed 1)
    plus ``bias[EOS] −= LENGTH_EOS_PENALTY`` and ``bias[1] −= LENGTH_TOKEN_PENALTY``: the policy
    prefers long answers without token 1, so the initial success probability is small, and the
    long correct answers (credit ``LONG_CREDIT``) are a decoy the policy can collapse onto."""
    P = TokenMDP(3, 3, graded_short_answer, num_prompts=2, parametrization="loglinear", seed=1,
                 init_scale=0.5)
    theta = P.theta
    bias = P.tables[0]
    assert bias.name == "bias"
    theta[bias.offset + 0] -= LENGTH_EOS_PENALTY  # EOS = token 0
    theta[bias.offset + 1] -= LENGTH_TOKEN_PENALTY
    return P.with_theta(theta)


def sparse_mdp() -> TokenMDP:
    """Log-linear (shared tables, as :func:`length_mdp`), ``θ_0 = 0.3·N(0, 1)`` (seed 2), reward
    ``r = 1{y = targets[x] + (EOS,)}`` with targets ``(1, 2)`` and ``(1, 3)``: success needs three
    specific tokens out of four, about ``4^{−3} ≈ 1.6%`` per prompt at ``θ_0``
    (:func:`initial_success` gives the exact values)."""
    return TokenMDP(4, 3, "exact_match", num_prompts=2, parametrization="loglinear", seed=2,
                    init_scale=0.3, reward_kwargs={"targets": SPARSE_TARGETS})


FAMILIES = {"hard_arm_bandit": hard_arm_bandit, "length_mdp": length_mdp, "sparse_mdp": sparse_mdp}


def make(name: str):
    """The problem of family ``name`` (clear error for unknown names)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family={name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]()


def optimum(problem) -> float:
    """``J* = Σ_x p_x max_y r(x, y)``, the supremum over deterministic policies. It is attained in
    the limit for every family here: the bandit and tabular policies have one logit per response;
    for the log-linear ``length_mdp`` and ``sparse_mdp``, exact gradient ascent from ``θ_0``
    approaches it (``tests/test_families.py`` checks ``J > 0.99`` after exact ascent)."""
    from . import exact

    return float(sum(p * o.rewards.max() for p, o in zip(problem.prompt_probs, exact.all_outcomes(problem))))


def initial_success(problem) -> np.ndarray:
    """Per prompt, ``P(r = max_y r(x, y) | x)`` at the problem's ``θ``, shape ``(X,)``."""
    from . import exact

    return np.array([o.probs @ (o.rewards >= o.rewards.max()) for o in exact.all_outcomes(problem)])


def baseline_gap(problem) -> dict:
    """Per prompt at ``θ``: the mean ``μ = E r``, T3's ``b* = E[rS]/E[S]`` and ``|b* − μ|``; also
    T3's excess variance of the mean baseline for one group of ``G`` in units of ``1/G``:
    ``m_S (μ − b*)²`` (the exact excess is that over ``G``)."""
    from . import exact

    pm = exact.prompt_moments(problem)
    return dict(mu=pm.mu, b_star=pm.b_star, gap=np.abs(pm.b_star - pm.mu),
                excess_times_G=pm.m_S * (pm.mu - pm.b_star) ** 2)
