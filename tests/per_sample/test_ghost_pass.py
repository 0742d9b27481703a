"""score_gram (oblr_theory.bridge.gram): the one-backward ghost Gram equals the per-sequence loop.

All comparisons are float64 on tiny seeded models; "equal" means 1e-9 relative to the largest
Gram entry. Negative controls: unsupported parameters and hidden parameter uses must raise.
"""

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bridge_helpers import make_batch, rel_err, tiny_model  # noqa: E402
from oblr_theory.bridge import score_gram  # noqa: E402

TOL = 1e-9


def both(model, batch, **kw):
    ghost = score_gram(model, *batch, method="ghost", **kw)
    loop = score_gram(model, *batch, method="loop")
    return ghost, loop


@pytest.mark.parametrize(
    "arch, tied, route",
    [
        ("qwen3", True, "auto"),
        ("qwen3", True, "ghost"),
        ("qwen3", False, "materialise"),
        ("qwen3", False, "ghost"),
        ("llama", False, "auto"),  # Linear biases
        ("gpt2", True, "auto"),  # Conv1D, LayerNorm with bias, position embedding, tied head
    ],
)
def test_ghost_equals_loop(arch, tied, route):
    model = tiny_model(arch, tied=tied)
    batch = make_batch(pad_side="left", extra_pad=1)
    ghost, loop = both(model, batch, route=route)
    assert ghost.gram_bgg.shape == (2, 3, 3) and ghost.gram_bgg.dtype == torch.float64
    assert rel_err(ghost.gram_bgg, loop.gram_bgg) < TOL
    torch.testing.assert_close(ghost.seq_logp_bg, loop.seq_logp_bg, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ghost.sq_norms_bg, torch.diagonal(loop.gram_bgg, dim1=1, dim2=2))
    assert bool((ghost.sq_norms_bg > 0).all())


def test_tied_cross_terms_matter():
    """The tied matrix's Gram is not the sum of its two uses' Grams: the cross terms count."""
    model = tiny_model("qwen3", tied=True)
    batch = make_batch()
    full = score_gram(model, *batch).gram_bgg
    untied = tiny_model("qwen3", tied=True)
    with torch.no_grad():  # same weights, but the head gets its own copy of the matrix
        untied.lm_head.weight = torch.nn.Parameter(untied.model.embed_tokens.weight.clone())
    split = score_gram(untied, *batch).gram_bgg
    assert rel_err(full, split) > 1e-3
    assert rel_err(full, score_gram(model, *batch, method="loop").gram_bgg) < TOL


@pytest.mark.parametrize("arch", ["qwen3", "gpt2"])
def test_padding_side_and_amount_do_not_matter(arch):
    model = tiny_model(arch)
    ref = score_gram(model, *make_batch(pad_side="right"))
    for side, extra in [("left", 0), ("left", 3), ("right", 3)]:
        got = score_gram(model, *make_batch(pad_side=side, extra_pad=extra))
        assert rel_err(got.gram_bgg, ref.gram_bgg) < TOL
        torch.testing.assert_close(got.seq_logp_bg, ref.seq_logp_bg, rtol=1e-10, atol=1e-12)


def _set_trainable(model, predicate):
    for name, p in model.named_parameters():
        p.requires_grad_(predicate(name))


@pytest.mark.parametrize("tied", [True, False])
def test_freezing_removes_exactly_its_contribution(tied):
    """Gram is additive over disjoint parameter sets: K(A ∪ B) = K(A) + K(B)."""
    model = tiny_model("qwen3", tied=tied)
    batch = make_batch(pad_side="left")
    full = score_gram(model, *batch).gram_bgg
    in_a = lambda n: "embed_tokens" in n or "norm" in n or "q_proj" in n  # noqa: E731
    _set_trainable(model, in_a)
    gram_a = score_gram(model, *batch).gram_bgg
    assert rel_err(gram_a, score_gram(model, *batch, method="loop").gram_bgg) < TOL
    _set_trainable(model, lambda n: not in_a(n))
    gram_b = score_gram(model, *batch).gram_bgg
    assert rel_err(gram_b, score_gram(model, *batch, method="loop").gram_bgg) < TOL
    assert rel_err(gram_a + gram_b, full) < TOL
    assert rel_err(gram_a, full) > 1e-3 and rel_err(gram_b, full) > 1e-3
    _set_trainable(model, lambda n: False)  # the empty set: refused, not an all-zero Gram
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        score_gram(model, *batch)


