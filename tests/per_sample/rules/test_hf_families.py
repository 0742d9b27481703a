"""Ghost == loop on tiny random Hugging Face causal LMs of several families, built from their
configs (float64, HF's float32 RMSNorm replaced by the same formula in float64 through the
rules' ``exact_forward``), "equal" meaning 1e-9 relative to the largest entry.

Gemma (``y = x̂ ⊙ (1 + w)`` RMSNorm: ``offset_norm.py``) and Gemma 3 (also a scaled embedding
``y = s E[i]``: ``scaled_embedding.py``) need the two rules added for them; each test shows that
without its rule the pass refuses, rather than returning a wrong Gram.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bridge_helpers import VOCAB, make_batch, rel_err  # noqa: E402
from oblr_theory.bridge import score_gram  # noqa: E402
from oblr_theory.bridge.models import make_float64_exact  # noqa: E402
from oblr_theory.per_sample import rules  # noqa: E402

TOL = 1e-9
SHAPE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)
FAMILIES = {
    "mistral": ("MistralConfig", dict(head_dim=8)),
    "qwen2": ("Qwen2Config", {}),
    "phi3": ("Phi3Config", {}),
    "olmo2": ("Olmo2Config", {}),
    "gemma": ("GemmaConfig", dict(head_dim=8)),
    "gemma2": ("Gemma2Config", dict(head_dim=8)),
    "gemma3": ("Gemma3TextConfig", dict(head_dim=8)),
}


def tiny_family(family, tied=True, seed=0):
    """A tiny random ``family`` causal LM, float64, eval mode, weights jittered (so that norm
    weights are not all equal), its RMSNorms float64 throughout."""
    name, extra = FAMILIES[family]
    cfg = getattr(transformers, name)(**SHAPE, **extra, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return make_float64_exact(model)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ghost_equals_loop(family):
    model = tiny_family(family)
    batch = make_batch(extra_pad=1)  # right padding: with left padding Gemma 2 gives NaN
    # log-probs in its own forward (the loop method too)
    loop = score_gram(model, *batch, method="loop").gram_bgg
    assert bool((torch.diagonal(loop, dim1=1, dim2=2) > 0).all())
    ghost = score_gram(model, *batch, method="ghost").gram_bgg
    diag = score_gram(model, *batch, method="ghost", diagonal_only=True).sq_norms_bg
    assert rel_err(ghost, loop) < TOL
    assert rel_err(diag, torch.diagonal(loop, dim1=1, dim2=2)) < TOL


@pytest.mark.parametrize("family", ["gemma3", "olmo2"])
def test_weighted_gradients_equal_autograd(family):
    """From the kept factors: ``.grad`` is autograd's ``∇ Σ_bg w_bg seq_logp_bg`` and ``K_bc``
    the Gram of the per-group gradients ``v_b = ∇ Σ_g w_bg seq_logp_bg``."""
    from oblr_theory.bridge.logprobs import sequence_logprobs

    model = tiny_family(family, tied=family == "gemma3")
    batch = make_batch()
    w_bg = torch.randn(2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gram_bb = score_gram(model, *batch, method="ghost", keep_factors=True).weighted_gradients(w_bg)
    got = [p.grad for p in model.parameters()]
    params = list(model.parameters())
    with torch.enable_grad():
        seq_bg = sequence_logprobs(model, *batch).seq_logp_bg
        v_b = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            (w_bg[b] * seq_bg[b]).sum(), params, retain_graph=True)]) for b in range(2)]
    total = v_b[0] + v_b[1]
    assert rel_err(torch.cat([g.reshape(-1) for g in got]), total) < TOL
    v_bk = torch.stack(v_b)
    assert rel_err(gram_bb, v_bk @ v_bk.T) < TOL


def test_gemma_norm_needs_the_offset_rule(monkeypatch):
    """Without ``OffsetNormRule`` no rule matches Gemma's RMSNorm: refused by name."""
    model = tiny_family("gemma")
    monkeypatch.setattr(rules, "RULES", tuple(r for r in rules.RULES
                                              if type(r).__name__ != "OffsetNormRule"))
    with pytest.raises(ValueError, match=r"GemmaRMSNorm\).*no rule"):
        score_gram(model, *make_batch())


def test_gemma3_embedding_needs_the_scaled_rule(monkeypatch):
    """Without ``ScaledEmbeddingRule`` the plain embedding rule would read ``b`` at the scaled
    output and be wrong by ``s²`` on the embedding's part of the Gram: its first-call check
    refuses instead. The scale is not 1 here, so the check can fail."""
    model = tiny_family("gemma3")
    assert float(model.model.embed_tokens.embed_scale) != 1.0
    monkeypatch.setattr(rules, "RULES", tuple(r for r in rules.RULES
                                              if type(r).__name__ != "ScaledEmbeddingRule"))
    with pytest.raises(ValueError, match=r"embed_tokens.*does not return y = E\[ids\]"):
        score_gram(model, *make_batch())
