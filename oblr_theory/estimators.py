"""The estimator registry (docs/theory.md: The estimators): name -> advantage map ``A = f(r, S, ℓ)``.

Every estimator of this project has the form (one convention everywhere)::

    ĝ_x = (1/G) Σ_j A_j s_j        (one group of G responses to prompt x)
    ĝ   = (1/B) Σ_b ĝ_{x_b}        (a batch of B prompts, one group each)

and is fully described by its advantage map. ``advantages(rewards, sq_norms=None, lengths=None)``
maps arrays of shape ``(..., G)`` to advantages of shape ``(..., G)``; the same source runs on
numpy arrays and torch tensors (see ``_ops``), so the exact engine, the Monte Carlo sampler
and the torch bridge all use these functions.

Zero-denominator rules (one per case, each keeps the estimator's expectation as documented):

* ``grpo``: when ``std(r) + eps == 0`` (all rewards equal and ``eps = 0``) the numerator
  ``r_j − r̄`` is exactly zero, and ``A_j = 0``.
* ``opo`` / ``optimal`` (inclusive): when ``Σ_k w_k = 0`` (all weights zero) the baseline falls
  back to the plain group mean ``r̄``.
* ``opo_loo`` / ``optimal_loo``: when ``Σ_{k≠j} w_k = 0`` the baseline falls back to the
  leave-one-out mean ``r̄_{−j}``. The fallback depends only on the other responses, so the
  estimator stays unbiased (T1).

Token aggregation (docs/theory.md: Token aggregation) is a parameter of every estimator,
``aggregation=...``; it multiplies ``A_j`` by a length-dependent weight, so it is the same form:

* ``"seq-mean-token-sum"`` (default): ``A_j`` unchanged, the true REINFORCE form;
* ``"seq-mean-token-mean"`` (original GRPO): ``A_j / ℓ_j``;
* ``"token-mean"`` (per-group token mean): ``A_j · G / Σ_k ℓ_k`` (so that ``ĝ_x = Σ_j A_j s_j / Σ_k ℓ_k``,
  one token count per group). This is *not* TRL's ``loss_type="dapo"``/``"bnpo"`` (TRL's default) nor
  verl's ``loss_agg_mode="token-mean"``: those divide by one token count over the whole batch,
  which is the batch-coupled mode ``"batch-token-mean"`` below. The two agree only when B = 1 or
  every group has the same token total;
* ``"constant"`` (Dr.GRPO): ``A_j / max_length`` (``ĝ = Σ_j A_j s_j / (G·C)``).

Batch-coupled modes (docs/theory.md: Batch-coupled modes). Two modes that the trainers run
divide by a statistic of the *whole batch*, so the groups of a batch are no longer independent
and the exact engine's law "batch = B independent groups" (T2) does not hold for them:

* ``aggregation="batch-token-mean"``: ``A_bj · B·G / Σ_{b',k} ℓ_{b'k}``, so that the batch estimate
  ``ĝ = (1/B) Σ_b (1/G) Σ_j A_bj s_bj`` is ``Σ_{b,j} A_bj s_bj / Σ_{b,k} ℓ_bk``. This is TRL 1.16's
  ``loss_type="bnpo"`` (``(per_token_loss * mask).sum() / mask.sum()``) and ``"dapo"`` (the same sum
  over ``num_items_in_batch``, the generation batch's token count), and verl's
  ``loss_agg_mode="token-mean"`` (``masked_mean`` over the batch's tokens).
* ``std_scope="batch"`` (``grpo`` only): ``A_bj = (r_bj − r̄_b) / (std_batch(r) + eps)``, the group
  mean but the standard deviation of all ``B·G`` rewards of the batch around their own mean (TRL
  1.16's ``scale_rewards="batch"``: ``nanstd(rewards)``, Bessel-corrected, i.e. ``ddof=1``, with
  ``eps = 1e-4``).

Their ``advantages`` need ``batch_axis=`` (the axis of the rewards that indexes the B groups of one
batch) and refuse without it. Exact moments: :mod:`oblr_theory.exact_batch` (whole batches
enumerated); Monte Carlo beyond its limits: :func:`oblr_theory.exact_batch.sample_batch_gradients`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import _ops

__all__ = ["Estimator", "get", "names", "peer_names", "register", "AGGREGATIONS", "BATCH_AGGREGATIONS", "STD_SCOPES", "spec"]

AGGREGATIONS = ("seq-mean-token-sum", "seq-mean-token-mean", "token-mean", "constant")
#: Aggregation modes that couple the groups of a batch (they need ``batch_axis=``).
BATCH_AGGREGATIONS = ("batch-token-mean",)
#: Scopes of grpo's standard deviation: per group, or over the whole batch (batch-coupled).
STD_SCOPES = ("group", "batch")


@dataclass(frozen=True)
class _Spec:
    """What the registry knows about one estimator (its advantage map and its metadata)."""

    name: str
    fn: Callable[..., Any]
    needs: tuple[str, ...]  # subset of ("sq_norms", "lengths")
    defaults: dict[str, Any]
    unbiased: bool
    min_group: int
    summary: str
    peer: bool = False  # a peer trainer's estimator (listed by peer_names(), not names())
    batch_coupled: bool = False  # its map takes the batch axis: fn(r, S, ℓ, axis=..., **params)


_REGISTRY: dict[str, _Spec] = {}


def register(name, *, needs=(), defaults=None, unbiased, min_group=1, peer=False, batch_coupled=False):
    """Decorator adding an advantage map ``fn(r, S, ℓ, **params) -> A`` to the registry.

    ``peer=True``: a peer trainer's estimator (:mod:`oblr_theory.peers`), listed by
    :func:`peer_names`. ``batch_coupled=True``: the map couples the groups of a batch and is called
    as ``fn(r, S, ℓ, axis=batch_axis, **params)``."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = _Spec(name, fn, tuple(needs), dict(defaults or {}), unbiased,
                                min_group, doc[0] if doc else "", peer, batch_coupled)
        return fn

    return wrap


