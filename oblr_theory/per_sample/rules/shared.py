"""Any other parameter used by several hooked calls (a module called twice, a matrix shared by
two linear layers): per-sample gradients of every use are materialised (``LayerRule.per_sample``)
and summed in an ``(N, *shape)`` buffer, ``∇θ_n = Σ_uses ∇θ_n^(use)``; its Gram or squared norms
are added once every use has arrived (``finalize``). Refused, naming the parameter, when that
buffer would exceed ``4 max_elems`` entries. The weighted pass sums the uses' ``V_b`` itself.
"""

from __future__ import annotations

from ..kernels import work_dtype
from .base import ParamRule


class SharedRule(ParamRule):
    """The fallback for shared parameters: sum of materialised per-sample gradients."""

    name = "shared"

    def matches(self, uses: list) -> bool:
        return len(uses) > 1

    def add(self, gp, use, pname, p, g_bg_) -> None:
        if gp.N * p.numel() > 4 * gp.max_elems:
            names = sorted({u.name for u in gp.uses_by_param[id(p)]})
            raise ValueError(
                f"parameter {gp.names.get(id(p), ['?'])} is shared by modules {names}; the ghost "
                f"method would need {gp.N} x {p.numel()} per-sample entries. Use method='loop'"
            )
        full = use.rule.per_sample(gp, use, pname, p, g_bg_)
        full = full.to(work_dtype(full.dtype))
        buffers = gp.state.setdefault(self.name, {})
        pid = id(p)
        buffers[pid] = full if pid not in buffers else buffers[pid] + full

    def finalize(self, gp) -> None:
        for full in gp.state.pop(self.name, {}).values():
            gp.add_rows(full)

    def reset(self, gp) -> None:
        gp.state.pop(self.name, None)
