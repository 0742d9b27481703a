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
its materialised gradient, whichever is cheaper per sample (``_ghost_math.prefer_ghost_diagonal``);
an embedding the same rule with the one-hot kernel ``[i_nt = i_nt']``; the tie keeps its cross
term ``||E_n + H_n||² = ||E_n||² + ||H_n||² + 2⟨E_n, H_n⟩`` (``_ghost_math.tie_cross_parts``);
shared parameters take the squared norms of their summed buffers. These rules cover the whole
batch at once (no loop over groups). ``finalize`` returns ``diag(S)``.
"""

from __future__ import annotations

import bisect
import itertools
import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from . import _ghost_math as gm


def module_kind(module: nn.Module) -> str | None:
    """The ghost rule for a module's own parameters, or None when there is none."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return "conv1d"  # GPT-2 style: y = x @ W + c with W of shape (d_in, d_out)
    if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
        return "norm"
    return None


def _first_sample(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's inputs with the first tensor (the hidden states) cut to sample 0."""
    if args:
        return (args[0][:1],) + tuple(args[1:]), kwargs
    key = next(iter(kwargs))
    return (), {**kwargs, key: kwargs[key][:1]}


# Modules already shown to be elementwise-affine in their weight, with the forward that was
# checked: the check costs a call and a host sync, and a module's form does not change with its
# weights, so it runs once per module (again if its forward is replaced).
_AFFINE_CHECKED: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def _forward_identity(module: nn.Module):
    fwd = module.forward
    fwd = getattr(fwd, "ghost_wrapped", fwd)  # during a pass: the forward the recorder wraps
    return getattr(fwd, "__func__", fwd)


def _is_plain(t: torch.Tensor) -> bool:
    """A local tensor (not a sharded/distributed tensor subclass such as DTensor)."""
    return type(t) in (torch.Tensor, nn.Parameter)


def average_into_shards(p: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """A sharded parameter's gradient from each rank's full local gradient ``full``: the mean
    over the parameter's device mesh, laid out as ``p`` (a reduce-scatter for FSDP2's
    ``Shard(0)``), as FSDP's own backward averages data-parallel gradients."""
    from torch.distributed.tensor import DTensor, Partial

    mesh = p.device_mesh
    partial = DTensor.from_local(full, mesh, [Partial("avg")] * mesh.ndim, run_check=False)
    return partial.redistribute(mesh, p.placements)


def _rows(x: torch.Tensor, r: slice | None) -> torch.Tensor:
    """``x[:, r]``, or ``x`` itself when ``r`` is None (all rows: no indexing operation)."""
    return x if r is None else x[:, r]


def _cols(x: torch.Tensor, r: slice | None) -> torch.Tensor:
    """``x[..., r]``, or ``x`` itself when ``r`` is None."""
    return x if r is None else x[..., r]


def has_zero_entry(tensors: list[torch.Tensor]) -> list[bool]:
    """Whether each tensor holds an exact zero: one concatenation, one comparison and one host
    sync (``nonzero``) per (device, dtype), however many tensors (a model's ~100 norm weights)."""
    out = [False] * len(tensors)
    groups: dict = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    for idx in groups.values():
        ends = list(itertools.accumulate(tensors[i].numel() for i in idx))
        with torch.no_grad():
            zero_k = torch.cat([tensors[i].reshape(-1) for i in idx]) == 0
        for pos in zero_k.nonzero().flatten().tolist():
            out[idx[bisect.bisect_right(ends, pos)]] = True
    return out


@dataclass(eq=False, slots=True)
class _Use:
    """One call of a hooked module during the forward pass."""

    name: str
    module: nn.Module
    kind: str
    params: dict  # parameter attribute name -> trainable Parameter
    saved: torch.Tensor | None = None  # a (linear), ids (embedding), x̂ or y − c (norm)
    scale: torch.Tensor | None = None  # norm weight w when saved is y − c (divide by it)
    node: object = None  # grad_fn of the output, for the reachability check
    got_grad: bool = False
    grad: torch.Tensor | None = None  # b = ∂L/∂y, kept only with keep_factors
    # a trainable embedding's token ids: per group (U_b, inverse_gt), and over the batch (U, inverse_n)
    vocab: list | None = None
    batch_vocab: tuple | None = None
    span: slice | None = None  # positions where b is nonzero (linear factors only)
    in_key: tuple | None = None  # a linear weight's input, to find the layers that share it
    stack_id: int | None = -1  # its stack (``_stack_of``): -1 not known yet, None alone


@dataclass(eq=False)
class _Stack:
    """Linear layers fed one input (q/k/v, gate/up), kept as one weight ``[W_1; W_2; …]``:
    their output gradients concatenated along the output axis (``b``), one input ``a``."""

    params: list  # the members' weights, in forward order
    bounds: list  # each member's rows (start, end) of the stacked weight
    a: torch.Tensor  # (B, G, T, d_in)
    b: torch.Tensor  # (B, G, T, Σ d_out)


@dataclass
class _TieState:
    vocab: list | None = None  # per group: (U, inverse_gt)
    emb_rows: dict = field(default_factory=dict)  # group -> (G, |U|, d)
    lin_rows: dict = field(default_factory=dict)  # group -> (G, |U|, d)
    # diagonal_only: the input ids (N, T), and what the first use to arrive leaves
    ids: torch.Tensor | None = None
    emb_b: torch.Tensor | None = None  # the embedding's output gradient (N, T, d)
    head: tuple | None = None  # the output layer's input (N, S, d), its gradient at the ids


class GhostRecorder:
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
        self._dot_parts: list[torch.Tensor] = []  # diagonal_only: gm.sum_parts, in finalize
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

    # ----------------------------------------------------------------------------- hooks
    def __enter__(self) -> "GhostRecorder":
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

    # ----------------------------------------------------------------------------- gradients
    def _add(self, gram_bgg: torch.Tensor) -> None:
        """Add one contribution: (B, G, G), or (B, G) squared norms when ``diagonal_only``."""
        self._contributions.append(gram_bgg)

    def _add_parts(self, dots: list = (), norms: list = ()) -> None:
        """``diagonal_only``: add unreduced per-sample parts (N, k) (``gm.sum_parts``), reduced in
        float64 once for all layers in ``finalize``."""
        self._dot_parts.extend(dots)
        self._norm_parts.extend(norms)

    def _plan(self, pid: int) -> str:
        uses = self.uses_by_param[pid]
        if len(uses) == 1:
            return "single"
        kinds = sorted(u.kind for u in uses)
        if len(uses) == 2 and kinds == ["embedding", "linear"]:
            return "tie"
        return "shared"

    def _on_grad(self, use: _Use, g: torch.Tensor) -> None:
        if use.kind == "embedding":
            g = self._embedding_grad(use, g)
        if self.keep_factors:
            use.grad = g  # ``saved`` stays too: weighted_gradients rebuilds from both
        g_bg_ = None  # (B, G, …), made when a rule needs it (not for a stacked weight)
        for pname, p in use.params.items():
            if pname == "weight" and self._join_stack(use, g):
                continue
            if g_bg_ is None:
                g_bg_ = g.reshape(self.B, self.G, *g.shape[1:])
            plan = self._plan(id(p))
            if plan == "shared":
                self._accumulate_shared(use, pname, p, g_bg_)
                continue
            self._add_single(use, pname, p, g_bg_)
            if plan == "tie":
                self._tie_cross(use, p, g_bg_)
        if not self.keep_factors:
            use.saved = None
        use.got_grad = True

    # ----------------------------------------------------------------------------- stacks
    def _stackable(self, use: _Use) -> bool:
        """A linear weight that can join a stack: used once, plain (not sharded), not the output
        layer nor another wide layer (those are cropped to their own spans, ``_factors``)."""
        w = use.params.get("weight")
        return (use.kind == "linear" and w is not None and self._plan(id(w)) == "single"
                and use.module is not self.head and _is_plain(w) and w.shape[0] < 4 * w.shape[1])

    def _stack_of(self, use: _Use) -> int | None:
        """The id of the stack of linear layers fed ``use``'s input (``_stack_members[id]``, in
        forward order), or None when it stays alone. Layers fed one input ``a`` (Qwen3's q/k/v,
        gate/up) have per-sample gradients ``∇W_l,n = b_l,nᵀ a_n``, row blocks of the gradient
        ``b_nᵀ a_n`` of the stacked weight ``[W_1; W_2; …]`` with ``b = [b_1, b_2, …]``
        (concatenated features), so their summed Gram contributions are that weight's: one
        rule for the stack instead of one per layer."""
        if use.in_key is None:
            return None
        if use.stack_id == -1:  # once per input: every use fed it learns its stack
            candidates = self._by_input[use.in_key]
            members = [u for u in candidates if self._stackable(u)]
            same = len({(u.params["weight"].dtype, u.params["weight"].device) for u in members}) == 1
            stacked = len(members) > 1 and same
            if stacked:
                self._stack_members.append(members)
            for u in candidates:  # an id, not the list: a use in its own list would be a cycle
                u.stack_id = len(self._stack_members) - 1 if stacked and u in members else None
        return use.stack_id

    def _join_stack(self, use: _Use, g: torch.Tensor) -> bool:
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
        self._add_linear(a_bgtd, b_bgto)
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
        self._stacks.append(_Stack(params, bounds, a_bgtd, b_bgto))
        self._stack_pids.update(map(id, params))

    def _factors(self, use: _Use, g_bg_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear factors reshaped to (B, G, T', d_in) and (B, G, T', d_out), cropped to the
        positions where ``b`` is nonzero for some sample: for the output layer, the positions
        the completion mask scores (``head_span``, no host sync); for other wide layers
        (``d_out >= 4 d_in``), the span read from ``b`` itself (``gm.active_span``)."""
        a = use.saved.reshape(self.B, self.G, -1, use.saved.shape[-1])
        g = g_bg_.reshape(self.B, self.G, -1, g_bg_.shape[-1])
        if use.span is None and use.module is self.head and self.head_span is not None:
            use.span = self.head_span
            if use.span != slice(None):
                self._span_checks.append(gm.outside_span_nonzero(g, use.span))
        elif use.span is None:  # only output layers (d_out >= 4 d_in) are worth the sync
            wide = g.shape[-1] >= 4 * a.shape[-1]
            use.span = gm.active_span(g) if wide else slice(None)
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

    @staticmethod
    def _embedding_grad(use: _Use, g_n_: torch.Tensor) -> torch.Tensor:
        """An embedding's output gradient (N, …, d) with its ``padding_idx`` tokens zeroed (that
        row gets no gradient); applied once, on arrival, for every rule that reads it."""
        pad = use.module.padding_idx
        if pad is None:
            return g_n_
        return g_n_.masked_fill((use.saved == pad).reshape(*g_n_.shape[:-1], 1), 0)

    @staticmethod
    def _vocab(use: _Use, b: int):
        """Group ``b``'s distinct ids and inverse, from the embedding's forward hook."""
        return use.vocab[b]

    def _add_single(self, use: _Use, pname: str, p: torch.Tensor, g_bg_: torch.Tensor) -> None:
        """Add the Gram ``(B, G, G)`` of one use of one parameter (``diagonal_only``: its
        diagonal, the per-sample squared norms, mostly as unreduced parts)."""
        diag = self.diagonal_only
        if use.kind in ("linear", "conv1d"):
            if pname == "weight":
                self._add_linear(*self._factors(use, g_bg_))
                return
            g_bgto = g_bg_.reshape(self.B, self.G, -1, g_bg_.shape[-1])
            grads = gm.bias_grads(g_bgto.to(gm.work_dtype(g_bgto.dtype)))
        elif use.kind == "embedding":
            if diag:  # one ghost rule for the whole batch
                ids_nt = use.saved.reshape(self.N, -1)
                g_ntd = g_bg_.reshape(self.N, ids_nt.shape[1], -1)
                self._add_parts(dots=[gm.embedding_sq_norm_parts(ids_nt, g_ntd, self.max_elems)])
                return
            out = []
            for b in range(self.B):
                uniq_u, inv_gt = self._vocab(use, b)
                rows = gm.embedding_rows(inv_gt, uniq_u.numel(), g_bg_[b])
                out.append(gm.pair_gram(rows, rows))
            self._add(torch.stack(out))
            return
        elif pname == "weight":  # norm: divided by its weight in the panel (or below)
            grads, scale = self._norm_weight_parts(use, g_bg_, p)
            if not self._to_panel(p, grads, scale):
                self._add_rows(grads if scale is None else grads / scale)
            return
        else:
            grads = gm.norm_bias_grads(g_bg_, p.dim())
        if not self._to_panel(p, grads):
            self._add_rows(grads)

    def _add_linear(self, a_bgtd: torch.Tensor, b_bgto: torch.Tensor) -> None:
        """Add a linear weight's Gram (``diagonal_only``: its ``S`` parts) from its factors."""
        if self.diagonal_only:
            self._add_parts(*gm.linear_sq_norm_parts(
                a_bgtd, b_bgto, self.max_elems, self.route,
                ka_of=lambda: self._act_kernels(a_bgtd)))
        else:
            self._add(gm.linear_gram(a_bgtd, b_bgto, self.max_elems, self.route))

    def _add_rows(self, grads_bg_: torch.Tensor) -> None:
        """Add the Gram (or the squared norms) of per-sample gradients (B, G, …)."""
        if self.diagonal_only:
            self._add_parts(norms=gm.row_block_norms(grads_bg_.reshape(self.N, -1)))
        else:
            self._add(gm.gram_of_rows(grads_bg_.reshape(self.B, self.G, -1)))

    def _to_panel(self, p: torch.Tensor, grads_bg_: torch.Tensor,
                  scale: torch.Tensor | None = None) -> bool:
        """Queue a single-use parameter's small per-sample gradients (at most ``max_elems``
        entries), to be divided by ``scale`` (a norm weight, see ``_norm_weight_parts``), for the
        current panel; False when they are too large (added on their own).

        A panel (all queued gradients of one dtype, at most ``max_elems`` entries) is one
        ``(B, G, k)`` tensor: one division by its norm weights, its Gram or squared norms in one
        reduction for ~100 norm weights, and with ``keep_factors`` the weighted pass folds it
        with one matmul (``_weighted_panels``) instead of a few kernels per parameter."""
        n = grads_bg_.numel()
        if n > self.max_elems or (self.keep_factors and not _is_plain(p)):
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
        self._add_rows(data)
        if self.keep_factors:
            self._panels.append((params, data))
            self._panel_pids.update(map(id, params))

    def _act_kernels(self, a_bgtd: torch.Tensor) -> torch.Tensor:
        """``gm.act_kernels(a)``, reused by consecutive layers with the same input (q/k/v,
        gate/up): a one-entry cache keyed by the factor's storage, shape and strides."""
        key = (a_bgtd.data_ptr(), tuple(a_bgtd.shape), a_bgtd.stride())
        if self._ka_cache is None or self._ka_cache[0] != key:
            self._ka_cache = (key, gm.act_kernels(a_bgtd))
        return self._ka_cache[1]

    @staticmethod
    def _norm_weight_parts(use: _Use, g_bg_: torch.Tensor, p: torch.Tensor):
        """``(Σ_pos b ⊙ saved, w or None)``: the per-sample norm weight gradients (B, G,
        *p.shape) are the first divided by ``w`` (``saved = y − c``), or the first itself
        (``saved = x̂``, ``w`` None)."""
        return gm.norm_weight_grads(g_bg_, use.saved.reshape(g_bg_.shape), p.dim()), use.scale

    def _norm_weight_grads(self, use: _Use, g_bg_: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Per-sample norm weight gradients (B, G, *p.shape), from x̂ or from (y − c) / w."""
        grads, scale = self._norm_weight_parts(use, g_bg_, p)
        return grads if scale is None else grads / scale  # promoted in the kernel

    def _tie_cross(self, use: _Use, p: torch.Tensor, g_bg_: torch.Tensor) -> None:
        """Cross terms ``⟨E_i, H_j⟩ + ⟨H_i, E_j⟩`` of a tied embedding / output matrix, added
        once both uses' gradients have arrived (``diagonal_only``: ``_tie_cross_diagonal``)."""
        state = self.ties.setdefault(id(p), _TieState())
        emb_use = next(u for u in self.uses_by_param[id(p)] if u.kind == "embedding")
        if self.diagonal_only:
            self._tie_cross_diagonal(use, emb_use, state, g_bg_)
            return
        if state.vocab is None:
            state.vocab = [self._vocab(emb_use, b) for b in range(self.B)]
        if use.kind != "embedding":
            a_bgtd, b_bgto = self._factors(use, g_bg_)
        cross = torch.zeros(self.B, self.G, self.G, dtype=gm.ACC, device=g_bg_.device)
        for b in range(self.B):
            uniq_u, inv_gt = state.vocab[b]
            if use.kind == "embedding":
                mine = gm.embedding_rows(inv_gt, uniq_u.numel(), g_bg_[b])
                mine_store, other_store = state.emb_rows, state.lin_rows
            else:
                mine = gm.linear_grads_rows(a_bgtd[b], b_bgto[b], uniq_u)
                mine = mine.to(gm.work_dtype(mine.dtype))
                mine_store, other_store = state.lin_rows, state.emb_rows
            if b in other_store:
                k = gm.pair_gram(mine, other_store.pop(b))
                cross[b] = k + k.T
            else:
                mine_store[b] = mine
        self._add(cross)

    def _tie_cross_diagonal(self, use: _Use, emb_use: _Use, state: _TieState, g_bg_) -> None:
        """``2⟨E_n, H_n⟩`` for the whole batch (``gm.tie_cross_parts``): the output layer's use
        leaves its input and its gradient at the input ids (``gm.head_rows_at_ids``), the
        embedding's its output gradient; whichever comes second adds the term."""
        if state.ids is None:
            state.ids = emb_use.saved.reshape(self.N, -1)
        if use.kind == "embedding":
            state.emb_b = g_bg_.reshape(self.N, state.ids.shape[1], -1)
        else:
            a_bgsd, b_bgsv = self._factors(use, g_bg_)
            k2 = gm.head_rows_at_ids(b_bgsv.reshape(self.N, -1, b_bgsv.shape[-1]), state.ids,
                                     self.max_elems)
            state.head = (a_bgsd.reshape(self.N, -1, a_bgsd.shape[-1]), k2)
        if state.emb_b is not None and state.head is not None:
            part = gm.tie_cross_parts(state.emb_b, *state.head)
            self._add_parts(dots=[part, part])  # the cross term counts twice
            state.ids, state.emb_b, state.head = None, None, None

    def _full_grads(self, use: _Use, pname: str, p: torch.Tensor, g_bg_: torch.Tensor):
        """Per-sample gradients of one use, materialised: (N, *p.shape)."""
        N = self.N
        g_n_ = g_bg_.reshape(N, *g_bg_.shape[2:])
        if use.kind in ("linear", "conv1d"):
            g_nto = g_n_.reshape(N, -1, g_n_.shape[-1])
            if pname != "weight":
                return g_nto.sum(1)
            a_ntd = use.saved.reshape(N, -1, use.saved.shape[-1])
            w = gm.linear_grads_rows(a_ntd, g_nto, slice(None))  # (N, d_out, d_in)
            return w if use.kind == "linear" else w.transpose(1, 2)
        if use.kind == "embedding":
            g_ntd = g_bg_.reshape(N, -1, p.shape[-1])
            V = p.shape[0]
            idx = (torch.arange(N, device=p.device).unsqueeze(1) * V + use.saved.reshape(N, -1))
            out = torch.zeros(N * V, p.shape[-1], dtype=g_ntd.dtype, device=p.device)
            gm.add_rows_(out, idx.reshape(-1), g_ntd.reshape(-1, p.shape[-1]))
            return out.reshape(N, *p.shape)
        if pname == "weight":
            grads = self._norm_weight_grads(use, g_bg_, p)
        else:
            grads = gm.norm_bias_grads(g_bg_, p.dim())
        return grads.reshape(N, *p.shape)

    def _accumulate_shared(self, use: _Use, pname: str, p: torch.Tensor, g_bg_: torch.Tensor):
        if self.N * p.numel() > 4 * self.max_elems:
            names = sorted({u.name for u in self.uses_by_param[id(p)]})
            raise ValueError(
                f"parameter {self.names.get(id(p), ['?'])} is shared by modules {names}; the ghost "
                f"method would need {self.N} x {p.numel()} per-sample entries. Use method='loop'"
            )
        full = self._full_grads(use, pname, p, g_bg_)
        full = full.to(gm.work_dtype(full.dtype))
        pid = id(p)
        self.shared[pid] = full if pid not in self.shared else self.shared[pid] + full

    def finalize(self, device, dtype=gm.ACC) -> torch.Tensor:
        """The total Gram ``(B, G, G)``: hooked contributions plus shared-parameter buffers.

        With ``diagonal_only`` it is ``diag(S)``: the exact diagonal, zeros off it.
        """
        for sid in list(self._arrived):  # stacks some of whose members got no gradient
            self._add_stack(sid)
        self._ka_cache = None
        self._flush_panel()
        for full in self.shared.values():
            self._add_rows(full)
        self.shared.clear()
        if self._dot_parts or self._norm_parts:
            self._add(gm.sum_parts(self._dot_parts, self._norm_parts).reshape(self.B, self.G))
            self._dot_parts, self._norm_parts = [], []
        if not self._contributions:
            return torch.zeros(self.B, self.G, self.G, dtype=dtype, device=device)
        total = torch.stack(self._contributions).sum(0)
        self._contributions.clear()
        return torch.diag_embed(total) if self.diagonal_only else total

    # ----------------------------------------------------------------- weighted gradients
    def release_factors(self) -> None:
        """Drop every kept factor (layer inputs and output gradients); frees their memory."""
        for use in self.uses:
            use.saved, use.scale, use.grad = None, None, None
            use.vocab, use.batch_vocab = None, None
        self._panels, self._panel_pids = [], set()
        self._stacks, self._stack_pids = [], set()
        self.uses.clear()
        self.uses_by_param.clear()
        self.ties.clear()
        self.keep_factors = False

    def weighted_gradients(self, w_bg: torch.Tensor, accumulate_grad: bool,
                           diagonal_only: bool = False) -> torch.Tensor:
        """``K_bc = ⟨v_b, v_c⟩`` for ``v_b = Σ_g w_bg s_bg``; optionally ``.grad += Σ_b v_b``.

        Per trainable parameter, every hooked use contributes its per-group weighted gradient
        ``V_b`` (``_ghost_math``: the per-sample rule applied to ``w b``); uses of one parameter
        (tied embedding and head, a module called twice) are summed before the Gram, so ``K`` is
        over the true shared-parameter gradient. Dense parameters are built in chunks of rows
        (at most ``max_elems`` entries of ``V`` at a time); embedding-only parameters on the
        batch's distinct token rows. Returns float64 (B, B); with ``diagonal_only`` only the
        squared norms ``||v_b||²`` are computed (one reduction kernel per ``V``: float32 block
        norms, squared and summed in float64 once for all parameters), on the diagonal.

        A sharded parameter (a DTensor, FSDP2) gets its gradient as FSDP's backward would: each
        rank's full local ``Σ_b V_b`` is averaged over the ranks into the parameter's shards
        (``average_into_shards``); every rank must call this, with the same model.

        Cost: one weight-gradient matmul per linear weight (the weights folded into its narrower
        factor), its sum over groups and one norm kernel; the per-sample bias and norm-weight
        gradients kept from the Gram pass are only folded, a whole panel of them at once (one
        small matmul, ``_weighted_panels``). A handful of kernels per linear weight, so that on
        a GPU the launch overhead stays small next to GRPO's own backward.
        """
        changed = [self.names[pid][0] for pid, v in self._versions.items()
                   if self.trainable[pid]._version != v]
        if changed:
            raise ValueError(
                f"parameter(s) {changed[:3]}{' ...' if len(changed) > 3 else ''} changed in place "
                "since the ghost pass; its kept factors hold only at the parameters they were "
                "recorded at: run score_gram(..., keep_factors=True) again"
            )
        grams: list[torch.Tensor] = []
        pending = {id(u): len(u.params) for u in self.uses}
        self._fold_cache, self._w_cast = None, {}
        self._w_bg, self._diag_gram = w_bg, diagonal_only
        grams.extend(self._weighted_panels(accumulate_grad))
        grams.extend(self._weighted_stacks(accumulate_grad))
        for pid, uses in self.uses_by_param.items():
            p = self.trainable[pid]
            done = pid in self._panel_pids or pid in self._stack_pids  # above
            sources = [] if done else [self._weighted_source(u, p)
                                       for u in uses if u.grad is not None]
            if sources:
                grams.extend(self._weighted_param(p, sources, accumulate_grad))
            elif accumulate_grad and not _is_plain(p):
                # no local gradient: still join the ranks' reduction, with zeros
                self._set_grad(p, torch.zeros(p.shape, dtype=p.dtype, device=w_bg.device))
            for u in uses:  # free each use's factors once all its parameters are done
                pending[id(u)] -= 1
                if pending[id(u)] == 0:
                    u.saved, u.scale, u.grad = None, None, None
                    u.vocab, u.batch_vocab = None, None
        self._fold_cache, self._w_cast, self._w_bg = None, {}, None
        self._panel_pids, self._stack_pids = set(), set()
        if not grams:
            return torch.zeros(self.B, self.B, dtype=gm.ACC, device=w_bg.device)
        if diagonal_only:  # every parameter's block norms, squared and summed in one pass
            return torch.diag_embed(gm.sum_parts(norms=grams))
        return torch.stack(grams).sum(0)

    def _weighted_panels(self, accumulate: bool) -> list[torch.Tensor]:
        """Panels of kept small per-sample gradients (``_to_panel``): ``V_b = Σ_g w_bg ∇p_bg``
        for all their parameters at once (one matmul), their Grams or block norms, and
        ``.grad += Σ_b V_b`` as views of one total per panel (one cast per parameter dtype)."""
        grams = []
        for params, data_bgk in self._panels:
            w_b1g = self._weights_for(data_bgk).unsqueeze(1)
            v_bk = torch.bmm(w_b1g, data_bgk).squeeze(1)
            grams.extend(gm.row_block_norms(v_bk) if self._diag_gram else [gm.batch_gram(v_bk)])
            if not accumulate:
                continue
            total_k, casts, start = v_bk.sum(0), {}, 0
            for p in params:
                if p.dtype not in casts:
                    casts[p.dtype] = total_k if total_k.dtype == p.dtype else total_k.to(p.dtype)
                g = casts[p.dtype][start:start + p.numel()].view(p.shape)
                start += p.numel()
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad += g
        self._panels = []
        return grams

    def _weights_for(self, x: torch.Tensor) -> torch.Tensor:
        """The pass's weights ``w_bg`` in ``x``'s work dtype and device, cast once per pass."""
        key = (gm.work_dtype(x.dtype), x.device)
        if key not in self._w_cast:
            self._w_cast[key] = self._w_bg.to(device=x.device, dtype=key[0])
        return self._w_cast[key]

    def _fold(self, x_bg_: torch.Tensor) -> torch.Tensor:
        """``w_bg x_bg…`` (``gm.fold_weights``) with the pass's weights."""
        return gm.fold_weights(x_bg_, self._weights_for(x_bg_))

    def _folded_input(self, a_bgtd: torch.Tensor) -> torch.Tensor:
        """``w_bg a_bgt`` for a linear input, reused by consecutive uses of one input (q/k/v)."""
        key = (a_bgtd.data_ptr(), tuple(a_bgtd.shape), a_bgtd.stride())
        if self._fold_cache is None or self._fold_cache[0] != key:
            self._fold_cache = (key, self._fold(a_bgtd))
        return self._fold_cache[1]

    def _weighted_source(self, use: _Use, p: torch.Tensor):
        """One use's per-group weighted gradient of ``p``: ``("rows", f)`` with ``f(slice) ->
        (B, R, …)`` rows of ``V`` along ``p``'s first axis (``f(None)``: all of them), or
        ``("sparse", (U, rows_bu…, cuts))`` (``gm.chunk_cuts``)."""
        pname = next(k for k, q in use.params.items() if q is p)
        g_bg_ = use.grad.reshape(self.B, self.G, *use.grad.shape[1:])
        if use.kind in ("linear", "conv1d") and pname == "weight":
            return "rows", self._linear_rows(use.kind, *self._factors(use, g_bg_))
        wg_bg_ = self._fold(g_bg_)
        if use.kind in ("linear", "conv1d"):  # bias
            v_bo = wg_bg_.reshape(self.B, -1, wg_bg_.shape[-1]).sum(1, dtype=gm.work_dtype(p.dtype))
            return "rows", lambda r: _rows(v_bo, r)
        if use.kind == "embedding":
            wg_bgtd = wg_bg_.reshape(self.B, self.G, -1, wg_bg_.shape[-1])
            uniq_u, inv_n, cuts = use.batch_vocab
            return "sparse", (*gm.weighted_embedding_rows(uniq_u, inv_n, wg_bgtd), cuts)
        if pname == "weight":  # norm
            v_b_ = self._norm_weight_grads(use, wg_bg_, p).sum(1)
        else:
            v_b_ = gm.norm_bias_grads(wg_bg_, p.dim()).sum(1)
        v_b_ = v_b_.reshape(self.B, *(p.shape or (1,)))  # a 0-d parameter as one row
        return "rows", lambda r: _rows(v_b_, r)

    def _linear_rows(self, kind: str, a_bgtd: torch.Tensor, b_bgto: torch.Tensor):
        """``f(r) -> (B, R, …)``: rows ``r`` of a linear weight's ``V`` (``gm.group_outer``), the
        weights folded into the narrower factor (a folded input is reused, ``_folded_input``)."""
        if kind == "linear":  # W: (d_out, d_in), rows are outputs
            if b_bgto.shape[-1] < a_bgtd.shape[-1]:
                bw_bgto = self._fold(b_bgto)
                return lambda r: gm.group_outer(_cols(bw_bgto, r), a_bgtd)
            aw_bgtd = self._folded_input(a_bgtd)
            return lambda r: gm.group_outer(_cols(b_bgto, r), aw_bgtd)
        bw_bgto = self._fold(b_bgto)  # Conv1D W: (d_in, d_out), rows are inputs
        return lambda r: gm.group_outer(_cols(a_bgtd, r), bw_bgto)

    def _weighted_stacks(self, accumulate: bool) -> list[torch.Tensor]:
        """Stacked linear weights (``_stack_of``): ``V`` of the stacked weight in one matmul per
        chunk of rows, its Grams or block norms, and each member's ``.grad += `` its rows (views
        of one total, like ``_weighted_panels``)."""
        grams = []
        for st in self._stacks:
            shape = torch.Size((st.bounds[-1][1], st.a.shape[-1]))
            dense = [self._linear_rows("linear", st.a, st.b)]
            part, total = self._weighted_rows(shape, st.params[0].dtype, dense, [], None, accumulate)
            grams.extend(part)
            if accumulate:
                for p, (r0, r1) in zip(st.params, st.bounds):
                    if p.grad is None:
                        p.grad = total[r0:r1]
                    else:
                        p.grad += total[r0:r1]
        self._stacks = []
        return grams

    def _weighted_param(self, p: torch.Tensor, sources: list, accumulate: bool) -> list[torch.Tensor]:
        """Grams (B, B) of one parameter's summed per-group gradients, one per chunk of rows
        (when the pass is ``diagonal_only``: the chunks' block norms, ``gm.row_block_norms``);
        ``.grad += Σ_b V_b``."""
        diag = self._diag_gram
        dense = [f for kind, f in sources if kind == "rows"]
        sparse = [s for kind, s in sources if kind == "sparse"]
        # the full local gradient: p.grad itself for a plain parameter (None: not yet created)
        grad = p.grad if accumulate and _is_plain(p) else None
        if len(sparse) > 1:  # several embedding uses: one set of rows (a host sync)
            uniq_u, rows_bud = gm.merge_sparse_rows([(u, rows) for u, rows, _ in sparse])
            sparse = [(uniq_u, rows_bud, gm.chunk_cuts(uniq_u, self._row_step(p.shape), p.shape[0]))]
        if not dense:  # embedding-only: the batch's distinct rows
            uniq_u, rows_bud, _ = sparse[0]
            if accumulate:
                if grad is None:
                    grad = torch.zeros(p.shape, dtype=p.dtype, device=rows_bud.device)
                gm.add_rows_(grad, uniq_u, rows_bud.sum(0))
                self._set_grad(p, grad)
            return gm.row_block_norms(rows_bud) if diag else [gm.batch_gram(rows_bud)]
        grams, grad = self._weighted_rows(p.shape, p.dtype, dense, sparse, grad, accumulate)
        if accumulate:
            self._set_grad(p, grad if grad.shape == p.shape else grad.view(p.shape))
        return grams

    def _weighted_rows(self, shape: torch.Size, dtype: torch.dtype, dense: list, sparse: list,
                       grad: torch.Tensor | None, accumulate: bool):
        """``(grams, grad)`` of a parameter of ``shape`` from row sources (``f(rows)``) and
        sparse rows, in chunks of at most ``max_elems`` entries of ``V``: the chunks' Grams or
        block norms, and (``accumulate``) ``grad + Σ_b V_b`` in ``dtype`` (``grad`` None: a new
        tensor, the total itself when there is one chunk)."""
        diag = self._diag_gram
        shape = shape or torch.Size((1,))  # rows along the first axis; a 0-d parameter is one row
        step = self._row_step(shape)
        whole = step >= shape[0]  # one chunk: the gradient is assigned, not added to zeros
        grams, local = [], []
        for uniq_u, rows_bud, cuts in sparse:  # ids local to their chunk; rows in V's dtype
            local.append((uniq_u.remainder(step), rows_bud.transpose(0, 1).to(dtype), cuts))
        for i, r0 in enumerate(range(0, shape[0], step)):
            rows = None if whole else slice(r0, r0 + step)  # None: all rows, no indexing
            v_br_ = dense[0](rows)
            for f in dense[1:]:
                v_br_ = v_br_ + f(rows)
            if sparse and v_br_._is_view():
                v_br_ = v_br_.clone()  # never write into a kept factor
            for local_u, rows_ub_, cuts in local:  # this chunk's ids: U[cuts[i]:cuts[i + 1]]
                lo, hi = cuts[i], cuts[i + 1]
                gm.add_rows_(v_br_.transpose(0, 1), local_u[lo:hi], rows_ub_[lo:hi])
            grams.extend(gm.row_block_norms(v_br_) if diag else [gm.batch_gram(v_br_)])
            if accumulate:
                total = v_br_.sum(0)  # half precision: float32 accumulation, one rounding
                total = total if total.dtype == dtype else total.to(dtype)
                if grad is None and whole:
                    grad = total
                else:
                    if grad is None:
                        grad = torch.zeros(shape, dtype=dtype, device=total.device)
                    grad.view(shape)[rows or slice(None)] += total
        return grams, grad

    def _row_step(self, shape: torch.Size) -> int:
        """Rows of a parameter of ``shape`` per chunk of the weighted pass: at most
        ``max_elems`` entries of ``V`` (B, rows, …) at a time."""
        return max(1, self.max_elems // max(self.B * shape[1:].numel(), 1))

    @staticmethod
    def _set_grad(p: torch.Tensor, full: torch.Tensor) -> None:
        """``p.grad = full`` (plain parameter; a no-op when ``full`` is ``p.grad``), or, for a
        sharded parameter, ``p.grad += `` the ranks' mean of ``full`` in ``p``'s layout."""
        if _is_plain(p):
            if full is not p.grad:
                p.grad = full
            return
        shards = average_into_shards(p, full)
        p.grad = shards if p.grad is None else p.grad + shards
