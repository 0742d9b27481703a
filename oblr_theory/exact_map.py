"""The exact estimator map (T1, T2, T3, T5): bias, ``V``, MSE and T5's guaranteed gain of every
registered estimator against the group size ``G``, by multiset enumeration (no closed forms).

Figure of merit between biased and unbiased estimators (T5): the T4 bound maximised over ``η``,

    gain = (∇J·m)² / (2L (||m||² + V))        (m = E ĝ, V = tr Var ĝ; 0 when ∇J·m ≤ 0)

which a pure scale bias (``dr_grpo``) leaves unchanged. ``L`` is the problem's smoothness
constant (bandits: ``5/2 · range(r)``; token MDPs: the Hessian's spectral norm at ``θ``, a local
constant). It rescales every estimator's gain alike, so rankings do not depend on it.

For the shrinkage family ``optimal_loo_shrink(λ)`` the variance is exactly quadratic in ``λ``
(control variate ``h = ĝ_optimal_loo − ĝ_rloo``, ``E h = 0``), so three exact evaluations
(``λ = 0, 1/2, 1``) give ``V(λ) = V_0 + aλ + bλ²`` and the best ``λ* = −a/(2b)`` per ``G``.

The script ``experiments/estimator_map.py`` runs it over the problem families and writes
``estimator_map.jsonl``; ``paper_figures/`` read that file.
"""

from __future__ import annotations

import numpy as np

from . import estimators, exact, exact_batch, families

__all__ = ["map_rows", "moments", "moments_row", "greedy_rewards", "shrinkage_quadratic", "smoothness", "FAMILY_GROUP_SIZES"]

#: ``G`` range per family (limited by the ``C(n+G−1, G)`` multisets of the token MDPs).
FAMILY_GROUP_SIZES = {"hard_arm_bandit": tuple(range(2, 17)), "length_mdp": tuple(range(2, 9)),
                      "sparse_mdp": (2, 3, 4)}


def smoothness(problem) -> float:
    """``L`` for T5's gain: the global bandit constant, else ``||∇²J(θ)||₂`` (local)."""
    if hasattr(problem, "smoothness_bound"):
        return problem.smoothness_bound()
    return float(np.max(np.abs(np.linalg.eigvalsh(exact.hessian(problem)))))


def _gain(grad, mean, var, L):
    gm = float(grad @ mean)
    den = float(mean @ mean) + var
    return (gm * gm / (2 * L * den), gm / (L * den)) if gm > 0 and den > 0 else (0.0, 0.0)


def greedy_rewards(problem) -> np.ndarray:
    """Per prompt, the reward of the greedy rollout (ReMax's baseline), shape ``(X,)``: the most
    likely arm of a bandit; for a token MDP the response built by taking, at each step, the most
    likely next token given the prefix (``π(v | prefix)`` from the exact response probabilities;
    ties go to the lowest token id, as ``argmax``) until EOS or the horizon."""
    out = []
    for x, o in enumerate(exact.all_outcomes(problem)):
        if not hasattr(problem, "sequences"):
            out.append(float(o.rewards[int(np.argmax(o.probs))]))
            continue
        toks = problem.sequences(x)  # (n, H), padded with -1
        match = np.ones(len(toks), dtype=bool)
        for t in range(toks.shape[1]):
            mass = np.bincount(toks[match, t], weights=o.probs[match], minlength=problem.vocab_size)
            match &= toks[:, t] == int(np.argmax(mass))
            if match.sum() == 1:
                break
        out.append(float(o.rewards[np.flatnonzero(match)[0]]))
    return np.array(out)


def moments(problem, name: str, G: int):
    """Exact moments of one group (``B = 1``): the multiset engine (``remax`` with each prompt's
    :func:`greedy_rewards`), or for a batch-coupled estimator (whose law is not "batch =
    independent groups") whole-batch enumeration at ``B = 1``."""
    if estimators.spec(name).batch_coupled:
        return exact_batch.batch_moments(problem, name, G, 1)
    if name == "remax":
        return exact.estimator_moments(problem, name, G, per_prompt={"greedy_reward": greedy_rewards(problem)})
    return exact.estimator_moments(problem, name, G)