def names() -> list[str]:
    """The project's registered estimator names, in registry order (the peers' estimators:
    :func:`peer_names`)."""
    return [n for n, s in _REGISTRY.items() if not s.peer]


def peer_names() -> list[str]:
    """The peers' estimators (:mod:`oblr_theory.peers`: verl's and OpenRLHF's), in registry order."""
    return [n for n, s in _REGISTRY.items() if s.peer]


def spec(name: str) -> _Spec:
    """The registry entry of ``name`` (clear error for unknown names)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown estimator name={name!r}; registered: {', '.join(names())}") from None


@dataclass(frozen=True)
class Estimator:
    """A registered advantage map with bound parameters. Build it with :func:`get`."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    aggregation: str = "seq-mean-token-sum"
    max_length: float | None = None
    std_scope: str = "group"

    def __post_init__(self):
        # the one check of every parameter, whether built by get() or directly
        for key, value in self.params.items():
            if value is not _REQUIRED:
                _check_param(f"estimator {self.name!r}", key, value)
        if self.max_length is not None:
            _check_param(f"estimator {self.name!r}", "max_length", self.max_length)
        if self.std_scope not in STD_SCOPES or (self.std_scope == "batch" and self.name != "grpo"):
            raise ValueError(f"std_scope={self.std_scope!r}: 'group', or 'batch' for estimator 'grpo' only")

    @property
    def needs(self) -> tuple[str, ...]:
        extra = () if self.aggregation in ("seq-mean-token-sum", "constant") else ("lengths",)
        return tuple(dict.fromkeys(spec(self.name).needs + extra))

    @property
    def unbiased(self) -> bool:
        """True when T1 guarantees ``E ĝ = ∇J`` (token-sum aggregation only)."""
        return spec(self.name).unbiased and self.aggregation == "seq-mean-token-sum" and self.std_scope == "group"

    @property
    def min_group(self) -> int:
        return spec(self.name).min_group

    @property
    def batch_coupled(self) -> bool:
        """True when the advantages depend on the other groups of the batch (see the module
        docstring): ``advantages`` then needs ``batch_axis=``."""
        return self.aggregation in BATCH_AGGREGATIONS or self.std_scope == "batch" or spec(self.name).batch_coupled

    def _coupling(self) -> str:
        parts = ([f"aggregation={self.aggregation!r}"] if self.aggregation in BATCH_AGGREGATIONS else []) + \
            ([f"std_scope={self.std_scope!r}"] if self.std_scope == "batch" else []) + \
            (["its batch-level statistic"] if spec(self.name).batch_coupled else [])
        return " and ".join(parts)

    def advantages(self, rewards, sq_norms=None, lengths=None, *, check_values: bool = True,
                   batch_axis: int | None = None):
        """Advantages ``A`` of shape ``(..., G)`` for rewards of shape ``(..., G)``.

        ``sq_norms`` (``S_j = ||s_j||²``) and ``lengths`` (``ℓ_j``) have the rewards' shape and
        are required only by the estimators (or aggregations) that use them.
        ``check_values=False`` skips the finiteness and sign checks of the inputs (shapes and
        types are still checked): on a GPU each is a host synchronisation, and a caller that
        validated its inputs, or checks the advantages afterwards, need not wait.

        ``batch_axis`` (batch-coupled modes only, where it is required): the axis of ``rewards``
        that indexes the B groups of one batch (not the last axis, which holds the G responses).
        Every other leading axis indexes independent batches.
        """
        s = spec(self.name)
        chk = {"values": check_values}
        r = _ops.check_array("rewards", rewards, **chk)
        if r.ndim < 1:
            raise ValueError("rewards must have shape (..., G), got a scalar")
        group = r.shape[-1]
        if group < s.min_group:
            raise ValueError(f"estimator {self.name!r} needs group size G >= {s.min_group}, "
                             f"got rewards with G = {group}")
        S = _ops.check_array("sq_norms", sq_norms, like=r, nonneg=True, **chk) if sq_norms is not None else None
        ell = _ops.check_array("lengths", lengths, like=r, nonneg=True, **chk) if lengths is not None else None
        for arg, val in (("sq_norms", S), ("lengths", ell)):
            if arg in self.needs and val is None:
                why = f"estimator {self.name!r}" if arg in s.needs else f"aggregation {self.aggregation!r}"
                raise ValueError(f"{why} needs {arg}= (an array shaped like rewards), got None")
        axis = self._batch_axis(batch_axis, r.ndim)
        if self.std_scope == "batch":
            adv = _grpo_batch_std(r, axis, **self.params)
        elif s.batch_coupled:
            adv = s.fn(r, S, ell, axis=axis, **self.params)
        else:
            adv = s.fn(r, S, ell, **self.params)
        if self.aggregation in BATCH_AGGREGATIONS:
            return _batch_token_mean(adv, ell, axis)
        return _aggregate(adv, ell, self.aggregation, self.max_length)

    def _batch_axis(self, batch_axis, ndim: int) -> int | None:
        """The batch axis as a non-negative int (``None`` for per-group modes); refuses a missing
        or invalid one for the batch-coupled modes."""
        if not self.batch_coupled:
            return None
        if batch_axis is None:
            raise ValueError(
                f"estimator {self.name!r} with {self._coupling()} couples the groups of a batch: pass "
                f"batch_axis= (the axis of rewards that indexes the B groups of one batch). The exact "
                f"engine (exact.estimator_moments) and the per-group samplers treat a batch as independent "
                f"groups and cannot evaluate it; use oblr_theory.exact_batch.batch_moments (exact, small "
                f"problems) or oblr_theory.exact_batch.sample_batch_gradients (Monte Carlo)")
        if isinstance(batch_axis, bool) or not isinstance(batch_axis, (int, np.integer)) \
                or not -ndim <= batch_axis < ndim:
            raise ValueError(f"batch_axis must be an int indexing an axis of rewards (ndim={ndim}), "
                             f"got {batch_axis!r}")
        axis = int(batch_axis) % ndim
        if axis == ndim - 1:
            raise ValueError(f"batch_axis={batch_axis!r} is the group axis (the last); pass the leading "
                             f"axis that indexes the groups of a batch (rewards shaped (..., B, G): -2)")
        return axis


