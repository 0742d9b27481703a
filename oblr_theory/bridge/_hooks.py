"""Module hooks for the ghost Gram: capture per-sample layer factors in one forward/backward.

``GhostRecorder`` hooks the forward of every module that owns a trainable parameter (and of every
``nn.Embedding``, whose outputs are the roots of the backward pass), for the duration of the pass.
A hook keeps what the per-sample gradient needs (linear input ``a``, embedding ids, normalised norm
input ``x̂``) and puts a tensor hook on the module output, which receives ``b = ∂L/∂y`` during
the single backward of ``L = Σ_n seq_logp_n``. The backward asks autograd only for the gradients
of the embedding outputs, so autograd skips every weight-gradient product; the Gram
contributions are formed in the tensor hooks (see ``_ghost_math``) and the saved factors freed.

Parameters used by more than one module call are handled exactly:

- ``tie``: one ``nn.Embedding`` use and one ``nn.Linear`` use of the same ``(V, d)`` matrix (tied
  ``embed_tokens`` / ``lm_head``). With ``E_j`` and ``H_j`` the two per-sample gradients,
  ``⟨E_i + H_i, E_j + H_j⟩ = ⟨H_i, H_j⟩ + ⟨E_i, E_j⟩ + ⟨E_i, H_j⟩ + ⟨H_i, E_j⟩``, where ``E_j`` is
  zero outside the group's token rows ``U``, so the cross terms need ``H_j[U]`` only.
- ``shared``: any other reuse; per-sample gradients of every use are summed in an
  ``(N, *shape)`` buffer (refused with a clear error when that buffer would be too large).

Before the backward, the autograd graph is walked: every trainable parameter the graph uses must
be used only through hooked module calls, else a ValueError names it. Nothing is ever silently
left out of the Gram.

Linear layers fed one input (Qwen3's q/k/v, gate/up) are *stacked*: their per-sample
gradients are row blocks of one weight ``[W_1; W_2; …]`` whose output gradient is the
concatenation ``[b_1, b_2, …]``, so the stack's Gram (and, with ``keep_factors``, its weighted
gradient) is one linear rule applied once, not once per layer (``_stack_of``).

Diagonal only (``diagonal_only=True``): every rule then returns the per-sample squared norms
``S_n = ||∇θ_n||²`` (B, G) instead of the (B, G, G) Gram, at about ``1/G`` of the cost: a linear
weight needs the sample's own ``T × T`` kernels, ``S_n = Σ_{t,t'} (a_nt·a_nt')(b_nt·b_nt')``, or
its materialised gradient, whichever is cheaper per sample (``_ghost_diag.prefer_ghost_diagonal``);
an embedding the same rule with the one-hot kernel ``[i_nt = i_nt']``; the tie keeps its cross
term ``||E_n + H_n||² = ||E_n||² + ||H_n||² + 2⟨E_n, H_n⟩`` (``_ghost_diag.tie_cross_parts``);
shared parameters take the squared norms of their summed buffers. These rules cover the whole
batch at once (no loop over groups). ``finalize`` returns ``diag(S)``.

The recorder is one class in parts: ``_capture`` (forward wrappers, graph check, backward),
``_rules`` (the Gram or ``S`` rules) and ``_weighted`` (weighted gradients from kept factors), over
the records and helpers of ``_records``.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from ._capture import CaptureMixin
from ._records import _Stack, _TieState, _Use, module_kind
from ._rules import GramRulesMixin
from ._weighted import WeightedMixin

__all__ = ["GhostRecorder"]


class GhostRecorder(CaptureMixin, GramRulesMixin, WeightedMixin):
    """Collects the within-group Gram ``(B, G, G)`` of per-sample scores over trainable params."""

    def __init__(
        self,
        model: nn.Module,
        batch: int,
        group: int,
        route: str,
        max_elems: int,
        keep_factors: bool = False,
        diagonal_only: bool = False,
        head: nn.Module | None = None,
        head_span: slice | None = None,
    ):
        self.B, self.G, self.N = batch, group, batch * group
        # the output layer and the positions where its output gradient can be nonzero, known
        # from the completion mask (``gm.logit_span``): cropped without a host sync, checked on
        # the device (``span_violation``)
        self.head, self.head_span = head, head_span
        self._span_checks: list[torch.Tensor] = []
        self.diagonal_only = diagonal_only
        self._ka_cache = None  # (key, (N, T, T) activation kernels), diagonal_only only
        self.route, self.max_elems = route, max_elems
        self.keep_factors = keep_factors
        # parameter names (several when shared; for messages) and the trainable parameters,
        # filled by the module scan below, before any wrapper swaps parameters for the forward
        self.names: dict[int, list[str]] = defaultdict(list)
        self.trainable: dict[int, nn.Parameter] = {}
        self.uses_by_param: dict[int, list[_Use]] = defaultdict(list)
        self.uses: list[_Use] = []
        self.roots: list[tuple[_Use, torch.Tensor]] = []
        self._edges: list[tuple[_Use, object]] = []  # keep_factors: (use, its output's edge)
        self._contributions: list[torch.Tensor] = []  # summed once, in finalize
        self._dot_parts: list[torch.Tensor] = []  # diagonal_only: _ghost_diag.sum_parts, in finalize
        self._norm_parts: list[torch.Tensor] = []
        self.shared: dict[int, torch.Tensor] = {}
        self.ties: dict[int, _TieState] = {}
        self._recomputing = False
        self._aliases: dict[int, int] = {}  # id of a stand-in tensor seen in forward -> param id
        # state of one weighted_gradients call: folded-input cache, weights per dtype, mode
        self._fold_cache, self._w_cast, self._w_bg, self._diag_gram = None, {}, None, False
        self._versions: dict[int, int] = {}  # parameters' version counters after a kept pass
        # small per-sample gradients (biases, norm weights), (B, G, k) each, are concatenated
        # into panels: one reduction for S / the Gram, and with keep_factors one fold each
        self._pending: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor | None]] = []
        self._pending_elems = 0
        self._panels: list[tuple[list[nn.Parameter], torch.Tensor]] = []  # kept: (params, data)
        self._panel_pids: set[int] = set()
        # linear weights fed one input, stacked (``_stack_of``): forward order per input, output
        # gradients waiting for the rest of their stack, and the stacks kept for the weighted pass
        self._by_input: dict[tuple, list[_Use]] = defaultdict(list)
        self._stack_members: list[list[_Use]] = []  # by stack id
        self._arrived: dict[int, list[tuple[_Use, torch.Tensor, torch.Tensor]]] = defaultdict(list)
        self._stacks: list[_Stack] = []
        self._stack_pids: set[int] = set()
        self._patched: list[tuple[dict, object]] = []  # (a module's vars, its own instance forward)
        self._targets = []
        seen = set()
        for name, mod in model.named_modules(remove_duplicate=False):  # the one walk
            for k, p in mod._parameters.items():
                if p is not None:
                    self.names[id(p)].append(f"{name}.{k}" if name else k)
            if id(mod) in seen:  # a module reused under another name: hooked once
                continue
            seen.add(id(mod))
            own = {k: p for k, p in mod._parameters.items() if p is not None and p.requires_grad}
            self.trainable.update((id(p), p) for p in own.values())
            kind = module_kind(mod)
            if own and kind is None:
                raise ValueError(
                    f"score_gram(method='ghost') cannot account for trainable parameter(s) "
                    f"{sorted(own)} of module '{name}' ({type(mod).__name__}); freeze them with "
                    f"requires_grad_(False) or use method='loop'"
                )
            if kind == "embedding" and own:
                if mod.max_norm is not None or mod.scale_grad_by_freq or mod.sparse:
                    raise ValueError(
                        f"module '{name}' (nn.Embedding) uses max_norm, scale_grad_by_freq or "
                        "sparse gradients, which the ghost method does not support; "
                        "use method='loop'"
                    )
            if own or kind == "embedding":
                self._targets.append((name, mod, kind, own))

