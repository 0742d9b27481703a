"""ScoreGram.weighted_gradients (oblr_theory.bridge.gram): the update gradient and the B × B Gram
of per-group weighted gradients from the one ghost pass, without a second backward.

References, all float64 on tiny seeded models:

- ``.grad``: autograd's gradient of the surrogate ``Σ_bg w_bg seq_logp_bg`` (1e-10 relative);
- ``K``: ``⟨v_b, v_c⟩`` with ``v_b = Σ_g w_bg s_bg`` built from per-sequence gradients
  (one backward per sequence, as ``method="loop"`` does) (1e-9 relative).

HF's Qwen3/Llama RMSNorm casts its input to float32 (and back), so on those models autograd's
backward of the weighted surrogate rounds ``w_n · b_n`` to float32 where the per-sequence scores
round ``b_n``: the two references then differ by ~1e-7 however exact the method. The fixture
``float64_norms`` keeps those norms in the input dtype, so that both references are float64-exact;
``test_hf_float32_norm_upcast`` shows the unpatched behaviour.

Negative controls: the tied-head cross terms must matter, and missing factors must raise.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bridge_helpers import make_batch, rel_err, tiny_model  # noqa: E402
from oblr_theory.bridge import score_gram, sequence_logprobs  # noqa: E402
from oblr_theory.snr import snr_pieces_from_gram  # noqa: E402

GRAD_TOL = 1e-10
GRAM_TOL = 1e-9


def _rmsnorm_in_input_dtype(self, hidden_states):
    """``w ⊙ x / sqrt(mean(x²) + eps)`` in the input dtype (HF computes it in float32)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@pytest.fixture
def float64_norms(monkeypatch):
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen3 import modeling_qwen3

    monkeypatch.setattr(modeling_qwen3.Qwen3RMSNorm, "forward", _rmsnorm_in_input_dtype)
    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _rmsnorm_in_input_dtype)


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def weights(B, G, seed=3):
    """Advantage-like weights ``A / (B G)`` with both signs."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, G, generator=gen, dtype=torch.float64) / (B * G)


def autograd_reference(model, batch, w_bg):
    """References: ``∇ Σ_bg w_bg seq_logp_bg`` (one backward of the surrogate), and from
    per-sequence backward passes (as ``method="loop"``) ``Σ_b v_b`` per parameter and the Gram
    ``⟨v_b, v_c⟩`` of ``v_b = Σ_g w_bg s_bg``.

    Returns ``(surrogate_grads, loop_grads, gram_bb)``.
    """
    params = [p for _, p in trainable(model)]
    seq_bg = sequence_logprobs(model, *batch).seq_logp_bg
    grads = torch.autograd.grad((w_bg * seq_bg).sum(), params, retain_graph=True,
                                allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    B, G = w_bg.shape
    v_bp = [[torch.zeros_like(p) for p in params] for _ in range(B)]
    for b in range(B):
        for g in range(G):
            s = torch.autograd.grad(seq_bg[b, g], params, retain_graph=True, allow_unused=True)
            for k, sk in enumerate(s):
                if sk is not None:
                    v_bp[b][k] = v_bp[b][k] + w_bg[b, g] * sk
    loop_grads = [sum(v_bp[b][k] for b in range(B)) for k in range(len(params))]
    v_bk = torch.stack([torch.cat([x.reshape(-1) for x in v]) for v in v_bp])
    return grads, loop_grads, v_bk @ v_bk.T


def ghost_weighted(model, batch, w_bg, **kw):
    model.zero_grad(set_to_none=True)
    res = score_gram(model, *batch, method="ghost", keep_factors=True, **kw)
    gram_bb = res.weighted_gradients(w_bg)
    return res, gram_bb


def grad_err(model, refs):
    """Largest relative error of ``.grad`` over trainable parameters (max-entry relative)."""
    errs = [rel_err(p.grad, r) if float(r.abs().max()) > 0 else float(p.grad.abs().max())
            for (_, p), r in zip(trainable(model), refs)]
    return max(errs)


def assert_matches(model, batch, w_bg, **kw):
    """``.grad`` equals the surrogate's autograd gradient (and the loop's ``Σ_b v_b``) to 1e-10;
    ``K`` equals the loop's Gram of per-group gradients to 1e-9."""
    res, gram_bb = ghost_weighted(model, batch, w_bg, **kw)
    grads, loop_grads, ref_bb = autograd_reference(model, batch, w_bg)
    assert all(p.grad is not None for _, p in trainable(model))
    assert grad_err(model, grads) < GRAD_TOL
    assert grad_err(model, loop_grads) < GRAD_TOL
    assert gram_bb.shape == ref_bb.shape and gram_bb.dtype == torch.float64
    assert rel_err(gram_bb, ref_bb) < GRAM_TOL
    return res, gram_bb