def get(name: str, *, aggregation: str = "seq-mean-token-sum", max_length=None, std_scope: str = "group",
        **params) -> Estimator:
    """The estimator ``name`` with parameters ``params`` (unknown parameters are an error).

    ``aggregation`` picks the token-level loss mode (docs/theory.md: Token aggregation); ``max_length`` is the
    constant ``C`` of the ``"constant"`` mode (Dr.GRPO). ``std_scope="batch"`` (``grpo`` only) scales
    by the batch's reward std (TRL ``scale_rewards="batch"``); it and ``aggregation="batch-token-mean"``
    are batch-coupled (module docstring).
    """
    s = spec(name)
    unknown = set(params) - set(s.defaults)
    if unknown:
        allowed = ", ".join(sorted(s.defaults)) or "none"
        raise ValueError(f"estimator {name!r} got unknown parameter(s) {sorted(unknown)}; allowed: {allowed}")
    if aggregation not in AGGREGATIONS + BATCH_AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r} is not one of {AGGREGATIONS + BATCH_AGGREGATIONS}")
    if std_scope not in STD_SCOPES:
        raise ValueError(f"std_scope={std_scope!r} is not one of {STD_SCOPES}")
    if std_scope == "batch" and name != "grpo":
        raise ValueError(f"std_scope='batch' applies to estimator 'grpo' only (it has a reward std), "
                         f"got estimator {name!r}")
    if aggregation == "constant":
        if max_length is None:
            raise ValueError("aggregation='constant' needs max_length > 0, got None")
        _check_param(f"estimator {name!r}", "max_length", max_length)
        if max_length <= 0:
            raise ValueError(f"aggregation='constant' needs max_length > 0, got {max_length!r}")
    merged = {**s.defaults, **params}
    missing = [k for k, v in merged.items() if v is _REQUIRED]
    if missing:
        raise ValueError(f"estimator {name!r} needs parameter(s) {missing}")
    return Estimator(name, merged, aggregation, max_length, std_scope)