def test_shared_module_reuse_is_exact():
    """A module called twice (one parameter, two uses) goes through the shared-buffer rule."""
    model = tiny_model("qwen3", tied=False)
    model.model.layers[1].mlp = model.model.layers[0].mlp
    ghost, loop = both(model, make_batch())
    assert rel_err(ghost.gram_bgg, loop.gram_bgg) < TOL


def test_grads_and_mode_untouched():
    model = tiny_model("qwen3")
    score_gram(model, *make_batch())
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert all(not m._forward_hooks and "forward" not in vars(m) for m in model.modules())


def _alive(*names):
    """Instances of the pass.s classes still reachable (after a full collection)."""
    import gc

    gc.collect()
    return [type(o).__name__ for o in gc.get_objects() if type(o).__name__ in names]


@pytest.mark.parametrize("kw, weighted", [({}, False), ({"diagonal_only": True}, False),
                                          ({"keep_factors": True, "diagonal_only": True}, True),
                                          ({"keep_factors": True}, False)])
def test_nothing_outlives_the_pass(kw, weighted):
    """After a pass (and its weighted gradients, or ``release_factors``) no pass and no
    use record stays alive: each output's gradient hook, held by its autograd node where the
    garbage collector cannot see it, refers back to them, so the pass must drop the nodes
    (``_drop_graph``), or every update would leak its graph's nodes and the embedding outputs.
    Also when the pass raises (a hidden parameter use)."""
    model = tiny_model("qwen3")
    res = score_gram(model, *make_batch(), method="ghost", **kw)
    if weighted:
        res.weighted_gradients(torch.ones(2, 3, dtype=torch.float64))
    elif kw.get("keep_factors"):
        res.release_factors()
    assert _alive("GhostPass", "Use") == []
    attn = model.model.layers[0].self_attn
    attn.q_proj = Leaky(attn.q_proj)
    with pytest.raises(ValueError):
        score_gram(model, *make_batch(), method="ghost", **kw)
    assert _alive("GhostPass", "Use") == []


