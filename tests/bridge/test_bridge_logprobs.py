"""Completion log-probs (oblr_theory.bridge.logprobs) against a naive gather(log_softmax)."""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bridge_helpers import chain_length, make_batch, roundoff_tol, tiny_model  # noqa: E402
from oblr_theory.bridge.models import make_float64_exact  # noqa: E402
from oblr_theory.bridge.logprobs import (  # noqa: E402
    check_inputs,
    logit_proxy_from_logits,
    position_ids_from_mask,
    sequence_logprobs,
)


def naive_token_logprobs(model, ids_bgt, attn_bgt, comp_bgt):
    """One unpadded sequence at a time: log_softmax(logits)[t-1, y_t] on completion tokens."""
    out = torch.zeros(ids_bgt.shape, dtype=torch.float64)
    B, G, T = ids_bgt.shape
    for b in range(B):
        for g in range(G):
            keep = attn_bgt[b, g].bool()
            seq = ids_bgt[b, g][keep].unsqueeze(0)
            with torch.no_grad():
                logp = model(input_ids=seq).logits.log_softmax(-1)[0]  # (L, V)
            tok = logp[:-1].gather(-1, seq[0, 1:, None])[:, 0]
            full = torch.zeros(T, dtype=torch.float64)
            pos = keep.nonzero()[:, 0]
            full[pos[1:]] = tok.double()
            out[b, g] = torch.where(comp_bgt[b, g].bool(), full, torch.zeros_like(full))
    return out


@pytest.mark.parametrize("arch", ["qwen3", "gpt2"])
@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_logprobs_match_naive_gather(arch, pad_side):
    # float64 throughout (HF's RMSNorm would round to float32, whose rounding can flip between
    # two float64 routes that differ in the last bit: 1e-7, not float64's rounding)
    model = make_float64_exact(tiny_model(arch))
    ids, attn, comp = make_batch(pad_side=pad_side, extra_pad=2)
    with torch.no_grad():
        res = sequence_logprobs(model, ids, attn, comp)
        # log π = z_y − logsumexp(z): an error of eps·max|z| in each logit, eps one forward
        # chain (padded and unpadded rows may take other kernels, with other orders)
        zmax = float(model(input_ids=ids.flatten(0, 1)).logits.abs().max())
    ref = naive_token_logprobs(model, ids, attn, comp)
    assert res.token_logp_bgt.dtype == torch.float64
    atol = 2 * roundoff_tol(chain_length(model, ids.shape[-1]), max(1.0, zmax))
    torch.testing.assert_close(res.token_logp_bgt, ref, rtol=0, atol=atol)
    torch.testing.assert_close(res.seq_logp_bg, ref.sum(-1), rtol=0, atol=ids.shape[-1] * atol)
    assert torch.equal(res.lengths_bg, comp.sum(-1))


def test_logprobs_differentiable_and_float32():
    model = tiny_model("qwen3", dtype=torch.float32)
    ids, attn, comp = make_batch()
    res = sequence_logprobs(model, ids, attn, comp)
    assert res.seq_logp_bg.dtype == torch.float32 and res.seq_logp_bg.requires_grad
    res.seq_logp_bg.sum().backward()
    assert model.lm_head.weight.grad is not None


def test_logit_proxy_matches_formula():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5), generator=gen)
    comp = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    got = logit_proxy_from_logits(logits, ids, comp)
    pi = logits.softmax(-1)
    want = torch.zeros(2, dtype=torch.float64)
    for n in range(2):
        for t in range(1, 5):
            if comp[n, t]:
                e = torch.zeros(7, dtype=torch.float64)
                e[ids[n, t]] = 1.0
                want[n] += ((e - pi[n, t - 1]) ** 2).sum()
    # positive terms: the softmax (V terms), V squares per position, T positions (float64)
    torch.testing.assert_close(got, want, rtol=roundoff_tol(2 * 7 + 5 + 4), atol=0)


def test_position_ids_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda i, a, c: (i[0], a, c), "input_ids"),
        (lambda i, a, c: (i, a[..., :-1], c), "attention_mask"),
        (lambda i, a, c: (i, a, c[:1]), "completion_mask"),
        (lambda i, a, c: (i, a * 2, c), "attention_mask"),
        (lambda i, a, c: (i.float(), a, c), "input_ids"),
    ],
)
def test_bad_shapes_and_values_raise(mutate, match):
    ids, attn, comp = make_batch()
    with pytest.raises(ValueError, match=match):
        check_inputs(*mutate(ids, attn, comp))


def test_bad_masks_raise():
    ids, attn, comp = make_batch(pad_side="left")
    comp_empty = comp.clone()
    comp_empty[1, 2] = 0
    with pytest.raises(ValueError, match=r"completion_mask has no completion token.*\(1, 2\)"):
        check_inputs(ids, attn, comp_empty)
    comp_out = comp.clone()
    comp_out[0, 0, 0] = 1  # left padding: position 0 is padding
    with pytest.raises(ValueError, match="completion_mask marks tokens outside attention_mask"):
        check_inputs(ids, attn, comp_out)
    ids_r, attn_r, comp_r = make_batch(pad_side="right")
    comp_r[0, 1, 0] = 1
    with pytest.raises(ValueError, match="completion_mask marks position 0"):
        check_inputs(ids_r, attn_r, comp_r)


def test_import_is_lazy():
    code = (
        "import sys, oblr_theory, oblr_theory.bridge; "
        "assert 'torch' not in sys.modules, 'torch imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_logit_proxy_at_a_temperature_is_the_logit_score_norm():
    """T8's proxy at ``τ``: ``Σ_t ||∂ log softmax(z_t/τ)[y_t] / ∂z_t||²`` by autograd on the logits
    (``(1 − 2π_y + ||π||²)/τ²`` per token); negative control: ``τ = 1`` differs."""
    model = make_float64_exact(tiny_model("qwen3"))
    ids, attn, comp = make_batch(pad_side="right")
    flat = [x.flatten(0, 1) for x in (ids, attn, comp)]
    with torch.no_grad():
        logits = model(input_ids=flat[0], attention_mask=flat[1]).logits
    z = logits.clone().requires_grad_(True)
    tau = 0.6
    logp = (z[:, :-1] / tau).log_softmax(-1).gather(-1, flat[0][:, 1:, None])[..., 0]
    mask = flat[2][:, 1:].bool()
    ref = torch.zeros(z.shape[0], dtype=torch.float64)
    for n in range(z.shape[0]):
        for t in mask[n].nonzero()[:, 0].tolist():
            (g,) = torch.autograd.grad(logp[n, t], z, retain_graph=True)
            ref[n] += float(g.pow(2).sum())
    got = logit_proxy_from_logits(logits, flat[0], flat[2].bool(), temperature=tau)
    # per token ≤ 3 terms of size ≤ 2/τ² each, over ≤ T tokens: far inside 1e-12 relative
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    assert not torch.allclose(logit_proxy_from_logits(logits, flat[0], flat[2].bool()), ref, rtol=1e-3)