@pytest.mark.parametrize(
    "arch, tied, route",
    [
        ("qwen3", True, "auto"),
        ("qwen3", False, "ghost"),
        ("llama", False, "auto"),  # Linear biases
        ("gpt2", True, "auto"),  # Conv1D, LayerNorm with bias, position embedding, tied head
    ],
)
def test_weighted_gradients_equal_autograd(arch, tied, route, float64_norms):
    model = tiny_model(arch, tied=tied)
    batch = make_batch(B=3, G=3, pad_side="left", extra_pad=1)
    res, gram_bb = assert_matches(model, batch, weights(3, 3), route=route)
    assert res._factors is None  # released after the call
    ref = score_gram(model, *batch, method="loop")  # the Gram itself is unchanged by keeping
    assert rel_err(res.gram_bgg, ref.gram_bgg) < GRAM_TOL


def test_chunked_rows_and_accumulation(float64_norms):
    """Tiny ``max_elems`` forces one row per chunk (tied head rows meet embedding rows in
    every chunk); ``.grad`` is added to, not overwritten."""
    model = tiny_model("qwen3", tied=True)
    batch = make_batch(B=2, G=3)
    w_bg = weights(2, 3, seed=5)
    assert_matches(model, batch, w_bg, max_elems=1)
    first = [p.grad.clone() for _, p in trainable(model)]
    res = score_gram(model, *batch, keep_factors=True)
    res.weighted_gradients(w_bg)  # accumulates onto the existing .grad
    for (_, p), g in zip(trainable(model), first):
        assert rel_err(p.grad, 2 * g) < GRAD_TOL


def test_tied_gram_is_over_the_shared_parameter():
    """Splitting the tied matrix into two parameters changes K (the cross terms count)."""
    model = tiny_model("qwen3", tied=True)
    batch = make_batch()
    w_bg = weights(2, 3)
    _, tied_bb = ghost_weighted(model, batch, w_bg)
    untied = tiny_model("qwen3", tied=True)
    with torch.no_grad():
        untied.lm_head.weight = torch.nn.Parameter(untied.model.embed_tokens.weight.clone())
    _, split_bb = ghost_weighted(untied, batch, w_bg)
    assert rel_err(split_bb, tied_bb) > 1e-3


def test_shared_module_reuse(float64_norms):
    model = tiny_model("qwen3", tied=False)
    model.model.layers[1].mlp = model.model.layers[0].mlp
    assert_matches(model, make_batch(), weights(2, 3))


def test_frozen_parameters_excluded(float64_norms):
    model = tiny_model("qwen3", tied=True)
    for name, p in model.named_parameters():
        p.requires_grad_("embed_tokens" in name or "q_norm" in name or "mlp" in name)
    assert_matches(model, make_batch(pad_side="left"), weights(2, 3))
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_diagonal_only_gram_is_the_full_grams_diagonal(dtype):
    """``weighted_gradients(..., diagonal_only=True)``: ``K_bb = ||v_b||²`` as the full Gram's
    diagonal (float64: to 1e-12; lower precision: the same blocked float32 policy, 1e-5), zeros
    off it, and the same ``.grad``."""
    model = tiny_model("qwen3", tied=True).to(dtype)
    batch = make_batch(B=3, G=3, pad_side="left")
    w_bg = weights(3, 3)
    _, full_bb = ghost_weighted(model, batch, w_bg)
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    diag_bb = score_gram(model, *batch, keep_factors=True).weighted_gradients(w_bg, diagonal_only=True)
    assert diag_bb.dtype == torch.float64
    assert rel_err(torch.diagonal(diag_bb), torch.diagonal(full_bb)) < (1e-12 if dtype == torch.float64 else 1e-5)
    assert float((diag_bb - torch.diag_embed(torch.diagonal(diag_bb))).abs().max()) == 0.0
    assert float((full_bb - torch.diag_embed(torch.diagonal(full_bb))).abs().max()) > 0  # cross terms
    for p, g in zip(model.parameters(), full_grads):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_accumulate_false_leaves_grad_and_snr_pieces():
    model = tiny_model("qwen3", tied=False)
    batch = make_batch(B=3, G=3)
    w_bg = weights(3, 3)
    res = score_gram(model, *batch, keep_factors=True)
    gram_bb = res.weighted_gradients(w_bg, accumulate_grad=False)
    assert all(p.grad is None for p in model.parameters())
    _, _, ref_bb = autograd_reference(model, batch, w_bg)
    assert rel_err(gram_bb, ref_bb) < GRAM_TOL
    # K's entry sum is ||Σ_b v_b||²: the squared norm of the accumulated update gradient
    _, again_bb = ghost_weighted(model, batch, w_bg)
    total = sum(float(p.grad.pow(2).sum()) for p in model.parameters())
    assert abs(float(again_bb.sum()) - total) < 1e-10 * total
    pieces = snr_pieces_from_gram(9 * gram_bb)  # u_b = B v_b
    assert float(pieces.trace_cov_hat) >= 0.0


