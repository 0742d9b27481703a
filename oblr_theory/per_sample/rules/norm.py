"""Elementwise-affine norms: ``y = x̂ ⊙ (o + w) + c`` (LayerNorm, RMSNorm; ``o = 0``).

``x̂`` is the normalised input (independent of ``w`` and ``c``), ``o`` a fixed weight offset
(Gemma's RMSNorm computes ``x̂ ⊙ (1 + w)``: ``offset_norm.py``). Per-sample gradients, with
``b = ∂L/∂y`` and "pos" every axis but the sample axis and the parameter axes (positions and,
for per-head norms such as Qwen3's ``q_norm`` / ``k_norm``, heads):

    ∇w_n = Σ_pos b_n ⊙ x̂_n,        ∇c_n = Σ_pos b_n.

The Gram and the diagonal take these small per-sample gradients directly (the pass collects them
into panels: one reduction for ~100 norm weights); the weighted gradient applies the same rule to
``w b``. Capture: ``x̂ = (y − c) / (o + w)`` when ``o + w`` has no zero, so the output itself
(kept alive by the next layer anyway) suffices; else ``x̂`` is recomputed by calling the module
with ``o + w = 1`` and ``c = 0``.

Matching: a module is a norm if it is a ``nn.LayerNorm`` / ``nn.RMSNorm`` or its class name ends
in ``RMSNorm`` / ``LayerNorm`` (Hugging Face defines one class per family), its own parameters
are ``weight`` (and ``bias``), and a probe (``weight_offset``: two calls on a fixed random input,
with ``w = 0`` and ``w = 1``) finds the rule's offset. On its first real call each module is
checked to be ``y = x̂ ⊙ (o + w) + c`` (``check_affine``), else refused by name.
"""

from __future__ import annotations

import types
import weakref

import torch
from torch import nn

from ..kernels import is_plain, rows_of, work_dtype
from ..records import first_sample, forward_identity
from .base import LayerRule

__all__ = ["NormRule", "norm_weight_grads", "norm_bias_grads", "weight_offset"]

# Modules already shown to be elementwise-affine in their weight, with the forward that was
# checked: the check costs a call and a host sync, and a module's form does not change with its
# weights, so it runs once per module (again if its forward is replaced).
_AFFINE_CHECKED: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()
# module -> (the forward probed, its offset o or None): a module's form can depend on its own
# configuration, not only on its class, so the probe runs once per module (and forward)
_OFFSETS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _norm_like(module: nn.Module) -> bool:
    """A norm by type or class name, with parameters ``weight`` (and ``bias``) only."""
    named = type(module).__name__.endswith(("RMSNorm", "LayerNorm"))
    if not (isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or named):
        return False
    params = {k for k, p in module._parameters.items() if p is not None}
    return "weight" in params and params <= {"weight", "bias"}


def _bias(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def _plain_full(t: torch.Tensor, fill: float) -> torch.Tensor:
    """A plain tensor of ``t``'s shape, dtype and device filled with ``fill`` (also when ``t`` is
    a sharded DTensor outside the forward)."""
    return torch.full(tuple(t.shape), fill, dtype=t.dtype, device=t.device)


def call_with(module: nn.Module, weight_fill: float, args, kwargs) -> torch.Tensor:
    """The module's output with every weight entry ``weight_fill`` and bias 0."""
    overrides = {"weight": _plain_full(module.weight, weight_fill)}
    if _bias(module) is not None:
        overrides["bias"] = _plain_full(module.bias, 0.0)
    return torch.func.functional_call(module, overrides, tuple(args), kwargs)


def weight_offset(module: nn.Module) -> float | None:
    """The offset ``o`` of ``y = x̂ ⊙ (o + w) + c``: 0 or 1, None when neither fits.

    Probe on a fixed random input ``x`` of shape ``(2, *w.shape)``: ``y(w=0) = o x̂`` and
    ``y(w=1) = (o + 1) x̂``, so ``o = 0`` iff ``y(w=0) = 0`` and ``o = 1`` iff
    ``y(w=1) = 2 y(w=0)`` (exact in floating point: scaling by 1 or 2). Once per module and
    forward.
    """
    forward = forward_identity(module)
    known = _OFFSETS.get(module)
    if known is not None and known[0] is forward:
        return known[1]
    w = module.weight
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *w.shape), generator=gen, dtype=torch.float64)
    x = x.to(dtype=w.dtype if w.is_floating_point() else torch.float32, device=w.device)
    try:
        with torch.no_grad():
            y0, y1 = (call_with(module, fill, (x,), {}) for fill in (0.0, 1.0))
    except Exception:  # a module that cannot take a plain input of its weight's shape
        y0 = y1 = None
    offset = None
    if isinstance(y0, torch.Tensor) and y0.shape == x.shape:
        tol = 64 * torch.finfo(y1.dtype).eps * float(y1.abs().max().clamp(min=1.0))
        if float(y0.abs().max()) <= tol and float(y1.abs().max()) > tol:
            offset = 0.0
        elif float((y1 - 2 * y0).abs().max()) <= tol and float(y0.abs().max()) > tol:
            offset = 1.0
    _OFFSETS[module] = (forward, offset)
    return offset


