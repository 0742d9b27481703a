"""score_gram(..., diagonal_only=True): the ghost pass's per-sample squared norms alone.

Float64 tiny models; "equal" means 1e-9 relative to the largest entry. The diagonal must match the
loop reference's Gram diagonal for every parameter type the full ghost Gram supports (Linear with
and without bias, Conv1D, embeddings, norms, the tied embedding / LM head with its cross term,
a module reused twice), with either linear route, and must keep ``keep_factors`` working.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bridge_helpers import make_batch, rel_err, tiny_model  # noqa: E402
from oblr_theory.bridge import score_gram  # noqa: E402
from oblr_theory.per_sample.rules.linear import prefer_ghost, prefer_ghost_diagonal  # noqa: E402

TOL = 1e-9


def loop_diag(model, batch):
    return torch.diagonal(score_gram(model, *batch, method="loop").gram_bgg, dim1=1, dim2=2)


@pytest.mark.parametrize(
    "arch, tied, route",
    [
        ("qwen3", True, "auto"),
        ("qwen3", True, "ghost"),
        ("qwen3", True, "materialise"),
        ("qwen3", False, "ghost"),
        ("qwen3", False, "materialise"),
        ("llama", False, "auto"),  # Linear biases
        ("gpt2", True, "auto"),  # Conv1D, LayerNorm with bias, position embedding, tied head
        ("gpt2", True, "materialise"),
    ],
)
def test_diagonal_equals_loop_diagonal(arch, tied, route):
    model = tiny_model(arch, tied=tied)
    batch = make_batch(pad_side="left", extra_pad=1)
    diag = score_gram(model, *batch, method="ghost", route=route, diagonal_only=True)
    full = score_gram(model, *batch, method="ghost", route=route)
    ref = loop_diag(model, batch)
    assert diag.diagonal_only and not full.diagonal_only
    assert diag.gram_bgg.shape == (2, 3, 3) and diag.gram_bgg.dtype == torch.float64
    assert rel_err(diag.sq_norms_bg, ref) < TOL
    assert rel_err(diag.sq_norms_bg, full.sq_norms_bg) < TOL
    off = diag.gram_bgg - torch.diag_embed(diag.sq_norms_bg)
    assert bool((off == 0).all()), "diagonal_only documents zeros off the diagonal"
    torch.testing.assert_close(diag.seq_logp_bg, full.seq_logp_bg, rtol=0, atol=0)


def test_tied_diagonal_needs_the_cross_term():
    """||E_n + H_n||² ≠ ||E_n||² + ||H_n||²: the diagonal keeps 2⟨E_n, H_n⟩."""
    model = tiny_model("qwen3", tied=True)
    batch = make_batch()
    tied = score_gram(model, *batch, diagonal_only=True).sq_norms_bg
    untied = tiny_model("qwen3", tied=True)
    with torch.no_grad():
        untied.lm_head.weight = torch.nn.Parameter(untied.model.embed_tokens.weight.clone())
    split = score_gram(untied, *batch, diagonal_only=True).sq_norms_bg
    assert rel_err(tied, split) > 1e-3
    assert rel_err(tied, loop_diag(model, batch)) < TOL


def test_shared_module_reuse_diagonal():
    """A module called twice: the per-sample gradients of both calls are summed first."""
    model = tiny_model("qwen3", tied=False)
    model.model.layers[1].mlp = model.model.layers[0].mlp
    batch = make_batch()
    diag = score_gram(model, *batch, diagonal_only=True).sq_norms_bg
    assert rel_err(diag, loop_diag(model, batch)) < TOL


@pytest.mark.parametrize("tied", [True, False])
def test_diagonal_with_keep_factors_gives_the_same_update(tied):
    """keep_factors works with diagonal_only: weighted_gradients' grad and B × B Gram are the
    same as from the full ghost pass."""
    batch = make_batch()
    out = {}
    for diagonal_only in (False, True):
        model = tiny_model("qwen3", tied=tied)
        sg = score_gram(model, *batch, keep_factors=True, diagonal_only=diagonal_only)
        w_bg = torch.linspace(-1, 1, sg.seq_logp_bg.numel(), dtype=torch.float64).reshape(
            sg.seq_logp_bg.shape)
        K = sg.weighted_gradients(w_bg)
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
        out[diagonal_only] = (K, grads, sg.sq_norms_bg)
    for a, b in zip(out[False], out[True]):
        assert rel_err(b, a) < TOL


def test_diagonal_only_needs_ghost():
    model = tiny_model("qwen3", tied=True)
    with pytest.raises(ValueError, match="diagonal_only"):
        score_gram(model, *make_batch(), method="loop", diagonal_only=True)


def test_diagonal_route_choice_uses_the_per_sample_cost():
    """The diagonal's rule has no G: ghost iff T²(d_in + d_out) < (T + 1) d_in d_out."""
    assert prefer_ghost_diagonal(64, 256, 768)  # 64²·1024 < 65·256·768: ghost
    assert not prefer_ghost_diagonal(512, 64, 64)  # long sequences, small layer: materialise
    # the full Gram pays G² pairs: at G = 8 it materialises where the diagonal stays ghost
    assert not prefer_ghost(8, 128, 256, 768) and prefer_ghost_diagonal(128, 256, 768)


