"""The registry's estimators inside verl: advantage functions with verl's call signature, and
their registration in verl's advantage registry (``verl.trainer.ppo.core_algos``).

Usage (verl 0.9; ``pip install --no-deps verl``, see ``docs/verl.md``)::

    from oblr_theory.integrations import verl as oblr_verl
    oblr_verl.register()                       # optimal_loo, opo_loo, optimal_loo_shrink, optimal
    oblr_verl.patch_ray_trainer()              # the S batch fields reach them (see below)
    # algorithm.adv_estimator=optimal_loo

A registered function is called as verl calls every estimator,
``fn(token_level_rewards=(bs, T), response_mask=(bs, T), index=(bs,) uids, config=..., **batch_fields)``,
and returns ``(advantages, returns)``, both ``(bs, T)``: the registry's advantage ``A_j`` of each
response, computed on its whole group (the responses sharing a uid), broadcast to its response
tokens (outcome reward: ``r_j = Σ_t token_level_rewards[j, t]``, as verl's outcome estimators).

``S_j = ||s_j||²`` (the estimators that need it) comes from ``s_source``:

* ``"exact"``: the batch field :data:`SQ_NORMS_FIELD` (``"oblr_sq_norms"``, shape ``(bs,)``) that the
  actor fills in (e.g. with :func:`oblr_theory.bridge.score_gram`'s diagonal);
* ``"otb_proxy"``: verl's OTB proxy ``Σ_t (1 − 2π_t + Σπ²_t)`` over the response tokens, from the batch
  fields ``old_log_probs`` and ``sum_pi_squared`` (``actor.calculate_sum_pi_squared=True``): the
  squared norm of each token's logit-space score ``e_y − π``, summed as if the tokens' scores were
  orthogonal (a proxy, T8);
* ``"length"``: ``S_j = ℓ_j``, the response length (the T8 length proxy);
* ``"auto"`` (default): ``"exact"`` if the field is passed, else ``"otb_proxy"`` if both of its fields
  are passed, else a refusal (never a silent fallback to the length).

verl 0.9's ``verl.trainer.ppo.ray_trainer.compute_advantage`` forwards to a registered estimator only
``token_level_rewards``, ``response_mask``, ``config``, ``index`` (``uid``) and ``reward_baselines``. The
``S`` fields reach our functions through :func:`batch_kwargs`: :func:`compute_advantage` is a drop-in for
verl's that calls ``fn(**batch_kwargs(data))`` for the functions made here and hands every other
estimator to verl's own; :func:`patch_ray_trainer` puts it in verl's place (:func:`unpatch_ray_trainer`
undoes it). Without it only ``s_source="length"`` (or an estimator that needs no ``S``) runs. verl's v1
trainer (``trainer.use_v1=True``, verl 0.9's default) loads a fixed list of fields for its advantage step
that holds neither ``oblr_sq_norms`` nor ``sum_pi_squared``: there ``"auto"`` still refuses.

Groups may have unequal sizes and appear in any order; a group smaller than the estimator's
``min_group`` (``G ≥ 2`` for the leave-one-out estimators) is refused, naming its uid.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Mapping

import numpy as np
import torch

from .. import estimators

__all__ = ["SQ_NORMS_FIELD", "S_FIELDS", "S_SOURCES", "DEFAULT_NAMES", "sequence_sq_norms", "group_advantages",
           "make_adv_fn", "register", "batch_kwargs", "compute_advantage", "patch_ray_trainer",
           "unpatch_ray_trainer"]

#: The batch field (``data.batch[...]``, shape ``(bs,)``) holding the exact ``S_j``.
SQ_NORMS_FIELD = "oblr_sq_norms"
#: The batch fields that carry ``S`` (read by :func:`batch_kwargs` when present).
S_FIELDS = (SQ_NORMS_FIELD, "old_log_probs", "sum_pi_squared")
S_SOURCES = ("auto", "exact", "otb_proxy", "length")
_CORE_ALGOS = "verl.trainer.ppo.core_algos"
_RAY_TRAINER = "verl.trainer.ppo.ray_trainer"
_READS_BATCH = "oblr_reads_batch_fields"  # marks the functions made by make_adv_fn
#: Registered by default: the package's estimators that verl lacks (verl's own ``grpo``, ``rloo``,
#: ``opo`` keep their names; the registry reproduces them, ``tests/integrations/test_verl.py``).
DEFAULT_NAMES = ("optimal_loo", "opo_loo", "optimal_loo_shrink", "optimal")


def sequence_sq_norms(response_mask, *, s_source: str = "auto", sq_norms=None, old_log_probs=None,
                      sum_pi_squared=None):
    """``S_j`` of each response, shape ``(bs,)`` float64, from ``s_source`` (module docstring).

    ``"otb_proxy"``: ``Σ_t m_jt (1 − 2 exp(old_log_probs_jt) + sum_pi_squared_jt)`` (verl's OTB
    ``W_T``, without importance weights). Refuses a missing field, naming it."""
    if s_source not in S_SOURCES:
        raise ValueError(f"s_source={s_source!r} is not one of {S_SOURCES}")
    mask = response_mask.to(torch.float64)
    if s_source == "auto":
        if sq_norms is not None:
            s_source = "exact"
        elif old_log_probs is not None and sum_pi_squared is not None:
            s_source = "otb_proxy"
        else:
            raise ValueError(
                f"S is not available: pass the batch field {SQ_NORMS_FIELD!r} (exact S, shape (bs,)), or "
                f"'old_log_probs' and 'sum_pi_squared' (verl's OTB proxy; actor.calculate_sum_pi_squared="
                f"True), e.g. fn(**batch_kwargs(data)) (verl's own compute_advantage passes neither: "
                f"oblr_verl.patch_ray_trainer()); or choose s_source='length' explicitly")
    if s_source == "exact":
        if sq_norms is None:
            raise ValueError(f"s_source='exact' needs the batch field {SQ_NORMS_FIELD!r} (shape (bs,)), got None")
        S = torch.as_tensor(sq_norms).to(device=mask.device, dtype=torch.float64).reshape(-1)
        if S.shape[0] != mask.shape[0]:
            raise ValueError(f"{SQ_NORMS_FIELD} must have shape ({mask.shape[0]},), got {tuple(sq_norms.shape)}")
        return S
    if s_source == "otb_proxy":
        for arg, val in (("old_log_probs", old_log_probs), ("sum_pi_squared", sum_pi_squared)):
            if val is None:
                raise ValueError(f"s_source='otb_proxy' needs the batch field {arg!r} (shape (bs, T)), got None")
            if tuple(val.shape) != tuple(mask.shape):
                raise ValueError(f"{arg} must have response_mask's shape {tuple(mask.shape)}, got {tuple(val.shape)}")
        w = 1 - 2 * old_log_probs.to(torch.float64).exp() + sum_pi_squared.to(torch.float64)
        return (w * mask).sum(-1)
    return mask.sum(-1)


def _groups(index, bs: int) -> list[list[int]]:
    """Row indices of each uid, in order of first appearance (any order, any sizes)."""
    if index is None:
        raise ValueError("index= (the uid of each response, verl's data.non_tensor_batch['uid']) is required "
                         "to form the groups; got None")
    if len(index) != bs:
        raise ValueError(f"index must have one uid per response ({bs}), got {len(index)}")
    rows: dict[Any, list[int]] = {}
    for i, uid in enumerate(np.asarray(index, dtype=object).tolist()):
        rows.setdefault(uid, []).append(i)
    return list(rows.values())


def group_advantages(token_level_rewards, response_mask, index, estimator: str = "optimal_loo", *,
                     params: Mapping[str, Any] | None = None, s_source: str = "auto", sq_norms=None,
                     old_log_probs=None, sum_pi_squared=None):
    """``(advantages, returns)`` of shape ``(bs, T)``: ``A_j`` of the registry estimator ``estimator``
    (with ``params``) on the whole group of each response (rows sharing a uid in ``index``),
    times ``response_mask``; ``returns`` equals ``advantages`` (verl's outcome-estimator convention).

    ``r_j = Σ_t token_level_rewards[j, t]`` (as verl), ``ℓ_j = Σ_t response_mask[j, t]``, ``S_j`` from
    :func:`sequence_sq_norms` (only if the estimator needs it). Computed in float64, returned in
    ``token_level_rewards``'s dtype. Groups of equal size go through the registry in one call.
    Token aggregation is verl's ``loss_agg_mode``, so ``params`` may not set ``aggregation``.
    Valid only if every group has at least the estimator's ``min_group`` responses."""
    params = dict(params or {})
    if "aggregation" in params or "std_scope" in params:
        raise ValueError("params may not set 'aggregation' or 'std_scope': verl's actor.loss_agg_mode "
                         "aggregates the tokens")
    est = estimators.get(estimator, **params)
    if est.batch_coupled:
        raise ValueError(f"estimator {estimator!r} is batch-coupled; use verl's own function")
    if token_level_rewards.ndim != 2 or tuple(response_mask.shape) != tuple(token_level_rewards.shape):
        raise ValueError(f"token_level_rewards and response_mask must both have shape (bs, T), got "
                         f"{tuple(token_level_rewards.shape)} and {tuple(response_mask.shape)}")
    bs = token_level_rewards.shape[0]
    groups = _groups(index, bs)
    r = token_level_rewards.to(torch.float64).sum(-1)
    ell = response_mask.to(torch.float64).sum(-1)
    S = sequence_sq_norms(response_mask, s_source=s_source, sq_norms=sq_norms, old_log_probs=old_log_probs,
                          sum_pi_squared=sum_pi_squared) if "sq_norms" in est.needs else None
    adv = torch.empty_like(r)
    by_size: dict[int, list[list[int]]] = {}
    for rows in groups:
        if len(rows) < est.min_group:
            uid = np.asarray(index, dtype=object)[rows[0]]
            raise ValueError(f"estimator {estimator!r} needs groups of at least {est.min_group} responses; "
                             f"uid {uid!r} has {len(rows)} (set rollout.n >= {est.min_group})")
        by_size.setdefault(len(rows), []).append(rows)
    for rows_list in by_size.values():
        ix = torch.tensor(rows_list, device=r.device)  # (n, G)
        a = est.advantages(r[ix], S[ix] if S is not None else None, ell[ix])
        adv[ix.reshape(-1)] = a.reshape(-1)
    out = (adv[:, None] * response_mask.to(torch.float64)).to(token_level_rewards.dtype)
    return out, out


def make_adv_fn(estimator: str, *, params: Mapping[str, Any] | None = None, s_source: str = "auto"):
    """A function with verl's advantage-estimator signature running :func:`group_advantages`.

    verl calls it as ``fn(token_level_rewards=, response_mask=, config=, index=, [reward_baselines=],
    ...)``; the ``S`` fields arrive as keywords ``oblr_sq_norms``, ``old_log_probs``, ``sum_pi_squared``
    (see :func:`batch_kwargs`). Other keywords verl passes (``config``, ``reward_baselines``) are unused."""
    estimators.get(estimator, **dict(params or {}))  # refuse a bad name or parameter now, not at step 1
    if s_source not in S_SOURCES:
        raise ValueError(f"s_source={s_source!r} is not one of {S_SOURCES}")

    def adv_fn(token_level_rewards, response_mask, index=None, config=None, **fields):
        return group_advantages(token_level_rewards, response_mask, index, estimator, params=params,
                                s_source=s_source, sq_norms=fields.get(SQ_NORMS_FIELD),
                                old_log_probs=fields.get("old_log_probs"),
                                sum_pi_squared=fields.get("sum_pi_squared"))

    adv_fn.__name__ = f"oblr_{estimator}"
    setattr(adv_fn, _READS_BATCH, True)  # compute_advantage calls it with batch_kwargs(data)
    adv_fn.__doc__ = f"verl advantage estimator: oblr_theory registry {estimator!r} (s_source={s_source!r})."
    return adv_fn


def register(names=DEFAULT_NAMES, *, params: Mapping[str, Mapping[str, Any]] | None = None,
             s_source: str = "auto", prefix: str = "") -> dict[str, Any]:
    """Register ``prefix + name`` for each registry ``name`` in verl's advantage registry
    (``core_algos.register_adv_est``) and return ``{verl_name: fn}``. ``params``: per-name estimator
    parameters. Refuses a name verl already holds for another function (e.g. ``rloo``: use
    ``prefix="oblr_"``). Calling it twice with the same settings is an error too (verl keeps the first)."""
    core_algos = _verl_module(_CORE_ALGOS)
    params = dict(params or {})
    out = {}
    for name in names:
        verl_name = prefix + name
        if verl_name in core_algos.ADV_ESTIMATOR_REGISTRY:
            raise ValueError(f"verl already has an advantage estimator named {verl_name!r}; pass prefix= "
                             f"(e.g. prefix='oblr_') or leave {name!r} out of names=")
        fn = make_adv_fn(name, params=params.get(name), s_source=s_source)
        core_algos.register_adv_est(verl_name)(fn)
        out[verl_name] = fn
    return out


def _verl_module(name: str):
    """``importlib.import_module(name)`` (reads ``sys.modules`` first, so a test may stand in for verl)."""
    return importlib.import_module(name)


def batch_kwargs(data) -> dict[str, Any]:
    """The keywords of a registered function from a verl ``DataProto``: verl's own
    (``token_level_rewards``, ``response_mask``, ``index`` = ``uid``) plus the ``S`` fields present in
    ``data.batch`` (:data:`S_FIELDS`). Refuses a batch without one of verl's three, naming it."""
    batch = data.batch
    for key in ("token_level_rewards", "response_mask"):
        if key not in batch.keys():
            raise ValueError(f"data.batch has no {key!r}: verl's trainer sets it before the advantage step")
    if "uid" not in data.non_tensor_batch:
        raise ValueError("data.non_tensor_batch has no 'uid' (the group of each response): the registry's "
                         "estimators need the groups")
    kw = {"token_level_rewards": batch["token_level_rewards"], "response_mask": batch["response_mask"],
          "index": data.non_tensor_batch["uid"]}
    for key in S_FIELDS:
        if key in batch.keys():
            kw[key] = batch[key]
    return kw


def _ours(adv_estimator):
    """The function verl's registry holds for ``adv_estimator`` if :func:`make_adv_fn` made it, else None."""
    name = getattr(adv_estimator, "value", adv_estimator)  # verl's AdvantageEstimator is a str Enum
    fn = _verl_module(_CORE_ALGOS).ADV_ESTIMATOR_REGISTRY.get(name)
    return fn if getattr(fn, _READS_BATCH, False) else None


def _verl_compute_advantage():
    """verl's own ``ray_trainer.compute_advantage`` (the saved one while :func:`patch_ray_trainer` is on)."""
    if _PATCHED:
        return _PATCHED["original"]
    fn = _verl_module(_RAY_TRAINER).compute_advantage
    if fn is compute_advantage:
        raise RuntimeError(f"{_RAY_TRAINER}.compute_advantage was set to oblr_theory's drop-in by hand; "
                           "use patch_ray_trainer(), which keeps verl's own for the other estimators")
    return fn


def compute_advantage(data, adv_estimator, gamma: float = 1.0, lam: float = 1.0, num_repeat: int = 1,
                      norm_adv_by_std_in_grpo: bool = True, config=None):
    """Drop-in for verl's ``ray_trainer.compute_advantage`` (same signature, returns ``data``).

    For an ``adv_estimator`` whose function in verl's registry :func:`make_adv_fn` made (every name
    :func:`register` adds): ``advantages, returns = fn(**batch_kwargs(data), config=config)``, so the ``S``
    fields (:data:`S_FIELDS`) reach it, written to ``data.batch["advantages"]`` and ``["returns"]``.
    ``gamma``, ``lam``, ``num_repeat`` and ``norm_adv_by_std_in_grpo`` do not apply to these outcome
    estimators (their parameters are ``register(params=...)``). Every other estimator (``gae``, ``grpo``,
    ``rloo``, ...) goes to verl's own function with all arguments, unchanged.
    Valid only if ``data.batch`` holds ``response_mask`` (verl's trainers set it before this step)."""
    fn = _ours(adv_estimator)
    if fn is None:
        return _verl_compute_advantage()(data, adv_estimator, gamma=gamma, lam=lam, num_repeat=num_repeat,
                                         norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, config=config)
    advantages, returns = fn(**batch_kwargs(data), config=config)
    data.batch["advantages"] = advantages
    data.batch["returns"] = returns
    return data


#: While patched: {"original": verl's function, "modules": [names of the modules rebound]}.
_PATCHED: dict[str, Any] = {}


def patch_ray_trainer() -> list[str]:
    """Put :func:`compute_advantage` in place of verl's ``ray_trainer.compute_advantage``: in
    ``verl.trainer.ppo.ray_trainer`` and in every module already imported that bound verl's function to
    the name ``compute_advantage`` (``from ... import compute_advantage``); modules imported later get
    the drop-in by that import. Returns the names of the modules rebound. Calling it again is a no-op.

    Valid only in the process that runs the trainer's advantage step (verl's ``TaskRunner`` is a Ray
    actor: patch there, as with :func:`register`)."""
    if _PATCHED:
        return list(_PATCHED["modules"])
    original = _verl_compute_advantage()
    rebound = [name for name, mod in list(sys.modules.items())
               if mod is not None and getattr(mod, "__dict__", {}).get("compute_advantage") is original]
    for name in rebound:
        sys.modules[name].compute_advantage = compute_advantage
    _PATCHED.update(original=original, modules=rebound)
    return list(rebound)


def unpatch_ray_trainer() -> list[str]:
    """Undo :func:`patch_ray_trainer`: give verl's function back to the modules it rebound (a module
    imported while patched keeps the drop-in, which then calls verl's function for every estimator
    but ours). Returns those modules' names; a no-op when not patched."""
    if not _PATCHED:
        return []
    original, rebound = _PATCHED["original"], _PATCHED["modules"]
    for name in rebound:
        mod = sys.modules.get(name)
        if mod is not None and mod.__dict__.get("compute_advantage") is compute_advantage:
            mod.compute_advantage = original
    _PATCHED.clear()
    return list(rebound)