def _rms_same_dtype(self, x: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) ⊙ (o + w)`` in the input's dtype (set by ``exact_forward``)."""
    eps = getattr(self, "variance_epsilon", getattr(self, "eps", None))
    xhat = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return xhat * (self._ghost_offset + self.weight) if self._ghost_offset else xhat * self.weight


class NormRule(LayerRule):
    """``y = x̂ ⊙ (o + w) + c`` with ``o = offset`` (formulas in the module docstring)."""

    name = "norm"
    offset = 0.0

    def matches(self, module: nn.Module) -> bool:
        return _norm_like(module) and weight_offset(module) == self.offset

    def scale_of(self, weight: torch.Tensor) -> torch.Tensor:
        """``o + w`` (the weight itself when ``o = 0``: no copy)."""
        return weight + self.offset if self.offset else weight

    def zero_scale(self, module, own) -> torch.Tensor | None:
        if "weight" in own and is_plain(module.weight):
            with torch.no_grad():  # o = 0: the weight itself, no operator
                return self.scale_of(module.weight)
        return None

    def exact_forward(self, module: nn.Module):
        """A same-dtype forward for an RMSNorm that computes in float32 whatever its input
        (Hugging Face's; its ``eps`` or ``variance_epsilon``), so that a float64 model is float64
        throughout; None for others.

        The replacement ``x / sqrt(mean(x²) + eps) ⊙ (o + w)`` is used only where it agrees with
        the module's own forward on a float64 probe to float32 accuracy (``64 d 2^-24``
        relative, ``d`` the normalised size)."""
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        if not isinstance(eps, float):
            return None
        if _bias(module) is not None or module.weight.dtype != torch.float64:
            return None
        module._ghost_offset = self.offset
        forward = types.MethodType(_rms_same_dtype, module)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn((2, 3, *module.weight.shape), generator=gen, dtype=torch.float64)
        with torch.no_grad():
            x = x.to(module.weight.device)
            own, new = module(x), forward(x)
        bound = 64 * module.weight.numel() * 2.0**-24 * float(own.abs().max().clamp(min=1e-300))
        return forward if float((own - new).abs().max()) <= bound else None

    def capture(self, gp, use, x, output, args, kwargs) -> None:
        """``use.saved, use.scale = (y − c, o + w)``, or ``(x̂, None)`` when ``o + w`` has a zero
        (known for every norm from one sync on entering the pass). ``o + w`` is a view of the
        parameter when ``o = 0`` (the weighted pass refuses parameters changed in place since),
        copied when the module ran on a wrapper's stand-in (FSDP2 frees the storage of the
        unsharded weight it lent forward)."""
        if "weight" not in use.params:
            return
        module = use.module
        weight, bias = module.weight, _bias(module)
        lent = weight is not use.params["weight"]
        if _AFFINE_CHECKED.get(module) is not forward_identity(module):
            self.check_affine(gp, use, args, kwargs, output)
        has_zero = gp.norm_has_zero.get(id(module))
        if has_zero is None:  # not known on entry (e.g. a sharded weight, plain inside forward)
            has_zero = bool((self.scale_of(weight) == 0).any())
        if has_zero:
            with torch.no_grad():
                use.saved, use.scale = self.call_unit(gp, module, args, kwargs).detach(), None
            return
        y = output.detach()
        scale = self.scale_of(weight.detach())
        use.saved = y - bias.detach() if bias is not None else y
        use.scale = scale.clone() if lent and not self.offset else scale

    def check_affine(self, gp, use, args, kwargs, output) -> None:
        """Check ``y = x̂ ⊙ (o + w) + c`` on the first sample, with ``x̂`` recomputed with
        ``o + w = 1`` and ``c = 0``; remember the module (and its forward) when it holds."""
        module = use.module
        bias = _bias(module)
        with torch.no_grad():
            xhat0 = self.call_unit(gp, module, *first_sample(args, kwargs))
            expect0 = xhat0 * self.scale_of(module.weight) + (bias if bias is not None else 0)
            out0 = output[:1].detach()
            eps = torch.finfo(output.dtype).eps
            scale = float(out0.abs().max().clamp(min=1.0))
            ok = expect0.shape == out0.shape
            ok = ok and float((expect0 - out0).abs().max()) <= 64 * eps * scale
        if not ok:
            o = f"({self.offset:g} + w)" if self.offset else "w"
            raise ValueError(
                f"module '{use.name}' ({type(module).__name__}) is not elementwise-affine in its "
                f"weight (y = x̂ ⊙ {o} + c over the last axes); the ghost method cannot account "
                "for it, use method='loop'"
            )
        _AFFINE_CHECKED[module] = forward_identity(module)

    def call_unit(self, gp, module, args, kwargs) -> torch.Tensor:
        """``x̂``: the module's output with ``o + w = 1`` and ``c = 0`` (the pass's hooks are not
        re-fired)."""
        gp.recomputing = True
        try:
            return call_with(module, 1.0 - self.offset, args, kwargs)
        finally:
            gp.recomputing = False

    def weight_grads(self, use, g_bg_: torch.Tensor, p: torch.Tensor) -> tuple:
        """``(Σ_pos b ⊙ saved, o + w or None)``: the per-sample weight gradients (B, G, *p.shape)
        are the first divided by the second (``saved = y − c``), or the first (``saved = x̂``)."""
        return norm_weight_grads(g_bg_, use.saved.reshape(g_bg_.shape), p.dim()), use.scale

    def add(self, gp, use, pname, p, g_bg_) -> None:
        if pname == "weight":  # divided by o + w in the panel (or here)
            grads, scale = self.weight_grads(use, g_bg_, p)
            if not gp.to_panel(p, grads, scale):
                gp.add_rows(grads if scale is None else grads / scale)
            return
        grads = norm_bias_grads(g_bg_, p.dim())
        if not gp.to_panel(p, grads):
            gp.add_rows(grads)

    def _grads(self, use, pname, p, g_bg_) -> torch.Tensor:
        if pname == "weight":
            grads, scale = self.weight_grads(use, g_bg_, p)
            return grads if scale is None else grads / scale  # promoted in the kernel
        return norm_bias_grads(g_bg_, p.dim())

    def per_sample(self, gp, use, pname, p, g_bg_) -> torch.Tensor:
        return self._grads(use, pname, p, g_bg_).reshape(gp.N, *p.shape)

    def weighted_source(self, wp, use, pname, p, g_bg_):
        v_b_ = self._grads(use, pname, p, wp.fold(g_bg_)).sum(1)
        v_b_ = v_b_.reshape(wp.gp.B, *(p.shape or (1,)))  # a 0-d parameter as one row
        return "rows", lambda r: rows_of(v_b_, r)