def _ghost_bound_bf16(a_ntd, b_nto):
    """Exact ``S_n = Σ_{t,t'} Ka Kb`` (float64, from the bf16 factors) and a rigorous bound on
    the ghost diagonal's error in bf16 arithmetic, per sample (N,).

    The ghost rule rounds three times per term: ``Ka = a aᵀ`` and ``Kb = b bᵀ`` leave their
    matmuls (float32 accumulation over ``d_in`` / ``d_out`` products) rounded to bf16, and their
    product is rounded to bf16; the ``T`` terms of a row are summed in float32. With bf16 unit
    roundoff ``u = 2^-8`` and ``γ_k = k 2^-24 / (1 − k 2^-24)`` (float32 sums of ``k`` terms):

        |Ŝ_n − S_n| ≤ (1 + u)³ (1 + γ_T) Σ_{t,t'} (|Ka| + γ_din Na)(|Kb| + γ_dout Nb) − Σ |Ka||Kb|,

    ``Na[t, t'] = ||a_t|| ||a_t'||`` (and ``Nb``) bounding the float32 accumulation errors. This
    holds for any order of accumulation, so on any CPU kernel."""
    u = 2.0**-8

    def gamma(k):
        return k * 2.0**-24 / (1 - k * 2.0**-24)

    a, b = a_ntd.double(), b_nto.double()
    ka, kb = a @ a.transpose(1, 2), b @ b.transpose(1, 2)
    na = a.norm(dim=-1)
    nb = b.norm(dim=-1)
    na_tt, nb_tt = na.unsqueeze(2) * na.unsqueeze(1), nb.unsqueeze(2) * nb.unsqueeze(1)
    T, d_in, d_out = a.shape[1], a.shape[2], b.shape[2]
    wide = ((ka.abs() + gamma(d_in) * na_tt) * (kb.abs() + gamma(d_out) * nb_tt)).sum((1, 2))
    bound = (1 + u) ** 3 * (1 + gamma(T)) * wide - (ka.abs() * kb.abs()).sum((1, 2))
    return (ka * kb).sum((1, 2)), bound


def test_bfloat16_ghost_diagonal_within_its_rounding_bound(monkeypatch):
    """On a bf16 model, each linear weight's ghost diagonal (bf16 kernels, their products rounded
    once, float32 sums) is within the bound derived from bf16 and float32 unit roundoff
    (``_ghost_bound_bf16``) of the exact ``S_n`` of the same factors. The bound is tight enough to
    matter: below ``12 u S_n`` on every layer here, so an error of that size (e.g. a kernel
    rounded four more times, or one term in ``1/(12u) ≈ 21`` of the sum lost) would fail."""
    import copy

    from oblr_theory.per_sample.rules import linear

    seen = []
    original = linear.linear_sq_norm_parts

    def recording(a_bgtd, b_bgto, max_elems, route, ka_of=None):
        dots, norms = original(a_bgtd, b_bgto, max_elems, route, ka_of)
        N = a_bgtd.shape[0] * a_bgtd.shape[1]
        seen.append((a_bgtd.reshape(N, -1, a_bgtd.shape[-1]),
                     b_bgto.reshape(N, -1, b_bgto.shape[-1]), dots))
        return dots, norms

    monkeypatch.setattr(linear, "linear_sq_norm_parts", recording)
    model16 = copy.deepcopy(tiny_model("qwen3", tied=True)).to(torch.bfloat16)
    batch = make_batch(B=2, G=3, max_completion=24)
    score_gram(model16, *batch, method="ghost", route="ghost", diagonal_only=True)
    assert len(seen) >= 6  # every linear weight (stacks count once)
    u = 2.0**-8
    for a_ntd, b_nto, dots in seen:
        assert len(dots) == 1
        got = dots[0].double().sum(-1)
        exact, bound = _ghost_bound_bf16(a_ntd, b_nto)
        assert bool(((got - exact).abs() <= bound).all())
        assert bool((bound < 12 * u * exact.abs()).all())


@pytest.mark.parametrize("tied", [True, False])
def test_embedding_padding_idx(tied):
    """An embedding's ``padding_idx`` row gets no gradient (its output gradient is dropped at
    those tokens, ``_embedding_grad``): the diagonal, the full Gram and the loop agree, and
    differ from the same model without ``padding_idx``. The index is a token that occurs in the
    sequences (padded positions get no gradient anyway)."""
    model = tiny_model("qwen3", tied=tied)
    batch = make_batch(pad_side="left", extra_pad=2)
    without = score_gram(model, *batch, method="ghost", diagonal_only=True).sq_norms_bg
    model.model.embed_tokens.padding_idx = int(batch[0][0, 0, -1])  # a completion token
    diag = score_gram(model, *batch, method="ghost", diagonal_only=True).sq_norms_bg
    full = score_gram(model, *batch, method="ghost").sq_norms_bg
    ref = loop_diag(model, batch)
    assert rel_err(diag, ref) < TOL and rel_err(full, ref) < TOL
    assert rel_err(without, ref) > 1000 * TOL  # far outside the equality tolerance