def _check_param(owner: str, key: str, value) -> None:
    """Refuse a parameter that is not a finite real number (or an array of them): NaN, inf,
    None, bool, str, complex. Raises ValueError naming the parameter; nothing is coerced."""
    ok_scalar = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))
    if ok_scalar:
        if not np.isfinite(value):
            raise ValueError(f"{owner} parameter {key}={value!r} must be finite (not NaN or inf)")
        return
    if _ops.is_torch(value) or isinstance(value, np.ndarray):
        kind = str(value.dtype)
        real = not (value.is_complex() or kind == "torch.bool") if _ops.is_torch(value) \
            else value.dtype.kind in "iuf"
        if not real:
            raise ValueError(f"{owner} parameter {key} must hold real numbers, got dtype {kind}")
        finite = value.isfinite() if _ops.is_torch(value) else np.isfinite(value)
        if not bool(finite.all()):
            raise ValueError(f"{owner} parameter {key} must be finite (it holds NaN or inf)")
        return
    raise ValueError(f"{owner} parameter {key}={value!r} must be a finite real number, "
                     f"got {type(value).__name__}")


_REQUIRED = object()


def _aggregate(adv, lengths, aggregation, max_length):
    """Token aggregation as an advantage weight (docs/theory.md: Token aggregation); see the module docstring."""
    if aggregation == "seq-mean-token-sum":
        return adv
    if aggregation == "constant":
        return adv / max_length
    if aggregation == "seq-mean-token-mean":
        if _ops.any_(lengths <= 0):
            raise ValueError("aggregation 'seq-mean-token-mean' needs lengths > 0")
        return adv / lengths
    total = _ops.sum_keep(lengths)  # token-mean: ĝ = Σ_j A_j s_j / Σ_k ℓ_k
    if _ops.any_(total <= 0):
        raise ValueError("aggregation 'token-mean' needs Σ_k lengths_k > 0 in every group")
    return adv * (lengths.shape[-1] / total)