# ---------------------------------------------------------------------------- the formulas
def norm_weight_grads(
    b_bgp_: torch.Tensor, xhat_bgp_: torch.Tensor, param_dims: int
) -> torch.Tensor:
    """Per-sample affine-norm weight gradients ``∇w_n = Σ_pos b_n ⊙ x̂_n``.

    Inputs (B, G, *pos, *param_shape); the ``pos`` axes (positions, heads) are summed.
    Returns (B, G, *param_shape) in the work dtype. Half precision: the product is rounded to
    the factors' dtype (as the layer's own backward rounds it) and summed in float32, two
    kernels and no casts.
    """
    prod = b_bgp_ * xhat_bgp_
    wd = work_dtype(prod.dtype)
    pos_axes = tuple(range(2, prod.dim() - param_dims))
    return prod.sum(dim=pos_axes, dtype=wd) if pos_axes else prod.to(wd)


def norm_bias_grads(b_bgp_: torch.Tensor, param_dims: int) -> torch.Tensor:
    """Per-sample affine-norm bias gradients ``∇c_n = Σ_pos b_n``: (B, G, *param_shape)."""
    pos_axes = tuple(range(2, b_bgp_.dim() - param_dims))
    wd = work_dtype(b_bgp_.dtype)
    return b_bgp_.to(wd).sum(dim=pos_axes) if pos_axes else b_bgp_.to(wd)

