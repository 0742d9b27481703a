"""The KL estimators k1, k2, k3 and their exact value and gradient biases (docs/theory.md: KL
estimators).

With ``y ~ π_θ``, a reference policy ``q`` and the log ratio ``δ(y) = log π_θ(y) − log q(y)``
(Schulman, "Approximating KL Divergence", 2020; TRL's ``per_token_kl`` is k3, verl's
``kl_penalty`` / ``kl_loss_type`` names them ``"kl"``/``"k1"``, ``"mse"``/``"k2"``,
``"low_var_kl"``/``"k3"``)::

    k1 = δ,      k2 = δ²/2,      k3 = e^{−δ} − 1 + δ      (= ρ − 1 − log ρ, ρ = q/π)

estimate ``KL(π‖q) = E_π δ``. Two ways to put them into a policy gradient give different
gradients (``s_y = ∇_θ log π_θ(y)``, ``E_π s = 0``):

* **as a loss term** (``y`` sampled, ``k(y)`` differentiated through ``log π_θ(y)``):
  ``E ∇k = E_π[k'(δ) s]`` with ``k1' = 1``, ``k2' = δ``, ``k3' = 1 − e^{−δ}``;
* **as a reward term** (``k(y)`` subtracted from the reward, no gradient through it; REINFORCE):
  ``E[k(y) s_y]``.

The target is ``∇KL(π‖q) = E_π[δ s]``. The exact facts (each a one-line identity, checked on
enumerated distributions by ``oblr-theory verify``, claims ``kl/...``):

====================  ====================================  =====================================
estimator             value bias ``E k − KL``               gradient bias ``E ĝ − ∇KL(π‖q)``
====================  ====================================  =====================================
k1, loss              0                                     ``−∇KL(π‖q)`` (``E ĝ = E s = 0``)
k2, loss              ``E[δ²/2] − KL`` (≠ 0 in general)      0 (``E[δ s] = ∇KL``)
k3, loss              ``Σ_{π>0} q − 1`` (0 if supp q ⊆ supp π)  ``∇KL(q‖π) − ∇KL(π‖q)`` (``E ĝ = −E_q s``)
k1, reward            0                                     0
k2, reward            as k2                                 ``E_π[(δ²/2) s] − ∇KL(π‖q)``
k3, reward            as k3                                 ``−∇KL(q‖π) = E_q s`` (if supp q ⊆ supp π)
====================  ====================================  =====================================

(``∇KL(q‖π_θ) = −E_q s``.) So k3, the low-variance value estimator that TRL and verl use as a loss
term, differentiates the *reverse* KL, and k2 as a loss is the one that differentiates
``KL(π‖q)``. Valid only if ``π > 0`` wherever ``q > 0`` (else ``KL(q‖π) = ∞``) and ``q > 0``
wherever ``π > 0`` (else ``KL(π‖q) = ∞``). On sequences, ``δ`` is the sequence log ratio; a
per-token sum of k1 equals it (the log ratio is additive), per-token sums of k2 and k3 do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _ops

__all__ = ["ESTIMATORS", "k1", "k2", "k3", "derivative", "KLMoments", "kl_moments", "claimed_biases"]

ESTIMATORS = ("k1", "k2", "k3")


def _exp(x):
    return x.exp() if _ops.is_torch(x) else np.exp(x)


def k1(logp, logp_ref):
    """``k1 = δ = log π − log q``: unbiased for ``KL(π‖q)``, can be negative."""
    return logp - logp_ref


def k2(logp, logp_ref):
    """``k2 = δ²/2``: biased for the value (``E k2 − KL = O(δ³)``), ≥ 0."""
    d = logp - logp_ref
    return 0.5 * d * d


def k3(logp, logp_ref):
    """``k3 = e^{−δ} − 1 + δ = ρ − 1 − log ρ`` (``ρ = q/π``): unbiased for the value when
    ``supp q ⊆ supp π``, ≥ 0 (TRL's ``per_token_kl``, verl's ``low_var_kl`` before its clamp)."""
    d = logp - logp_ref
    return _exp(-d) - 1 + d


def derivative(name: str, logp, logp_ref):
    """``∂k/∂ log π`` at fixed ``q``: k1 ``1``, k2 ``δ``, k3 ``1 − e^{−δ}``; a loss term's gradient is
    this times ``s_y = ∇ log π(y)``."""
    d = logp - logp_ref
    if name == "k1":
        return 0 * d + 1
    if name == "k2":
        return d
    if name == "k3":
        return 1 - _exp(-d)
    raise ValueError(f"KL estimator name={name!r} is not one of {ESTIMATORS}")


_FN = {"k1": k1, "k2": k2, "k3": k3}


@dataclass(frozen=True)
class KLMoments:
    """Exact moments on an enumerated distribution: ``kl = KL(π‖q)``, ``grad = ∇KL(π‖q)`` (d,),
    ``grad_reverse = ∇KL(q‖π) = −E_q s`` (d,), and per estimator ``value[k] = E k``,
    ``loss_grad[k] = E[k' s]``, ``reward_grad[k] = E[k s]`` (d,)."""

    kl: float
    grad: np.ndarray
    grad_reverse: np.ndarray
    value: dict
    loss_grad: dict
    reward_grad: dict

    def value_bias(self, name: str) -> float:
        return float(self.value[name] - self.kl)

    def loss_bias(self, name: str) -> np.ndarray:
        return self.loss_grad[name] - self.grad

    def reward_bias(self, name: str) -> np.ndarray:
        return self.reward_grad[name] - self.grad


def _check(probs, ref_probs, scores):
    p = np.asarray(probs, dtype=np.float64)
    q = np.asarray(ref_probs, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if p.ndim != 1 or q.shape != p.shape or s.ndim != 2 or s.shape[0] != p.size:
        raise ValueError(f"probs (n,), ref_probs (n,) and scores (n, d) expected, got {p.shape}, {q.shape}, "
                         f"{s.shape}")
    for name, a in (("probs", p), ("ref_probs", q)):
        if not np.all(np.isfinite(a)) or np.any(a < 0) or abs(a.sum() - 1) > 1e-9:
            raise ValueError(f"{name} must be a probability vector (finite, >= 0, summing to 1)")
    if np.any((p > 0) != (q > 0)):
        raise ValueError("probs and ref_probs must have the same support: KL(π‖q) or KL(q‖π) is infinite "
                         "otherwise")
    return p, q, s


def kl_moments(probs, ref_probs, scores) -> KLMoments:
    """Exact :class:`KLMoments` of one categorical ``π`` (``probs``) against ``q`` (``ref_probs``),
    with scores ``s_y = ∇ log π(y)`` (n, d), by summing over the outcomes."""
    p, q, s = _check(probs, ref_probs, scores)
    keep = p > 0
    p, q, s = p[keep], q[keep], s[keep]
    lp, lq = np.log(p), np.log(q)
    delta = lp - lq
    value, loss, reward = {}, {}, {}
    for name in ESTIMATORS:
        k = _FN[name](lp, lq)
        value[name] = float(p @ k)
        loss[name] = (p * derivative(name, lp, lq)) @ s
        reward[name] = (p * k) @ s
    return KLMoments(float(p @ delta), (p * delta) @ s, -(q @ s), value, loss, reward)


def claimed_biases(m: KLMoments, probs, ref_probs) -> dict:
    """The table of the module docstring as numbers: ``(estimator, mode) -> claimed bias`` (a float
    for ``"value"``, a (d,) array for ``"loss"`` / ``"reward"``), from ``KL``, ``∇KL(π‖q)`` and
    ``∇KL(q‖π)`` alone (k2's value and reward biases have no shorter form and are omitted)."""
    p, q = np.asarray(probs, float), np.asarray(ref_probs, float)
    zero = np.zeros_like(m.grad)
    return {("k1", "value"): 0.0, ("k3", "value"): float(q[p > 0].sum() - 1.0),
            ("k1", "loss"): -m.grad, ("k2", "loss"): zero, ("k3", "loss"): m.grad_reverse - m.grad,
            ("k1", "reward"): zero, ("k3", "reward"): -m.grad_reverse}