def _batch_token_mean(adv, lengths, axis):
    """``A_bj · B·G / Σ_{b,k} ℓ_bk`` over the batch axis ``axis`` and the group axis (batch-token-mean:
    ``ĝ = Σ_{b,j} A_bj s_bj / Σ_{b,k} ℓ_bk``; TRL ``bnpo``/``dapo``, verl ``token-mean``)."""
    total = _ops.sum_axes_keep(lengths, (axis, -1))
    if _ops.any_(total <= 0):
        raise ValueError("aggregation 'batch-token-mean' needs Σ lengths > 0 over every batch")
    return adv * (lengths.shape[axis] * lengths.shape[-1] / total)


def _grpo_batch_std(r, axis, eps, ddof):
    """``A_bj = (r_bj − r̄_b) / (std_batch(r) + eps)``: group-centred, scaled by the std of all
    ``B·G`` rewards of the batch about their mean (TRL 1.16 ``scale_rewards="batch"``:
    ``(rewards − mean_grouped_rewards) / (nanstd(rewards) + 1e-4)``, ``nanstd`` Bessel-corrected).
    T1: biased. Zero rules as ``grpo``: ``r_bj − r̄_b = 0`` exactly in a tied group, ``std = 0``
    exactly when the whole batch is tied, ``A = 0`` where ``std + eps = 0``. Valid for G ≥ 2."""
    if ddof not in (0, 1):
        raise ValueError(f"grpo parameter ddof must be 0 or 1, got {ddof!r}")
    if not eps >= 0:
        raise ValueError(f"grpo parameter eps must be >= 0, got {eps!r}")
    G, n = r.shape[-1], r.shape[-1] * r.shape[axis]
    centred = r - _ops.sum_keep(r) / G
    tie = _ops.max_keep(r) == -_ops.max_keep(-r)
    centred = _ops.where(tie, 0 * centred + 0.0, centred)
    axes = (axis, -1)
    dev = r - _ops.sum_axes_keep(r, axes) / n
    batch_tie = _ops.max_axes_keep(r, axes) == -_ops.max_axes_keep(-r, axes)
    dev = _ops.where(batch_tie, 0 * dev + 0.0, dev)
    std = _ops.sqrt(_ops.sum_axes_keep(dev * dev, axes) / (n - ddof))
    den = std + eps
    ok = den > 0
    return _ops.where(ok, centred / _ops.where(ok, den, _ops.ones_like(den)), 0 * centred)


# ---------------------------------------------------------------------------------------------
# The advantage maps. Each: formula, theorem label, unbiasedness, "valid only if".
# ---------------------------------------------------------------------------------------------


def _loo_mean(r):
    """``r̄_{−j} = Σ_{k≠j} r_k / (G − 1)``, the mean of the other responses."""
    return _ops.loo_sum(r) / (r.shape[-1] - 1)


def _weighted_baseline(r, w, leave_one_out: bool):
    """``Σ_k w_k r_k / Σ_k w_k`` (inclusive) or over ``k ≠ j`` (leave-one-out), with the
    documented fallback to the (leave-one-out) plain mean where the weights sum to zero.

    The weights are first divided by the largest weight in the sum: the ratio is unchanged, and
    tiny (subnormal) weights cannot lose precision in the products and sums."""
    if leave_one_out:
        w_gk, fallback = _ops.loo_rows(w), _loo_mean(r)  # (..., G, G): row j = weights k ≠ j
    else:
        w_gk, fallback = w[..., None, :], _ops.sum_keep(r) / r.shape[-1]  # (..., 1, G)
    r_k = r[..., None, :]
    top = _ops.max_keep(w_gk)
    w_gk = w_gk / _ops.where(top > 0, top, _ops.ones_like(top))
    num, den = (w_gk * r_k).sum(-1), w_gk.sum(-1)  # (..., G) or (..., 1)
    ok = den > 0
    safe_den = _ops.where(ok, den, _ops.ones_like(den))
    return _ops.where(ok, num / safe_den, fallback + 0 * num)