def test_hf_float32_norm_upcast():
    """Unpatched HF RMSNorm (float32 inside): ``.grad`` is exactly ``Σ_bg w_bg s_bg`` from the
    per-sequence scores; autograd's surrogate backward agrees only to float32 rounding."""
    model = tiny_model("qwen3", tied=True)
    batch = make_batch(B=3, G=3, pad_side="left")
    w_bg = weights(3, 3)
    _, gram_bb = ghost_weighted(model, batch, w_bg)
    grads, loop_grads, ref_bb = autograd_reference(model, batch, w_bg)
    assert grad_err(model, loop_grads) < GRAD_TOL
    assert rel_err(gram_bb, ref_bb) < GRAM_TOL
    assert 1e-12 < grad_err(model, grads) < 1e-5  # float32 rounding of w·b inside the norms


def test_bfloat16_close_to_float64():
    import copy

    model64 = tiny_model("qwen3", tied=True)
    model16 = copy.deepcopy(model64).to(torch.bfloat16)
    batch = make_batch()
    w_bg = weights(2, 3)
    _, ref_bb = ghost_weighted(model64, batch, w_bg)
    _, got_bb = ghost_weighted(model16, batch, w_bg)
    assert got_bb.dtype == torch.float64 and rel_err(got_bb, ref_bb) < 0.05
    for p64, p16 in zip(model64.parameters(), model16.parameters()):
        assert p16.grad.dtype == torch.bfloat16
        assert rel_err(p16.grad.double(), p64.grad) < 0.1


def test_without_keep_factors_raises():
    model = tiny_model("qwen3")
    batch = make_batch()
    res = score_gram(model, *batch)
    with pytest.raises(ValueError, match="keep_factors=True"):
        res.weighted_gradients(weights(2, 3))
    loop = score_gram(model, *batch, method="loop")
    with pytest.raises(ValueError, match="keep_factors=True"):
        loop.weighted_gradients(weights(2, 3))
    with pytest.raises(ValueError, match="keep_factors=True needs method='ghost'"):
        score_gram(model, *batch, method="loop", keep_factors=True)
    kept = score_gram(model, *batch, keep_factors=True)
    with pytest.raises(ValueError, match="weights_bg must be a tensor of shape"):
        kept.weighted_gradients(weights(3, 2))
    kept.weighted_gradients(weights(2, 3), accumulate_grad=False)
    with pytest.raises(ValueError, match="already released"):  # one call per pass
        kept.weighted_gradients(weights(2, 3))
    kept2 = score_gram(model, *batch, keep_factors=True)
    kept2.release_factors()
    with pytest.raises(ValueError, match="already released"):
        kept2.weighted_gradients(weights(2, 3))
    assert all(not m._forward_hooks and "forward" not in vars(m) for m in model.modules())


def test_non_finite_weights_raise_after_the_pass_and_clear_the_grads():
    """The finiteness check runs after the pass (no host sync before it on a GPU); the
    gradients it may have filled with NaN are cleared, and the factors are released."""
    model = tiny_model("qwen3")
    kept = score_gram(model, *make_batch(), keep_factors=True)
    w = weights(2, 3)
    w[1, 2] = float("nan")
    with pytest.raises(ValueError, match="weights_bg must be finite"):
        kept.weighted_gradients(w)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="already released"):
        kept.weighted_gradients(weights(2, 3))


def test_parameters_changed_since_the_pass_are_refused():
    """The kept factors (inputs, output gradients, norm weights kept as views) hold only at the
    parameters of the pass: a parameter changed in place afterwards (an optimizer step) is
    refused, naming it, instead of mixing two parameter values."""
    model = tiny_model("qwen3")
    kept = score_gram(model, *make_batch(), keep_factors=True)
    norm = model.model.layers[0].input_layernorm.weight
    with torch.no_grad():
        norm.mul_(1.5)
    with pytest.raises(ValueError, match=r"input_layernorm.weight.*changed in place"):
        kept.weighted_gradients(weights(2, 3))
    assert all(p.grad is None for p in model.parameters())
    fresh = score_gram(model, *make_batch(), keep_factors=True)  # at the new parameters: fine
    fresh.weighted_gradients(weights(2, 3))
    assert norm.grad is not None


