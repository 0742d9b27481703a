"""The ghost pass's forward and backward (``CaptureMixin``, a part of ``GhostRecorder``).

For the pass, each hooked module's forward is wrapped: after the module's own forward, the wrapper
keeps what the module's per-sample gradients need (linear input ``a``, embedding ids, norm output
and weight or ``x̂``) and the output's gradient edge. Before the backward the autograd graph is
walked (every trainable parameter used only by hooked calls); the one backward then hands every
output gradient ``b = ∂L/∂y`` to the rules (``_rules.GramRulesMixin._on_grad``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Self

import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge

from . import _ghost_math as gm
from ._records import (_AFFINE_CHECKED, _Use, _first_sample, _forward_identity, _is_plain,
                       has_zero_entry)


class CaptureMixin:
    """Forward wrappers, the graph check and the backward of ``GhostRecorder`` (state set in its
    ``__init__``)."""

    # ----------------------------------------------------------------------------- hooks
    def __enter__(self) -> Self:
        norms = [mod for _, mod, kind, own in self._targets
                 if kind == "norm" and "weight" in own and _is_plain(mod.weight)]
        self._norm_has_zero = dict(zip(map(id, norms), has_zero_entry([m.weight for m in norms])))
        for name, mod, kind, own in self._targets:  # vars: nn.Module.__setattr__ is ~10x slower
            attrs = vars(mod)
            self._patched.append((attrs, attrs.get("forward")))
            attrs["forward"] = self._hooked_forward(name, mod, kind, own)
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
        see it) refers to its use and to this recorder, and the use refers back to the node: a
        cycle the collector cannot break, which would keep the recorder, every use and the
        graph's nodes (and the embedding outputs, activations) alive after the update."""
        for use in self.uses:
            use.node = None
        self.roots.clear()
        self._edges.clear()
        self._reachable = set()

    def _hooked_forward(self, name, module, kind, own):
        """``module.forward`` for the pass: the module's forward, then ``_on_forward``.

        An instance attribute over the class's forward (restored on exit) rather than a forward
        hook: a module with hooks takes PyTorch's slower call path (~300 modules per update), and
        the hook would see the output after any other hook's replacement, not ``y = f(x; θ)``."""
        forward = module.forward

        def hooked(*args, **kwargs):
            output = forward(*args, **kwargs)
            if not self._recomputing:
                self._on_forward(name, module, kind, own, args, kwargs, output)
            return output

        hooked.ghost_wrapped = forward  # for ``_forward_identity``
        return hooked

    def _on_forward(self, name, module, kind, own, args, kwargs, output) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        ok = isinstance(output, torch.Tensor) and output.dim() > 0 and output.shape[0] == self.N
        if not ok or x.shape[0] != self.N:
            raise ValueError(
                f"module '{name}' ({type(module).__name__}) did not see the flattened batch "
                f"(B*G = {self.N}) as its leading dimension; the ghost method needs every "
                "per-sample computation to keep samples apart (use method='loop')"
            )
        use = _Use(name, module, kind, own)  # read only
        for attr, p in own.items():  # a wrapper's stand-in (FSDP's unsharded copy) -> the parameter
            current = module._parameters.get(attr)
            if current is not None and current is not p:
                self._aliases[id(current)] = id(p)
        if kind in ("linear", "conv1d") and "weight" in own:
            use.saved = x.detach()
            if kind == "linear":
                use.in_key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device)
                self._by_input[use.in_key].append(use)
        elif kind == "embedding":
            use.saved = x.detach()
            if not output.requires_grad:
                output.requires_grad_()  # a frozen embedding still roots the backward pass
            self.roots.append((use, output))
            if own:  # distinct ids now: their host syncs are cheap while the device queue is short
                ids_bgt = use.saved.reshape(self.B, self.G, -1)
                if not self.diagonal_only:  # the full Gram's per-group rows
                    use.vocab = [gm.group_vocab(ids_bgt[b]) for b in range(self.B)]
                if self.keep_factors:  # and where the weighted pass's chunks of rows start in it
                    uniq_u, inv_n = gm.group_vocab(use.saved.reshape(-1))
                    cuts = gm.chunk_cuts(uniq_u, self._row_step(own["weight"].shape),
                                         own["weight"].shape[0])
                    use.batch_vocab = (uniq_u, inv_n, cuts)
        elif kind == "norm" and "weight" in own:
            use.saved, use.scale = self._normalised_input(name, module, args, kwargs, output,
                                                          lent=module.weight is not own["weight"])
        if use.params:
            self.uses.append(use)
            for p in use.params.values():
                self.uses_by_param[id(p)].append(use)
            if kind != "embedding" and output.requires_grad:
                use.node = output.grad_fn
                if self.keep_factors:  # all output gradients are kept: ``backward`` takes them
                    edge = (GradientEdge(use.node, output.output_nr) if use.node is not None
                            else get_gradient_edge(output))
                    self._edges.append((use, edge))
                else:  # each is used, then dropped, as the backward pass reaches it
                    output.register_hook(lambda g, use=use: self._on_grad(use, g))

    def _normalised_input(self, name, module, args, kwargs, output, lent: bool):
        """What the weight's per-sample gradient needs: ``(y − c, w)`` or ``(x̂, None)``.

        ``∇w_n = Σ_pos b ⊙ x̂ = (Σ_pos b ⊙ (y − c)) / w`` when ``w`` has no zero, so the output
        itself (kept alive by the next layer anyway) suffices; ``x̂`` is recomputed for the whole
        batch only when ``w`` has a zero (known for every norm from one sync on entering the
        recorder). The model ``y = x̂ ⊙ w + c`` is checked once per module (``_check_affine``).
        ``w`` is kept as a view of the parameter (``weighted_gradients`` refuses parameters
        changed in place since the pass), or copied when ``lent``: a wrapper's stand-in (FSDP2
        frees the storage of the unsharded weight it lent forward).
        """
        weight = module.weight
        bias = getattr(module, "bias", None)
        bias = bias if isinstance(bias, torch.Tensor) else None
        if _AFFINE_CHECKED.get(module) is not _forward_identity(module):
            self._check_affine(name, module, args, kwargs, output, weight, bias)
        has_zero = self._norm_has_zero.get(id(module))
        if has_zero is None:  # not known on entry (e.g. a sharded weight, plain inside forward)
            has_zero = bool((weight == 0).any())
        if has_zero:
            with torch.no_grad():
                return self._call_unit_affine(module, args, kwargs).detach(), None
        y = output.detach()
        w = weight.detach().clone() if lent else weight.detach()
        return (y - bias.detach() if bias is not None else y), w

    def _check_affine(self, name, module, args, kwargs, output, weight, bias) -> None:
        """Check ``y = x̂ ⊙ w + c`` on the first sample, with ``x̂`` recomputed by calling the
        module with weight 1 and bias 0; remember the module (and its forward) when it holds."""
        with torch.no_grad():
            xhat0 = self._call_unit_affine(module, *_first_sample(args, kwargs))
            expect0 = xhat0 * weight + (bias if bias is not None else 0)
            out0 = output[:1].detach()
            eps = torch.finfo(output.dtype).eps
            scale = float(out0.abs().max().clamp(min=1.0))
            ok = expect0.shape == out0.shape
            ok = ok and float((expect0 - out0).abs().max()) <= 64 * eps * scale
        if not ok:
            raise ValueError(
                f"module '{name}' ({type(module).__name__}) is not elementwise-affine in its weight "
                "(y = x̂ ⊙ w + c over the last axes); the ghost method cannot account for it, "
                "use method='loop'"
            )
        _AFFINE_CHECKED[module] = _forward_identity(module)

    def _call_unit_affine(self, module, args, kwargs) -> torch.Tensor:
        """The module's output with weight 1 and bias 0 (its own hooks are not re-fired)."""
        overrides = {"weight": torch.ones_like(module.weight)}
        if isinstance(getattr(module, "bias", None), torch.Tensor):
            overrides["bias"] = torch.zeros_like(module.bias)
        self._recomputing = True
        try:
            return torch.func.functional_call(module, overrides, tuple(args), kwargs)
        finally:
            self._recomputing = False

    # ----------------------------------------------------------------------------- checks
    def check_graph(self, loss: torch.Tensor) -> None:
        """Walk the autograd graph: each trainable parameter it uses is used only by hooked calls.

        A wrapper that swaps a parameter for a stand-in during forward (FSDP2 runs each layer on
        an unsharded copy of its sharded parameters) is followed through the stand-ins the
        forward hooks saw, so the check counts the parameter's uses, not nothing."""
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
        """One backward of ``loss`` to the embedding outputs; hooks do the rest.

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
            if use.kind != "embedding" and not use.got_grad and use.node in self._reachable:
                raise ValueError(f"no output gradient reached module '{use.name}'")
        self._drop_graph()
        if self.keep_factors:  # the kept factors hold only at these parameters
            self._versions = {pid: p._version for pid, p in self.trainable.items()}