@register("reinforce", unbiased=True)
def _reinforce(r, S, ell):
    """``A_j = r_j`` (plain REINFORCE). T1: unbiased, ``E ĝ = ∇J``. Valid for any G ≥ 1."""
    return r + 0


@register("constant", defaults={"b": 0.0}, unbiased=True)
def _constant(r, S, ell, b):
    """``A_j = r_j − b`` with a fixed baseline ``b``. T1: unbiased; T2: ``V = (E[(r−b)²S] − ||g||²)/G``.

    Valid only if ``b`` does not depend on the group's responses (a number, or an array
    broadcastable to ``(..., 1)`` fixed per prompt).
    """
    return r - b


@register("dr_grpo", unbiased=False, min_group=2)
def _dr_grpo(r, S, ell):
    """``A_j = r_j − r̄`` (mean-centred, no std; Dr.GRPO). T1: biased by a pure scale,
    ``E ĝ = ((G−1)/G) ∇J``; T2: ``V = ((G−1)/G)² V_rloo``. Its ``G/(G−1)`` correction is ``rloo``.
    Valid for G ≥ 2.
    """
    return r - _ops.sum_keep(r) / r.shape[-1]


@register("grpo", defaults={"eps": 1e-6, "ddof": 1}, unbiased=False, min_group=2)
def _grpo(r, S, ell, eps, ddof):
    """``A_j = (r_j − r̄) / (std(r) + eps)`` (GRPO). T1: biased (the std is a function of the group).

    ``ddof=1`` (default) is the Bessel-corrected sample std, as ``torch.std`` in TRL, verl and
    OpenRLHF; ``ddof=0`` is the population std. ``eps`` defaults to 1e-6 (verl; TRL uses 1e-4).
    Zero rule: if ``std + eps == 0`` then ``r_j − r̄ = 0`` and ``A_j = 0``. Valid for G ≥ 2.
    """
    if ddof not in (0, 1):
        raise ValueError(f"grpo parameter ddof must be 0 or 1, got {ddof!r}")
    if not eps >= 0:
        raise ValueError(f"grpo parameter eps must be >= 0, got {eps!r}")
    G = r.shape[-1]
    centred = r - _ops.sum_keep(r) / G
    tie = _ops.max_keep(r) == -_ops.max_keep(-r)  # all rewards equal: r_j − r̄ = 0 exactly,
    centred = _ops.where(tie, 0 * centred + 0.0, centred)  # however r̄ rounds (0.1+0.1+0.1 ≠ 0.3)
    std = _ops.sqrt(_ops.sum_keep(centred * centred) / (G - ddof))
    den = std + eps
    ok = den > 0
    return _ops.where(ok, centred / _ops.where(ok, den, _ops.ones_like(den)), 0 * centred)


@register("rloo", unbiased=True, min_group=2)
def _rloo(r, S, ell):
    """``A_j = r_j − r̄_{−j}`` (leave-one-out mean). T1: unbiased; T2:
    ``V = (1/G)(E[(r−μ)²S] + σ² m_S/(G−1)) − (G−2)/(G(G−1)) ||g||²``. Valid for G ≥ 2.
    """
    return r - _loo_mean(r)


@register("opo", needs=("lengths",), unbiased=False, min_group=1)
def _opo(r, S, ell):
    """``A_j = r_j − Σ_k ℓ_k r_k / Σ_k ℓ_k`` (OPO, length-weighted, inclusive). T1: biased, O(1/G)
    (the baseline depends on ``y_j``). Fallback when ``Σ ℓ = 0``: ``r̄``. Valid for ``ℓ ≥ 0``.
    """
    return r - _weighted_baseline(r, ell, leave_one_out=False)


@register("opo_loo", needs=("lengths",), unbiased=True, min_group=2)
def _opo_loo(r, S, ell):
    """``A_j = r_j − Σ_{k≠j} ℓ_k r_k / Σ_{k≠j} ℓ_k`` (OPO, leave-one-out). T1: unbiased.
    Fallback when ``Σ_{k≠j} ℓ_k = 0``: ``r̄_{−j}``. Valid for G ≥ 2, ``ℓ ≥ 0``.
    """
    return r - _weighted_baseline(r, ell, leave_one_out=True)