def map_rows(problem, family: str, group_sizes, names=None, L=None, progress=None) -> list[dict]:
    """One row per (estimator, G): ``bias_sq = ||E ĝ − ∇J||²``, ``trace_var``, ``mse``, ``gain``
    and ``eta_star`` (T5), for one group (``B = 1``); the oracle ``b*`` is supplied per prompt."""
    names = list(names or estimators.names())
    L = smoothness(problem) if L is None else float(L)
    rows = []
    for G in group_sizes:
        for name in names:
            if G < estimators.spec(name).min_group:
                continue
            rows.append(moments_row(family, name, G, moments(problem, name, G), L))
            if progress is not None:
                progress(1)
    return rows


def moments_row(family: str, name: str, G: int, m, L: float) -> dict:
    """The map's row of one estimator's exact moments ``m`` (``.mean``, ``.grad``, ``.trace_var``):
    ``bias_sq``, ``trace_var``, ``mse``, ``||∇J||²``, ``∇J·E ĝ`` and T5's ``gain`` and ``eta_star``."""
    gain, eta = _gain(m.grad, m.mean, m.trace_var, L)
    return dict(family=family, estimator=name, group_size=int(G), bias_sq=float(m.bias @ m.bias),
                trace_var=m.trace_var, mse=m.mse, grad_sq_norm=float(m.grad @ m.grad),
                grad_dot_mean=float(m.grad @ m.mean), gain=gain, eta_star=eta, smoothness=float(L))


def shrinkage_quadratic(v_rloo: float, v_half: float, v_oloo: float):
    """``V(λ) = V_0 + aλ + bλ²`` through ``V(0) = V_rloo``, ``V(1/2)``, ``V(1) = V_optimal_loo``.

    Returns ``(lam_star, v_star, a, b)`` with ``λ* = −a/(2b)`` (``b = tr Var h > 0``).
    """
    b = 2.0 * (v_oloo + v_rloo - 2.0 * v_half)
    a = v_oloo - v_rloo - b
    if not b > 0:
        raise ValueError(f"the shrinkage quadratic must be convex (b = tr Var h > 0), got b = {b!r}")
    lam = -a / (2.0 * b)
    return lam, v_rloo + a * lam + b * lam * lam, a, b


def shrinkage_rows(map_rows_: list[dict]) -> list[dict]:
    """Per (family, G): ``λ*``, ``V(λ*)`` and the ratios to ``rloo`` / ``oracle_optimal`` (T3)."""
    by = {(r["family"], r["group_size"], r["estimator"]): r for r in map_rows_}
    out = []
    for fam, G in sorted({(r["family"], r["group_size"]) for r in map_rows_}):
        need = [(fam, G, n) for n in ("rloo", "optimal_loo_shrink", "optimal_loo", "oracle_optimal")]
        if not all(k in by for k in need):
            continue
        v0, vh, v1, vo = (by[k]["trace_var"] for k in need)
        if v0 <= 0:
            continue
        if abs(v1 - v0) <= 1e-12 * v0 and abs(vh - v0) <= 1e-12 * v0:
            lam, vs = float("nan"), v0  # h ≡ 0 (e.g. G = 2: both baselines are the other reward)
        else:
            lam, vs, _, _ = shrinkage_quadratic(v0, vh, v1)
        out.append(dict(family=fam, group_size=G, lam_star=lam, v_lam_star=vs, v_rloo=v0, v_half=vh,
                        v_optimal_loo=v1, v_oracle=vo))
    return out


def family_rows(family: str, group_sizes=None, names=None, progress=None) -> list[dict]:
    """:func:`map_rows` on the named family at its initial ``θ``."""
    problem = families.make(family)
    return map_rows(problem, family, group_sizes or FAMILY_GROUP_SIZES[family], names, progress=progress)
