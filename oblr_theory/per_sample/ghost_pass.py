"""The ghost pass: the within-group Gram of per-sample scores in one forward and one backward.

``GhostPass`` wraps, for the duration of the pass, the forward of every module that owns a
trainable parameter (and of every module whose outputs root the backward: embeddings). After the
module's own forward, its rule (``rules.rule_for``) keeps what the per-sample gradients need;
the one backward of ``L = Σ_n seq_logp_n`` asks autograd only for the gradients of the embedding
outputs (so it skips every weight-gradient product) and hands each hooked module's output
gradient ``b = ∂L/∂y`` to its rule, which adds its parameters' Gram contributions (or, with
``diagonal_only``, the per-sample squared norms ``S_n``) and frees the factors. A parameter used
by several calls goes to a parameter rule (``rules.PARAM_RULES``: tied embedding / output layer,
any other sharing).

Before the backward, the autograd graph is walked: every trainable parameter the graph uses must
be used only through hooked module calls, else a ValueError names it. Nothing is ever silently
left out of the Gram.

What the pass itself adds to the rules (no formula of a layer lives here):

- stacks: linear layers fed one input (q/k/v, gate/up) have per-sample gradients that are row
  blocks of one weight ``[W_1; W_2; …]`` with output gradient ``[b_1, b_2, …]``, so the stack's
  Gram is one linear rule applied once (``_stack_of``);
- panels: small per-sample gradients (biases, norm weights) of one dtype are concatenated into
  one ``(B, G, k)`` tensor, one reduction for ~100 parameters (``to_panel``);
- crops: the output layer's factors are cut to the positions the completion mask scores
  (``linear_factors``; checked on the device, ``span_violation``).

With ``keep_factors`` the factors outlive the backward, for one ``WeightedPass`` (``weighted.py``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Self

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from .kernels import ACC, active_span, gram_of_rows, has_zero_entry, is_plain, outside_span_nonzero
from .kernels import row_block_norms, sum_parts
from .records import Stack, Use
from .rules import PARAM_RULES, param_rule_for, rule_for
from .rules.linear import LinearRule

__all__ = ["GhostPass"]


class GhostPass:
    """Collects the within-group Gram ``(B, G, G)`` of per-sample scores over trainable params.

    Use as a context manager around the forward, then ``check_graph(loss)``, ``backward(loss)``
    and ``finalize(device)``; with ``keep_factors``, ``weighted_gradients(w_bg)`` once.
    """

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
        # from the completion mask (``kernels.logit_span``): cropped without a host sync,
        # checked on the device (``span_violation``)
        self.head, self.head_span = head, head_span
        self._span_checks: list[torch.Tensor] = []
        self.diagonal_only = diagonal_only
        self.ka_cache = None  # (key, (N, T, T) activation kernels), diagonal_only only
        self.route, self.max_elems = route, max_elems
        self.keep_factors = keep_factors
        # parameter names (several when shared; for messages) and the trainable parameters,
        # filled by the module scan below, before any wrapper swaps parameters for the forward
        self.names: dict[int, list[str]] = defaultdict(list)
        self.trainable: dict[int, nn.Parameter] = {}
        self.uses_by_param: dict[int, list[Use]] = defaultdict(list)
        self.uses: list[Use] = []
        self.roots: list[tuple[Use, torch.Tensor]] = []
        self.state: dict = {}  # the parameter rules' state during the pass, by rule name
        self.norm_has_zero: dict[int, bool] = {}
        self.recomputing = False  # a rule calls a module again: its wrapper records nothing
        self._edges: list[tuple[Use, object]] = []  # keep_factors: (use, its output's edge)
        self._contributions: list[torch.Tensor] = []  # summed once, in finalize
        self._dot_parts: list[torch.Tensor] = []  # diagonal_only: kernels.sum_parts, in finalize
        self._norm_parts: list[torch.Tensor] = []
        self._aliases: dict[int, int] = {}  # id of a stand-in tensor seen in forward -> param id
        self.versions: dict[int, int] = {}  # parameters' version counters after a kept pass
        self._reachable: set = set()
        # small per-sample gradients (biases, norm weights), (B, G, k) each, concatenated into
        # panels: one reduction for S / the Gram, and with keep_factors one fold each
        self._pending: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor | None]] = []
        self._pending_elems = 0
        self.panels: list[tuple[list[nn.Parameter], torch.Tensor]] = []  # kept: (params, data)
        # linear weights fed one input, stacked (``_stack_of``): forward order per input, output
        # gradients waiting for the rest of their stack, and the stacks kept for the weighted pass
        self.by_input: dict[tuple, list[Use]] = defaultdict(list)
        self._stack_members: list[list[Use]] = []  # by stack id
        self._arrived: dict[int, list[tuple[Use, torch.Tensor, torch.Tensor]]] = defaultdict(list)
        self.stacks: list[Stack] = []
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
            rule = rule_for(mod)
            if own and rule is None:
                raise ValueError(
                    f"score_gram(method='ghost') cannot account for trainable parameter(s) "
                    f"{sorted(own)} of module '{name}' ({type(mod).__name__}): no rule in "
                    "oblr_theory.per_sample.rules matches it; freeze them with "
                    "requires_grad_(False), add a rule, or use method='loop'"
                )
            if rule is not None and (own or rule.roots_backward):
                rule.check(name, mod, own)
                self._targets.append((name, mod, rule, own))

    # ------------------------------------------------------------------------- forward
    def __enter__(self) -> Self:
        scales = [(mod, rule.zero_scale(mod, own)) for _, mod, rule, own in self._targets]
        scales = [(mod, s) for mod, s in scales if s is not None]
        zeros = has_zero_entry([s for _, s in scales]) if scales else []
        self.norm_has_zero = {id(mod): z for (mod, _), z in zip(scales, zeros)}
        for name, mod, rule, own in self._targets:  # vars: nn.Module.__setattr__ is ~10x slower
            attrs = vars(mod)
            self._patched.append((attrs, attrs.get("forward")))
            attrs["forward"] = self._hooked_forward(name, mod, rule, own)
        return self

    def __exit__(self, *exc) -> None:
        for attrs, own_forward in reversed(self._patched):
            if own_forward is None:
                del attrs["forward"]  # the class's forward again
            else:
                attrs["forward"] = own_forward
        self._patched.clear()
        self._drop_graph()

    def _drop_graph(self) -> None:
        """Forget the autograd graph: the output nodes the uses hold and the embedding outputs.

        Each output's gradient hook (held by its node, in C++, where the garbage collector cannot
        see it) refers to its use and to this pass, and the use refers back to the node: a cycle
        the collector cannot break, which would keep the pass, every use and the graph's nodes
        (and the embedding outputs, activations) alive after the update."""
        for use in self.uses:
            use.node = None
        self.roots.clear()
        self._edges.clear()
        self._reachable = set()

    def _hooked_forward(self, name, module, rule, own):
        """``module.forward`` for the pass: the module's forward, then ``_on_forward``.

        An instance attribute over the class's forward (restored on exit) rather than a forward
        hook: a module with hooks takes PyTorch's slower call path (~300 modules per update), and
        the hook would see the output after any other hook's replacement, not ``y = f(x; θ)``."""
        forward = module.forward

        def hooked(*args, **kwargs):
            output = forward(*args, **kwargs)
            if not self.recomputing:
                self._on_forward(name, module, rule, own, args, kwargs, output)
            return output

        hooked.ghost_wrapped = forward  # for ``records.forward_identity``
        return hooked

    def _on_forward(self, name, module, rule, own, args, kwargs, output) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        ok = isinstance(output, torch.Tensor) and output.dim() > 0 and output.shape[0] == self.N
        if not ok or x.shape[0] != self.N:
            raise ValueError(
                f"module '{name}' ({type(module).__name__}) did not see the flattened batch "
                f"(B*G = {self.N}) as its leading dimension; the ghost method needs every "
                "per-sample computation to keep samples apart (use method='loop')"
            )
        use = Use(name, module, rule, own)  # read only
        for attr, p in own.items():  # a wrapper's stand-in (FSDP's unsharded copy) -> the parameter
            current = module._parameters.get(attr)
            if current is not None and current is not p:
                self._aliases[id(current)] = id(p)
        rule.capture(self, use, x, output, args, kwargs)
        if not use.params:
            return
        self.uses.append(use)
        for p in use.params.values():
            self.uses_by_param[id(p)].append(use)
        if not rule.roots_backward and output.requires_grad:
            use.node = output.grad_fn
            if self.keep_factors:  # all output gradients are kept: ``backward`` takes them
                edge = (GradientEdge(use.node, output.output_nr) if use.node is not None
                        else get_gradient_edge(output))
                self._edges.append((use, edge))
            else:  # each is used, then dropped, as the backward pass reaches it
                output.register_hook(lambda g, use=use: self._on_grad(use, g))

    # ------------------------------------------------------------------------- backward
    def check_graph(self, loss: torch.Tensor) -> None:
        """Walk the autograd graph: each trainable parameter it uses is used only by hooked calls.

        A wrapper that swaps a parameter for a stand-in during forward (FSDP2 runs each layer on
        an unsharded copy of its sharded parameters) is followed through the stand-ins the
        forward wrappers saw, so the check counts the parameter's uses, not nothing."""
        counts: dict[int, int] = defaultdict(int)
        seen, stack = set(), [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            for nxt, _ in node.next_functions:
                if nxt is None:
                    continue
                if type(nxt).__name__ == "AccumulateGrad":  # a leaf: a use of ``variable``
                    var = nxt.variable
                    counts[self._aliases.get(id(var), id(var))] += 1
                else:
                    stack.append(nxt)
        self._reachable = seen
        for pid, n_edges in counts.items():
            if pid not in self.trainable:
                continue
            n_uses = len(self.uses_by_param.get(pid, []))
            if n_edges > n_uses:
                raise ValueError(
                    f"trainable parameter {self.names.get(pid, ['?'])} is used by "
                    f"{n_edges - n_uses} operation(s) outside the modules the ghost method hooks "
                    f"({n_uses} hooked call(s)); the Gram would miss them. Freeze it or use "
                    "method='loop'"
                )

    def backward(self, loss: torch.Tensor) -> None:
        """One backward of ``loss`` to the embedding outputs; the rules do the rest.

        With ``keep_factors`` every output gradient is kept anyway, so the same backward also
        returns them all (``torch.autograd.grad`` to the outputs' gradient edges, which hold no
        activation), processed afterwards in backward order: no hook per module output."""
        if not self.roots:
            raise ValueError("the model has no nn.Embedding to root the ghost backward pass")
        outputs = [out for _, out in self.roots]
        grads = torch.autograd.grad(loss, outputs + [edge for _, edge in self._edges],
                                    allow_unused=True)
        grads, out_grads = grads[:len(outputs)], grads[len(outputs):]
        for (use, _), g in zip(reversed(self._edges), reversed(out_grads)):
            if g is not None:
                self._on_grad(use, g)
        for (use, _), g in zip(self.roots, grads):
            if use.params and g is not None:
                self._on_grad(use, g)
            elif use.params:
                use.got_grad = True  # unused by the loss: zero contribution
        for use in self.uses:
            if not use.rule.roots_backward and not use.got_grad and use.node in self._reachable:
                raise ValueError(f"no output gradient reached module '{use.name}'")
        self._drop_graph()
        if self.keep_factors:  # the kept factors hold only at these parameters
            self.versions = {pid: p._version for pid, p in self.trainable.items()}

    def _on_grad(self, use: Use, g: torch.Tensor) -> None:
        """One use's output gradient: each of its parameters' contributions, by its rules."""
        g = use.rule.output_grad(use, g)
        if self.keep_factors:
            use.grad = g  # ``saved`` stays too: the weighted pass rebuilds from both
        g_bg_ = None  # (B, G, …), made when a rule needs it (not for a stacked weight)
        for pname, p in use.params.items():
            if pname == "weight" and self._join_stack(use, g):
                continue
            if g_bg_ is None:
                g_bg_ = g.reshape(self.B, self.G, *g.shape[1:])
            shared = param_rule_for(self.uses_by_param[id(p)])
            (shared or use.rule).add(self, use, pname, p, g_bg_)
        if not self.keep_factors:
            use.saved = None
        use.got_grad = True

    # ------------------------------------------------------------------------- for the rules
    def add(self, gram_bgg: torch.Tensor) -> None:
        """Add one contribution: (B, G, G), or (B, G) squared norms when ``diagonal_only``."""
        self._contributions.append(gram_bgg)

    def add_parts(self, dots: list = (), norms: list = ()) -> None:
        """``diagonal_only``: add unreduced per-sample parts (N, k) (``kernels.sum_parts``),
        reduced in float64 once for all layers in ``finalize``."""
        self._dot_parts.extend(dots)
        self._norm_parts.extend(norms)

    def add_rows(self, grads_bg_: torch.Tensor) -> None:
        """Add the Gram (or the squared norms) of per-sample gradients (B, G, …)."""
        if self.diagonal_only:
            self.add_parts(norms=row_block_norms(grads_bg_.reshape(self.N, -1)))
        else:
            self.add(gram_of_rows(grads_bg_.reshape(self.B, self.G, -1)))

    def row_step(self, shape: torch.Size) -> int:
        """Rows of a parameter of ``shape`` per chunk of the weighted pass: at most
        ``max_elems`` entries of ``V`` (B, rows, …) at a time."""
        return max(1, self.max_elems // max(self.B * shape[1:].numel(), 1))

    def linear_factors(self, use: Use, g_bg_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear factors reshaped to (B, G, T', d_in) and (B, G, T', d_out), cropped to the
        positions where ``b`` is nonzero for some sample: for the output layer, the positions
        the completion mask scores (``head_span``, no host sync); for other wide layers
        (``d_out >= 4 d_in``), the span read from ``b`` itself (``kernels.active_span``)."""
        a = use.saved.reshape(self.B, self.G, -1, use.saved.shape[-1])
        g = g_bg_.reshape(self.B, self.G, -1, g_bg_.shape[-1])
        if use.span is None and use.module is self.head and self.head_span is not None:
            use.span = self.head_span
            if use.span != slice(None):
                self._span_checks.append(outside_span_nonzero(g, use.span))
        elif use.span is None:  # only output layers (d_out >= 4 d_in) are worth the sync
            wide = g.shape[-1] >= 4 * a.shape[-1]
            use.span = active_span(g) if wide else slice(None)
        if use.span == slice(None):
            return a, g
        return a[:, :, use.span], g[:, :, use.span]

    def span_violation(self) -> torch.Tensor | None:
        """Device bool scalar, True if the output layer's gradient was nonzero outside the
        ``head_span`` its factors were cropped to (the contributions would then be wrong);
        None when no crop was made. Read it at a host sync the caller already has."""
        if not self._span_checks:
            return None
        return torch.stack(self._span_checks).any()

    def to_panel(self, p: torch.Tensor, grads_bg_: torch.Tensor,
                 scale: torch.Tensor | None = None) -> bool:
        """Queue a single-use parameter's small per-sample gradients (at most ``max_elems``
        entries), to be divided by ``scale`` (a norm's ``o + w``), for the current panel; False
        when they are too large (the rule adds them on its own).

        A panel (all queued gradients of one dtype, at most ``max_elems`` entries) is one
        ``(B, G, k)`` tensor: one division by its scales, its Gram or squared norms in one
        reduction, and with ``keep_factors`` the weighted pass folds it with one matmul."""
        n = grads_bg_.numel()
        if n > self.max_elems or (self.keep_factors and not is_plain(p)):
            return False  # a sharded parameter keeps its place in the ranks' reduction order
        if self._pending and (self._pending[0][1].dtype != grads_bg_.dtype
                              or self._pending_elems + n > self.max_elems):
            self._flush_panel()
        self._pending.append((p, grads_bg_, scale))
        self._pending_elems += n
        return True

    def _flush_panel(self) -> None:
        if not self._pending:
            return
        params = [p for p, _, _ in self._pending]
        data = torch.cat([g.reshape(self.B, self.G, -1) for _, g, _ in self._pending], dim=2)
        if any(scale is not None for _, _, scale in self._pending):  # one division for all
            scales = [torch.ones(g.shape[2:], dtype=g.dtype, device=g.device) if scale is None
                      else scale for _, g, scale in self._pending]
            data = data / torch.cat([scale.reshape(-1) for scale in scales])  # promoted
        self._pending, self._pending_elems = [], 0
        self.add_rows(data)
        if self.keep_factors:
            self.panels.append((params, data))

    # ------------------------------------------------------------------------- stacks
    def _stackable(self, use: Use) -> bool:
        """A linear weight that can join a stack: used once, plain (not sharded), not the output
        layer nor another wide layer (those are cropped to their own spans, ``linear_factors``)."""
        w = use.params.get("weight")
        return (use.rule.stackable and w is not None and len(self.uses_by_param[id(w)]) == 1
                and use.module is not self.head and is_plain(w) and w.shape[0] < 4 * w.shape[1])

    def _stack_of(self, use: Use) -> int | None:
        """The id of the stack of linear layers fed ``use``'s input (``_stack_members[id]``, in
        forward order), or None when it stays alone. Layers fed one input ``a`` (Qwen3's q/k/v,
        gate/up) have per-sample gradients ``∇W_l,n = b_l,nᵀ a_n``, row blocks of the gradient
        ``b_nᵀ a_n`` of the stacked weight ``[W_1; W_2; …]`` with ``b = [b_1, b_2, …]``
        (concatenated features), so their summed Gram contributions are that weight's: one
        rule for the stack instead of one per layer."""
        if use.in_key is None:
            return None
        if use.stack_id == -1:  # once per input: every use fed it learns its stack
            candidates = self.by_input[use.in_key]
            members = [u for u in candidates if self._stackable(u)]
            same = len({(u.params["weight"].dtype, u.params["weight"].device) for u in members}) == 1
            stacked = len(members) > 1 and same
            if stacked:
                self._stack_members.append(members)
            for u in candidates:  # an id, not the list: a use in its own list would be a cycle
                u.stack_id = len(self._stack_members) - 1 if stacked and u in members else None
        return use.stack_id

    def _join_stack(self, use: Use, g: torch.Tensor) -> bool:
        """Queue a stacked layer's output gradient; the stack is added once all its members'
        have arrived (``finalize`` adds any whose other members got none). False: not stacked."""
        sid = self._stack_of(use)
        if sid is None:
            return False
        arrived = self._arrived[sid]
        arrived.append((use, use.saved, g))
        if len(arrived) == len(self._stack_members[sid]):
            self._add_stack(sid)
        return True

    def _add_stack(self, sid: int) -> None:
        """Add the Gram (or ``S`` parts) of one stack's arrived members as one linear weight;
        with ``keep_factors`` keep it for the weighted pass, each member's ``grad`` becoming a
        view of the concatenated output gradient (which replaces the members' own)."""
        order = {id(u): i for i, u in enumerate(self._stack_members[sid])}
        arrived = sorted(self._arrived.pop(sid), key=lambda e: order[id(e[0])])
        a = arrived[0][1]
        a_bgtd = a.reshape(self.B, self.G, -1, a.shape[-1])
        b_bgto = torch.cat([g.reshape(*a_bgtd.shape[:3], g.shape[-1]) for _, _, g in arrived], -1)
        LinearRule.add_weight(self, a_bgtd, b_bgto)
        if not self.keep_factors:
            return
        bounds, start = [], 0
        for use, _, g in arrived:
            bounds.append((start, start + g.shape[-1]))
            # a member's bias (its other parameter) reads its rows; else nothing does
            use.grad = (b_bgto[..., start:start + g.shape[-1]].reshape(g.shape)
                        if len(use.params) > 1 else None)
            start += g.shape[-1]
        params = [use.params["weight"] for use, _, _ in arrived]
        self.stacks.append(Stack(params, bounds, a_bgtd, b_bgto))

    # ------------------------------------------------------------------------- results
    def finalize(self, device, dtype=ACC) -> torch.Tensor:
        """The total Gram ``(B, G, G)``: the rules' contributions, summed once.

        With ``diagonal_only`` it is ``diag(S)``: the exact diagonal, zeros off it.
        """
        for sid in list(self._arrived):  # stacks some of whose members got no gradient
            self._add_stack(sid)
        self.ka_cache = None
        self._flush_panel()
        for rule in PARAM_RULES:
            rule.finalize(self)
        if self._dot_parts or self._norm_parts:
            self.add(sum_parts(self._dot_parts, self._norm_parts).reshape(self.B, self.G))
            self._dot_parts, self._norm_parts = [], []
        if not self._contributions:
            return torch.zeros(self.B, self.G, self.G, dtype=dtype, device=device)
        total = torch.stack(self._contributions).sum(0)
        self._contributions.clear()
        return torch.diag_embed(total) if self.diagonal_only else total

    def weighted_gradients(self, w_bg: torch.Tensor, accumulate_grad: bool,
                           diagonal_only: bool = False) -> torch.Tensor:
        """``K_bc = ⟨v_b, v_c⟩`` for ``v_b = Σ_g w_bg s_bg``; optionally ``.grad += Σ_b v_b``,
        from the kept factors (``weighted.WeightedPass``)."""
        from .weighted import WeightedPass

        return WeightedPass(self, w_bg, diagonal_only).run(accumulate_grad)

    def release_factors(self) -> None:
        """Drop every kept factor (layer inputs and output gradients); frees their memory."""
        for use in self.uses:
            use.saved, use.scale, use.grad = None, None, None
            use.vocab, use.batch_vocab = None, None
        self.panels, self.stacks = [], []
        self.uses.clear()
        self.uses_by_param.clear()
        for rule in PARAM_RULES:
            rule.reset(self)
        self.keep_factors = False