@register("optimal", needs=("sq_norms",), unbiased=False, min_group=1)
def _optimal(r, S, ell):
    """``A_j = r_j − Σ_k S_k r_k / Σ_k S_k`` (gradient-weighted plug-in of T3's
    ``b* = E[rS]/E[S]``, inclusive). T1: biased, O(1/G). Fallback when ``Σ S = 0``: ``r̄``.
    Valid for ``S ≥ 0``.
    """
    return r - _weighted_baseline(r, S, leave_one_out=False)


@register("optimal_loo", needs=("sq_norms",), unbiased=True, min_group=2)
def _optimal_loo(r, S, ell):
    """``A_j = r_j − Σ_{k≠j} S_k r_k / Σ_{k≠j} S_k`` (gradient-weighted, leave-one-out; the
    OBLR-PO default). T1: unbiased (the baseline is independent of ``y_j``); T3: it estimates
    ``b* = m_rS / m_S``. Fallback when ``Σ_{k≠j} S_k = 0``: ``r̄_{−j}``. Valid for G ≥ 2, ``S ≥ 0``.
    """
    return r - _weighted_baseline(r, S, leave_one_out=True)


@register("oracle_optimal", defaults={"b_star": _REQUIRED}, unbiased=True)
def _oracle_optimal(r, S, ell, b_star):
    """``A_j = r_j − b*(x)`` with the exact ``b* = m_rS / m_S`` (T3; toy problems only).
    T1: unbiased; T2/T3: the least variance of any fixed baseline, ``V(b*)``.
    Valid only if ``b_star`` is the prompt's exact value (a number or an array broadcastable to
    ``(..., 1)``); ``exact.estimator_moments`` supplies it per prompt.
    """
    return r - b_star


@register("optimal_loo_shrink", needs=("sq_norms",), defaults={"lam": 0.5}, unbiased=True, min_group=2)
def _optimal_loo_shrink(r, S, ell, lam):
    """``A_j = r_j − [λ b^w_{−j} + (1 − λ) r̄_{−j}]``, ``b^w_{−j} = Σ_{k≠j} S_k r_k / Σ_{k≠j} S_k``
    (``optimal_loo`` shrunk towards ``rloo``; the fallbacks of both apply). T1: unbiased for
    every fixed ``λ``, because the baseline depends only on the other responses.

    Derivation. With ``ĝ_λ = ĝ_rloo − λ h`` and ``h = (1/G) Σ_j (b^w_{−j} − r̄_{−j}) s_j``
    (``E h = 0`` by T1: each coefficient is independent of ``y_j`` and ``E[s_j] = 0``), ``h``
    is a mean-zero control variate and the variance is exactly quadratic in ``λ``:
    ``V(λ) = V_rloo − 2λ tr Cov(ĝ_rloo, h) + λ² tr Var(h)``, minimised at
    ``λ* = tr Cov(ĝ_rloo, h) / tr Var(h)`` (``λ = 0``: rloo, ``λ = 1``: optimal_loo). ``λ*``
    depends on the problem and on ``G``; the plug-in ratio ``b^w`` pays ``λ² tr Var(h)``, so the
    default ``λ = 1/2`` keeps half of the shift towards ``b* = m_rS/m_S`` (T3) for a quarter
    of the ratio's added variance: it beats ``optimal_loo`` whenever ``λ* < 3/4``. The exact
    engine (``oblr_theory.exact_map``) reports ``λ*`` and ``V(λ)`` against ``G``.
    Valid for G ≥ 2, ``S ≥ 0``, any finite ``λ``.
    """
    if not np.isfinite(lam):
        raise ValueError(f"optimal_loo_shrink parameter lam must be finite, got {lam!r}")
    return r - (lam * _weighted_baseline(r, S, leave_one_out=True) + (1 - lam) * _loo_mean(r))