@pytest.mark.parametrize("arch", ["qwen3", "gpt2"])  # gpt2: LayerNorm biases and Conv1D biases
def test_small_gradient_panels_split_by_size(arch, float64_norms, monkeypatch):
    """Norm-weight and bias per-sample gradients go through panels of at most ``max_elems``
    entries (``GhostPass.to_panel``); with a small bound there are several panels and the update gradient
    and ``K`` still equal the reference."""
    from oblr_theory.per_sample import GhostPass

    panels = []
    flush = GhostPass._flush_panel

    def counting_flush(self):
        panels.append(len(self._pending))
        flush(self)

    monkeypatch.setattr(GhostPass, "_flush_panel", counting_flush)
    model = tiny_model(arch, tied=True)
    assert_matches(model, make_batch(B=2, G=3), weights(2, 3, seed=3), max_elems=400)
    sizes = [n for n in panels if n]
    assert len(sizes) >= 3 and sum(sizes) > len(sizes)  # several panels, most with many members


def _spy_stacks(monkeypatch):
    """Record each stack ``_add_stack`` adds: the names of the members that got a gradient."""
    from oblr_theory.per_sample import GhostPass

    stacks = []
    add = GhostPass._add_stack

    def spying_add(self, sid):
        stacks.append(sorted(use.name.split(".")[-1] for use, _, _ in self._arrived[sid]))
        add(self, sid)

    monkeypatch.setattr(GhostPass, "_add_stack", spying_add)
    return stacks


@pytest.mark.parametrize("arch", ["qwen3", "llama"])  # llama: stacked members with biases
def test_layers_fed_one_input_are_stacked(arch, float64_norms, monkeypatch):
    """q/k/v and gate/up (one input each) are added as one stacked weight (``_stack_of``), in
    the Gram pass and in the weighted pass, and still give autograd's gradient and the loop's K;
    ``max_elems=1`` also splits a stack's weighted pass into one row per chunk."""
    stacks = _spy_stacks(monkeypatch)
    model = tiny_model(arch, tied=False)
    for kw in ({}, {"max_elems": 1}):
        stacks.clear()
        assert_matches(model, make_batch(B=2, G=3, pad_side="left"), weights(2, 3), **kw)
        assert sorted(stacks) == sorted(2 * [["gate_proj", "up_proj"], ["k_proj", "q_proj", "v_proj"]])


def test_stack_member_without_gradient(float64_norms, monkeypatch):
    """A stacked layer whose output the loss never uses (``up_proj`` called, then dropped) gets
    no gradient; its partner's contribution is still added (in ``finalize``), exactly."""
    import types

    stacks = _spy_stacks(monkeypatch)
    model = tiny_model("qwen3", tied=False)
    mlp = model.model.layers[0].mlp

    def mlp_dropping_up(self, x):
        self.up_proj(x)  # computed and dropped
        return self.down_proj(self.act_fn(self.gate_proj(x)))

    mlp.forward = types.MethodType(mlp_dropping_up, mlp)
    batch, w_bg = make_batch(B=2, G=3), weights(2, 3)
    res, gram_bb = ghost_weighted(model, batch, w_bg)
    assert ["gate_proj"] in stacks
    assert mlp.up_proj.weight.grad is None
    mlp.up_proj.weight.grad = torch.zeros_like(mlp.up_proj.weight)  # autograd's: zero
    grads, loop_grads, ref_bb = autograd_reference(model, batch, w_bg)
    assert grad_err(model, grads) < GRAD_TOL and grad_err(model, loop_grads) < GRAD_TOL
    assert rel_err(gram_bb, ref_bb) < GRAM_TOL
    for diag in (False, True):
        ghost = score_gram(model, *batch, method="ghost", diagonal_only=diag).sq_norms_bg
        loop = score_gram(model, *batch, method="loop").sq_norms_bg
        assert rel_err(ghost, loop) < GRAM_TOL


def test_embedding_padding_idx(float64_norms):
    """``padding_idx`` on a token that occurs: its embedding row gets no gradient, the tied head's
    row does; the update gradient and K still equal the references."""
    model = tiny_model("qwen3", tied=True)
    batch = make_batch(B=2, G=3, pad_side="left")
    model.model.embed_tokens.padding_idx = int(batch[0][0, 0, -1])  # a completion token
    assert_matches(model, batch, weights(2, 3))