class Scale(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.alpha = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def forward(self, x):
        return self.inner(x) * self.alpha


class Leaky(torch.nn.Module):
    """Hides an extra use of a hooked module's weight: the graph check must catch it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 0.01 * self.inner.weight.sum()


def test_pass_wraps_forwards_only_while_it_runs():
    """The pass wraps each hooked module's forward for its duration only. A module's own instance
    forward (as ``accelerate`` installs) runs inside the wrapper and is put back; a forward hook
    that rescales a module's output (``y' = 2y``) changes the Gram exactly as the per-sample
    gradients change (the loop method): the factor is ``∂L/∂y``, not ``∂L/∂y'``, which a forward
    hook of the pass's own, run after the rescaling one, would read. After a pass that raises,
    the modules are as found."""
    model = tiny_model("qwen3")
    batch = make_batch()
    layer = model.model.layers[0]
    calls = []

    def own_forward(x, _class_forward=type(layer.self_attn.o_proj).forward.__get__(layer.self_attn.o_proj)):
        calls.append(x.shape)
        return _class_forward(x)

    layer.self_attn.o_proj.forward = own_forward
    handle = layer.mlp.down_proj.register_forward_hook(lambda mod, args, out: out * 2.0)
    ghost, loop = both(model, batch)
    assert rel_err(ghost.gram_bgg, loop.gram_bgg) < TOL
    handle.remove()
    assert rel_err(score_gram(model, *batch).gram_bgg, loop.gram_bgg) > 0.01  # the control
    assert calls and layer.self_attn.o_proj.forward is own_forward
    layer.self_attn.q_proj = Leaky(layer.self_attn.q_proj)
    with pytest.raises(ValueError, match="outside the modules"):
        score_gram(model, *batch)
    own = [name for name, m in model.named_modules() if "forward" in vars(m)]
    assert own == ["model.layers.0.self_attn.o_proj"]


def test_unsupported_parameter_raises_naming_module():
    model = tiny_model("qwen3")
    model.model.norm = Scale(model.model.norm)
    batch = make_batch()
    with pytest.raises(ValueError, match=r"\['alpha'\] of module 'model\.norm' \(Scale\)"):
        score_gram(model, *batch)
    model.model.norm.alpha.requires_grad_(False)  # frozen: nothing to account for
    ghost, loop = both(model, batch)
    assert rel_err(ghost.gram_bgg, loop.gram_bgg) < TOL


def test_hidden_parameter_use_raises():
    model = tiny_model("qwen3")
    attn = model.model.layers[0].self_attn
    attn.q_proj = Leaky(attn.q_proj)
    with pytest.raises(ValueError, match=r"q_proj\.inner\.weight.*outside the modules"):
        score_gram(model, *make_batch())


def test_proxies_on_the_diagonal():
    model = tiny_model("qwen3")
    ids, attn, comp = make_batch()
    length = score_gram(model, ids, attn, comp, method="length")
    assert torch.equal(length.gram_bgg, torch.diag_embed(comp.sum(-1).double()))
    logit = score_gram(model, ids, attn, comp, method="logit")
    assert torch.equal(logit.gram_bgg, torch.diag_embed(logit.sq_norms_bg))
    # per position 1 - 2π(y) + ||π||² lies in (0, 2]
    assert bool((logit.sq_norms_bg > 0).all())
    assert bool((logit.sq_norms_bg <= 2 * length.sq_norms_bg).all())
    ghost = score_gram(model, ids, attn, comp)
    torch.testing.assert_close(logit.seq_logp_bg, ghost.seq_logp_bg)


def test_bad_arguments_raise():
    model = tiny_model("qwen3")
    ids, attn, comp = make_batch()
    with pytest.raises(ValueError, match="method"):
        score_gram(model, ids, attn, comp, method="fast")
    with pytest.raises(ValueError, match="route"):
        score_gram(model, ids, attn, comp, route="sideways")
    with pytest.raises(ValueError, match="completion_mask"):
        score_gram(model, ids, attn, comp[..., :-1])
    comp2 = comp.clone()
    comp2[0, 0] = 0
    with pytest.raises(ValueError, match="completion_mask has no completion token"):
        score_gram(model, ids, attn, comp2, method="loop")
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        score_gram(model, ids, attn, comp)


def test_bfloat16_close_to_float64():
    model64 = tiny_model("qwen3", tied=True)
    model16 = copy.deepcopy(model64).to(torch.bfloat16)
    batch = make_batch()
    ref = score_gram(model64, *batch).gram_bgg
    got = score_gram(model16, *batch).gram_bgg
    assert got.dtype == torch.float64
    assert rel_err(got, ref) < 0.05


def test_norm_with_zero_weight_entries():
    """A zero in a norm weight switches that norm to the recomputed-x̂ rule; still exact."""
    model = tiny_model("qwen3", tied=False)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_norm.weight[3] = 0.0
        model.model.layers[1].input_layernorm.weight[:5] = 0.0
    ghost, loop = both(model, make_batch(pad_side="left"))
    assert rel_err(ghost.gram_bgg, loop.gram_bgg) < TOL


class PowerRMSNorm(torch.nn.Module):
    """``y = x̂ ⊙ (o + w)^k``: affine in ``w`` only for ``k = 1``."""

    def __init__(self, inner, offset=0.0, power=1):
        super().__init__()
        self.weight = torch.nn.Parameter(inner.weight.detach().clone() - offset)
        self.eps, self.offset, self.power = inner.variance_epsilon, offset, power

    def forward(self, x):
        xhat = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return xhat * (self.offset + self.weight) ** self.power


def test_non_affine_norm_raises_naming_module():
    """A norm-like module that is not ``y = x̂ ⊙ (o + w) + c`` (here ``x̂ ⊙ w²``, which passes
    the offset probe, since ``y(w=0) = 0``) is refused by its first-call check."""
    model = tiny_model("qwen3")
    model.model.norm = PowerRMSNorm(model.model.norm, power=2)
    with pytest.raises(ValueError, match=r"'model\.norm' \(PowerRMSNorm\) is not elementwise-affine"):
        score_gram(model, *make_batch())
    loop = score_gram(model, *make_batch(), method="loop")  # the reference handles any module
    assert bool((loop.sq_norms_bg > 0).all())


class _PositionMixingHead(torch.nn.Module):
    """A causal LM whose logits at ``t`` also carry half of the head's output at ``t − 1``: the
    output layer's gradient is then nonzero one position before the scored ones."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        logits = self.inner(**kwargs).logits
        return (logits + 0.5 * logits.roll(1, dims=1),)


