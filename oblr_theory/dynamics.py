"""Training loops on the toy problems: any registered estimator x any learning-rate rule (T4–T7).

One step of ascent on ``J``, for ``N`` seeds at once::

    prompts x_b ~ p,  G responses per prompt ~ π_θ(·|x_b)            (b = 1..B)
    u_b = (1/G) Σ_j A_j s_j          (per-group gradient, registry advantages)
    ĝ   = (1/B) Σ_b u_b,             θ ← θ + η_t ĝ

with ``η_t`` from a rule of :mod:`oblr_theory.snr`: ``"constant"`` (η), ``"oracle"`` (T5's
``η* = ∇J·m / (L(||m||² + V))`` from the exact moments; ``= (1/L) SNR/(1+SNR)`` when unbiased),
``"snr"`` (``clip(η_max SNR̂/(1+SNR̂), η_min, η_max)`` with the EMA estimate of T7 from the
``B`` per-group gradients of the same batch) or ``"local"`` (T5 with the local curvature ``κ_t``
of :func:`oblr_theory.snr.secant_curvature` in place of ``L``: ``clip(SNR̂/(1+SNR̂)/κ_t, η_min,
η_max)``, with ``κ_t = 1/η_max`` until a seed has taken a nonzero step); ``"local_exact"`` is
the same rule with the secant of the *exact* gradients (an oracle for the curvature estimate).
The registry :data:`RULES` maps
each online rule's name to its function; ``"oracle"`` needs the exact moments and is handled in
the loop.

``optimizer="adam"`` replaces the direction ``ĝ`` by Adam's ``m̂/(√v̂ + ε)``
(:func:`adam_direction`, with AdamW's decoupled decay ``−η λ θ``), scaled by the same ``η_t``:
``"constant"`` is plain Adam(W), ``"snr"`` multiplies Adam's rate by ``SNR̂/(1+SNR̂)``.

Responses are drawn from the problem's exact enumeration (``problem.outcomes(x)``, which every
step needs anyway for the exact ``J(θ_t)`` and ``∇J(θ_t)``): bandits are sampled for all seeds
at once by inverse CDF; token MDPs loop over seeds for the enumeration and are vectorised
inside. Each seed has its own generator (``SeedSequence(seed)``), so a seed's trajectory does
not depend on which other seeds run with it, and the same seed gives every method the same
random stream (common random numbers).

Recorded per step: exact ``J(θ_t)``, ``||∇J(θ_t)||²``, the learning rate, the estimated SNR,
and (every ``exact_every`` steps) the exact ``V_t`` and exact SNR.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import estimators, exact, snr, theory
from .montecarlo import categorical
from .problems import SoftmaxBandit

__all__ = ["RunConfig", "Trajectory", "run", "LR_RULES", "RULES", "OPTIMIZERS", "exact_state",
           "adam_direction"]


def _lr_constant(cfg, snr_t, curvature):
    return snr.constant_lr(snr_t, cfg.eta)


def _lr_snr(cfg, snr_t, curvature):
    return snr.snr_lr(snr_t, cfg.eta, cfg.eta_min)


def _lr_local(cfg, snr_t, curvature):
    return snr.local_lr(snr_t, curvature, cfg.eta, cfg.eta_min)


#: The online learning-rate rules: name -> ``rule(cfg, snr_t, curvature_t) -> η_t`` over seeds.
RULES = {"constant": _lr_constant, "snr": _lr_snr, "local": _lr_local, "local_exact": _lr_local}
LR_RULES = ("oracle", *RULES)
OPTIMIZERS = ("sgd", "adam")


def adam_direction(grad, m, v, t: int, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
    """One Adam moment update and its direction (Kingma & Ba 2015), elementwise::

        m_t = β₁ m + (1−β₁) g,    v_t = β₂ v + (1−β₂) g²,
        direction = m̂ / (√v̂ + ε),    m̂ = m_t / (1−β₁ᵗ),  v̂ = v_t / (1−β₂ᵗ).

    Returns ``(direction, m_t, v_t)``; ``t ≥ 1`` counts this update. The step is
    ``θ ← θ + η (direction − λ θ)`` (ascent, AdamW's decoupled decay ``λ``).

    Valid only if: ``0 ≤ β₁, β₂ < 1``, ``ε > 0``, ``t ≥ 1``, ``m`` and ``v`` from the previous call
    (zeros at ``t = 1``).
    """
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1!r}, {beta2!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if int(t) != t or t < 1:
        raise ValueError(f"t must be an integer >= 1 (this update's count), got {t!r}")
    g = np.asarray(grad, dtype=np.float64)
    if np.shape(m) != g.shape or np.shape(v) != g.shape:
        raise ValueError(f"m and v must have grad's shape {g.shape}, got {np.shape(m)}, {np.shape(v)}")
    m = beta1 * np.asarray(m) + (1 - beta1) * g
    v = beta2 * np.asarray(v) + (1 - beta2) * g * g
    mhat, vhat = m / (1 - beta1**t), v / (1 - beta2**t)
    return mhat / (np.sqrt(vhat) + eps), m, v


@dataclass(frozen=True)
class RunConfig:
    """One training setting. ``eta`` is the constant step (``"constant"``) or ``η_max``
    (``"snr"``, ``"local"``; with ``optimizer="adam"`` it is Adam's rate); ``smoothness`` is ``L``
    for ``"oracle"`` (default: the bandit's
    ``smoothness_bound()``); ``exact_every`` records exact ``V_t`` every that many steps (0: never;
    forced to 1 by ``"oracle"``)."""

    estimator: str
    group_size: int = 8
    batch_size: int = 4
    num_steps: int = 200
    lr_rule: str = "constant"
    eta: float = 0.5
    eta_min: float = 0.0
    ema_beta: float = 0.9
    smoothness: float | None = None
    exact_every: int = 0
    estimator_params: dict = field(default_factory=dict)
    optimizer: str = "sgd"
    weight_decay: float = 0.0

    def __post_init__(self):
        estimators.spec(self.estimator)
        if self.lr_rule not in LR_RULES:
            raise ValueError(f"lr_rule must be one of {LR_RULES}, got {self.lr_rule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.optimizer == "adam" and self.lr_rule not in ("constant", "snr"):
            raise ValueError(f"optimizer='adam' supports lr_rule 'constant' or 'snr' (the secant and "
                             f"the oracle assume the step is along ĝ), got {self.lr_rule!r}")
        if self.lr_rule in ("local", "local_exact") and not (0 < self.eta_min <= self.eta):
            raise ValueError(f"lr_rule={self.lr_rule!r} needs 0 < eta_min <= eta (a zero step gives no secant), "
                             f"got eta_min={self.eta_min!r}, eta={self.eta!r}")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay!r}")
        for name, lo in (("group_size", 1), ("batch_size", 2), ("num_steps", 1), ("exact_every", 0)):
            v = getattr(self, name)
            if int(v) != v or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if not (np.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be finite and >= 0, got {self.eta!r}")


@dataclass
class Trajectory:
    """Arrays over seeds ``N`` and steps ``T``: objective / grad_sq_norm ``(N, T+1)``;
    lr, snr_hat, exact_var, exact_snr, curvature ``(N, T)`` (NaN where not computed; curvature is
    the ``κ_t`` of the ``"local"`` rule); modal_prob ``(N, X)``
    (the final policy's largest response probability per prompt); theta ``(N, d)`` final;
    thetas ``(N, T+1, d)`` the whole path when ``run(..., keep_theta=True)``, else None."""

    seeds: np.ndarray
    objective: np.ndarray
    grad_sq_norm: np.ndarray
    lr: np.ndarray
    snr_hat: np.ndarray
    exact_var: np.ndarray
    exact_snr: np.ndarray
    modal_prob: np.ndarray
    theta: np.ndarray
    thetas: np.ndarray | None = None
    curvature: np.ndarray | None = None


@dataclass(frozen=True)
class ExactState:
    """Exact facts at ``θ`` for one seed: J, ∇J (d,), per-prompt b* (X,), modal probability (X,),
    and the enumerated outcomes (for sampling)."""

    objective: float
    grad: np.ndarray
    b_star: np.ndarray
    modal_prob: np.ndarray
    outcomes: list


def exact_state(problem) -> ExactState:
    """Enumerate every prompt's outcomes once and derive ``J``, ``∇J``, ``b* = m_rS/m_S`` (T3)."""
    outs = exact.all_outcomes(problem)
    moms = [exact.outcome_moments(o) for o in outs]
    p = problem.prompt_probs
    J = sum(px * m["mu"] for px, m in zip(p, moms))
    grad = sum(px * m["grad"] for px, m in zip(p, moms))
    b_star = np.array([m["b_star"] for m in moms])
    modal = np.array([o.probs.max() for o in outs])
    return ExactState(float(J), np.asarray(grad, dtype=np.float64), b_star, modal, outs)


# ------------------------------------------------------------------------------- sampling
def _draw(rngs, problem, B, G):
    """Per seed: prompts (N, B) and uniforms (N, B, G) from each seed's own generator."""
    prompts = np.stack([r.choice(problem.num_prompts, size=B, p=problem.prompt_probs) for r in rngs])
    unif = np.stack([r.random((B, G)) for r in rngs])
    return prompts, unif


def _bandit_batch(problem: SoftmaxBandit, theta_nd, prompts_nb, unif_nbg):
    """Vectorised over seeds: rewards, S and scores of the sampled arms, plus exact facts.

    Returns rewards (N,B,G), sq_norms (N,B,G), coef (N,B,G,K) with ``s_j = e_{a_j} − π_{x_b}`` in
    block ``x_b``, J (N,), grad (N,d), b_star (N,X), modal (N,X).
    """
    N = theta_nd.shape[0]
    X, K = problem.num_prompts, problem.num_arms
    z = theta_nd.reshape(N, X, K)
    pi = np.exp(z - z.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)  # (N, X, K)
    r = problem.rewards  # (X, K)
    Jx = np.einsum("sxk,xk->sx", pi, r)
    J = Jx @ problem.prompt_probs
    grad = (problem.prompt_probs[None, :, None] * pi * (r[None] - Jx[..., None])).reshape(N, -1)
    sq_all = theory.bandit_sq_norms(pi)  # (N, X, K): S(a) = 1 − 2π_a + ||π||², T8
    m_S, m_rS = (pi * sq_all).sum(-1), (pi * sq_all * r[None]).sum(-1)
    b_star = np.asarray(theory.optimal_baseline(m_rS, m_S, mu=Jx))
    pi_b = np.take_along_axis(pi, prompts_nb[..., None], axis=1)  # (N, B, K)
    arms = categorical(pi_b[:, :, None, :], unif_nbg)  # (N, B, G)
    rewards = r[prompts_nb[..., None], arms]
    sq = np.take_along_axis(np.take_along_axis(sq_all, prompts_nb[..., None], axis=1), arms, axis=2)
    coef = np.eye(K)[arms] - pi_b[:, :, None, :]  # (N, B, G, K)
    return rewards, sq, coef, J, grad, b_star, pi.max(-1)


def _bandit_group_gradients(problem, prompts_nb, adv_nbg, coef_nbgk):
    """``u_b = (1/G) Σ_j A_j (e_{a_j} − π)`` placed in prompt ``x_b``'s block, (N, B, d)."""
    N, B, G, K = coef_nbgk.shape
    blk = np.einsum("nbg,nbgk->nbk", adv_nbg, coef_nbgk) / G
    onehot = np.eye(problem.num_prompts)[prompts_nb]  # (N, B, X)
    return (onehot[..., None] * blk[:, :, None, :]).reshape(N, B, -1)


def _generic_batch(problem, theta_nd, prompts_nb, unif_nbg):
    """Token MDPs (any enumerable problem): per seed, enumerate then sample from the outcomes."""
    N = theta_nd.shape[0]
    cols = {k: [] for k in ("r", "sq", "ell", "scores", "J", "grad", "b", "modal")}
    for s in range(N):
        st = exact_state(problem.with_theta(theta_nd[s]))
        idx = [categorical(st.outcomes[x].probs[None], unif_nbg[s, b])
               for b, x in enumerate(prompts_nb[s])]
        outs = [st.outcomes[x] for x in prompts_nb[s]]
        cols["r"].append(np.stack([o.rewards[i] for o, i in zip(outs, idx)]))
        cols["sq"].append(np.stack([o.sq_norms[i] for o, i in zip(outs, idx)]))
        cols["ell"].append(np.stack([o.lengths[i] for o, i in zip(outs, idx)]))
        cols["scores"].append(np.stack([o.scores[i] for o, i in zip(outs, idx)]))  # (B, G, d)
        for k, v in (("J", st.objective), ("grad", st.grad), ("b", st.b_star), ("modal", st.modal_prob)):
            cols[k].append(v)
    return {k: np.array(v) for k, v in cols.items()}


# ------------------------------------------------------------------------------- exact V
def _exact_moments(problem, theta, cfg: RunConfig):
    """Exact ``(E ĝ, V)`` of the batch estimate at ``θ`` (multiset engine; T1, T2)."""
    m = exact.estimator_moments(problem.with_theta(theta), cfg.estimator, cfg.group_size,
                                batch_size=cfg.batch_size, **cfg.estimator_params)
    return m.mean, m.trace_var


def _smoothness(problem, cfg):
    if cfg.smoothness is not None:
        return float(cfg.smoothness)
    if hasattr(problem, "smoothness_bound"):
        return problem.smoothness_bound()
    raise ValueError("lr_rule='oracle' on a problem without smoothness_bound() needs smoothness=L")


# ------------------------------------------------------------------------------- the loop
def run(problem, cfg: RunConfig, seeds, progress=None, keep_theta: bool = False) -> Trajectory:
    """Train ``len(seeds)`` independent runs of ``cfg`` on ``problem`` from its ``θ``.

    ``progress``: an optional callable ``progress(n_steps_done)`` (e.g. a tqdm ``update``).
    """
    seeds = np.asarray(list(seeds), dtype=np.int64)
    if seeds.ndim != 1 or len(seeds) < 1:
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if cfg.lr_rule == "oracle":
        cfg = replace(cfg, exact_every=1)
        L = _smoothness(problem, cfg)
    N, T, B, G = len(seeds), cfg.num_steps, cfg.batch_size, cfg.group_size
    rngs = [np.random.default_rng(np.random.SeedSequence(int(s))) for s in seeds]
    est = estimators.get(cfg.estimator, **{k: v for k, v in cfg.estimator_params.items()})  \
        if cfg.estimator != "oracle_optimal" else None
    theta = np.tile(problem.theta, (N, 1))
    bandit = isinstance(problem, SoftmaxBandit)
    out = {k: np.full((N, T + 1), np.nan) for k in ("objective", "grad_sq_norm")}
    out.update({k: np.full((N, T), np.nan) for k in ("lr", "snr_hat", "exact_var", "exact_snr", "curvature")})
    ema = snr.EMASNR(cfg.ema_beta)
    ema_curv, prev = snr.EMACurvature(cfg.ema_beta), None  # prev: (ĝ, η, n̂) of the last step
    adam_m = adam_v = np.zeros_like(theta)
    path = np.empty((N, T + 1, theta.shape[1])) if keep_theta else None
    for t in range(T + 1):
        if keep_theta:
            path[:, t] = theta
        prompts, unif = _draw(rngs, problem, B, G)
        if bandit:
            r, sq, coef, J, grad, b_star, modal = _bandit_batch(problem, theta, prompts, unif)
            ell = np.ones_like(r)
        else:
            d = _generic_batch(problem, theta, prompts, unif)
            r, sq, ell, J, grad, b_star, modal = d["r"], d["sq"], d["ell"], d["J"], d["grad"], d["b"], d["modal"]
        out["objective"][:, t], out["grad_sq_norm"][:, t] = J, np.einsum("sd,sd->s", grad, grad)
        if t == T:
            break
        e = est if est is not None else estimators.get(
            "oracle_optimal", b_star=np.take_along_axis(b_star, prompts, axis=1)[..., None])
        adv = e.advantages(r, sq_norms=sq, lengths=ell)  # (N, B, G)
        if bandit:
            u = _bandit_group_gradients(problem, prompts, adv, coef)
        else:
            u = np.einsum("sbg,sbgd->sbd", adv, d["scores"]) / G
        ghat = u.mean(axis=1)  # (N, d)
        snr_t = ema.update(snr.snr_pieces(u))
        out["snr_hat"][:, t] = snr_t
        if cfg.exact_every and t % cfg.exact_every == 0:
            for s in range(N):
                mean, var = _exact_moments(problem, theta[s], cfg)
                out["exact_var"][s, t] = var
                out["exact_snr"][s, t] = grad[s] @ grad[s] / var if var > 0 else np.inf
                if cfg.lr_rule == "oracle":
                    gm = float(grad[s] @ mean)
                    out["lr"][s, t] = 0.0 if gm <= 0 else theory.optimal_step_size(gm, mean @ mean, var, L)
        if cfg.lr_rule in ("local", "local_exact"):
            if prev is None:
                kappa = np.full(N, np.nan)
            elif cfg.lr_rule == "local":  # noisy secant, T7-corrected
                kappa = ema_curv.update(*snr.secant_curvature(ghat, *prev[:3]))
            else:  # exact secant: ∇J(θ_t) and <∇J(θ_{t−1}), d> from the enumeration
                d_prev, eta_prev, grad_prev = prev[0], prev[1], prev[3]
                kappa = ema_curv.update(*snr.secant_curvature(
                    grad, d_prev, eta_prev, np.einsum("sd,sd->s", grad_prev, d_prev)))
            kappa = np.where(np.isnan(kappa), 1.0 / cfg.eta, kappa)  # κ_0 = 1/η_max until a nonzero step
            out["curvature"][:, t] = kappa
        if cfg.lr_rule != "oracle":
            out["lr"][:, t] = RULES[cfg.lr_rule](cfg, snr_t, out["curvature"][:, t])
        n_hat = snr.snr_pieces(u).grad_sq_norm_hat if cfg.lr_rule == "local" else None  # T7's ||∇J||²
        prev = (ghat, out["lr"][:, t], n_hat, grad)
        if cfg.optimizer == "adam":
            direction, adam_m, adam_v = adam_direction(ghat, adam_m, adam_v, t + 1)
            theta = theta + out["lr"][:, t, None] * (direction - cfg.weight_decay * theta)
        else:
            theta = theta + out["lr"][:, t, None] * ghat
        if progress is not None:
            progress(1)
    return Trajectory(seeds, out["objective"], out["grad_sq_norm"], out["lr"], out["snr_hat"],
                      out["exact_var"], out["exact_snr"], np.asarray(modal), theta, path, out["curvature"])