@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_output_layer_cropped_to_the_scored_positions_without_reading_its_gradient(
    pad_side, monkeypatch
):
    """The LM head's factors are cropped to the logit positions the completion mask scores
    (known before the forward pass), not by reading its gradient (a host sync on a GPU)."""
    from oblr_theory.per_sample import ghost_pass
    from oblr_theory.per_sample.kernels import logit_span

    calls = []
    monkeypatch.setattr(ghost_pass, "active_span", lambda *a, **k: calls.append(1) or slice(None))
    model = tiny_model("qwen3")
    batch = make_batch(pad_side=pad_side, extra_pad=2)
    comp_nt = batch[2].reshape(-1, batch[2].shape[-1]).bool()
    span = logit_span(comp_nt)
    assert span != slice(None) and span.stop - span.start < comp_nt.shape[1]  # a real crop
    ghost = score_gram(model, *batch, method="ghost")
    loop = score_gram(model, *batch, method="loop")
    assert rel_err(ghost.gram_bgg, loop.gram_bgg) < 1e-9
    assert calls == []


def test_output_layer_that_mixes_positions_is_refused():
    """Negative control for the crop: a head whose gradient reaches unscored positions is
    detected on the device and refused (the cropped Gram would be wrong), in the plain pass and
    at weighted_gradients of a kept pass; the loop method is unaffected."""
    from oblr_theory.bridge import gram

    model = _PositionMixingHead(tiny_model("qwen3"))
    batch = make_batch(extra_pad=2)
    with pytest.raises(ValueError, match="does not map positions to logits one to one"):
        score_gram(model, *batch, method="ghost")
    kept = score_gram(model, *batch, method="ghost", keep_factors=True, diagonal_only=True)
    with pytest.raises(ValueError, match="does not map positions to logits one to one"):
        kept.weighted_gradients(torch.ones(2, 3, dtype=torch.float64))
    assert all(p.grad is None for p in model.parameters())
    kept = score_gram(model, *batch, method="ghost", keep_factors=True)
    with pytest.raises(ValueError, match="does not map positions to logits one to one"):
        kept.release_factors()
    loop = score_gram(model, *batch, method="loop")
    with pytest.MonkeyPatch.context() as mp:  # without the check the crop would be wrong
        mp.setattr(gram, "check_span", lambda violation: None)
        unchecked = score_gram(model, *batch, method="ghost")
    assert rel_err(unchecked.gram_bgg, loop.gram_bgg) > 1e-3


def _tempered_sq_norms_autograd(model, batch, tau):
    """``S`` of ``softmax(z/τ)`` by hand, one unpadded sequence at a time: ``log_softmax`` of the
    model's logits over ``τ``, gathered at the completion tokens, summed, differentiated."""
    ids, attn, comp = batch
    params = [p for p in model.parameters() if p.requires_grad]
    out = torch.zeros(ids.shape[:2], dtype=torch.float64)
    for b in range(ids.shape[0]):
        for g in range(ids.shape[1]):
            keep = attn[b, g].bool()
            seq = ids[b, g][keep][None]
            logp = (model(input_ids=seq).logits[0, :-1] / tau).log_softmax(-1)
            tok = logp.gather(-1, seq[0, 1:, None])[:, 0]
            total = (tok * comp[b, g][keep][1:]).sum()
            grads = torch.autograd.grad(total, params)
            out[b, g] = sum(float(x.pow(2).sum()) for x in grads)
    return out


@pytest.mark.parametrize("method", ["ghost", "loop"])
def test_temperature_gives_the_scores_of_the_tempered_policy(method):
    """``temperature=τ``: ``S`` of ``softmax(z/τ)``, against the scores built by hand; negative
    control: ``τ = 1`` gives other norms (at least 1e-3 apart)."""
    model = tiny_model("qwen3")
    batch = make_batch(pad_side="left", extra_pad=1)
    ref = _tempered_sq_norms_autograd(model, batch, 0.7)
    got = score_gram(model, *batch, method=method, temperature=0.7).sq_norms_bg
    assert rel_err(got, ref) < TOL
    assert rel_err(score_gram(model, *batch, method=method).sq_norms_bg, ref) > 1e-3


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match="temperature"):
        score_gram(tiny_model("qwen3"), *make_batch(), temperature=bad)
