"""Helpers for the bridge tests: tiny seeded Hugging Face causal LMs and padded (B, G, T) batches,
the built-in task with its tiny Qwen3, and sampled bandit outcomes."""

import numpy as np
import pytest

from oblr_theory import montecarlo

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from oblr_theory.bridge.models import tiny_qwen3  # noqa: E402
from oblr_theory.bridge.task import ArithmeticTask, CharTokenizer  # noqa: E402

VOCAB = 53


def tiny_model(arch="qwen3", tied=True, dtype=torch.float64, seed=0):
    """A tiny random causal LM in eval mode; weights jittered so norms are not all ones."""
    torch.manual_seed(seed)
    if arch == "qwen3":
        cfg = transformers.Qwen3Config(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, tie_word_embeddings=tied,
        )
    elif arch == "llama":
        cfg = transformers.LlamaConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=tied,
            attention_bias=True, mlp_bias=True,
        )
    elif arch == "gpt2":
        cfg = transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
            tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0,
        )
    else:
        raise ValueError(arch)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def make_batch(B=2, G=3, prompt_len=4, max_completion=6, pad_side="right", extra_pad=0, seed=1):
    """Groups share a prompt; completions have random lengths >= 1; padded to a common T.

    Returns (input_ids, attention_mask, completion_mask) of shape (B, G, T), long tensors.
    The real tokens of each sequence depend only on the seed, not on padding choices.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        prompt = torch.randint(0, VOCAB, (prompt_len,), generator=gen)
        group = []
        for _ in range(G):
            n = int(torch.randint(1, max_completion + 1, (1,), generator=gen))
            group.append((prompt, torch.randint(0, VOCAB, (n,), generator=gen)))
        rows.append(group)
    T = prompt_len + max_completion + extra_pad
    ids = torch.zeros(B, G, T, dtype=torch.long)
    attn = torch.zeros(B, G, T, dtype=torch.long)
    comp = torch.zeros(B, G, T, dtype=torch.long)
    for b, group in enumerate(rows):
        for g, (prompt, completion) in enumerate(group):
            seq = torch.cat([prompt, completion])
            L = seq.numel()
            start = 0 if pad_side == "right" else T - L
            ids[b, g, start : start + L] = seq
            attn[b, g, start : start + L] = 1
            comp[b, g, start + prompt_len : start + L] = 1
    return ids, attn, comp


def rel_err(x, y):
    return float((x - y).abs().max() / y.abs().max().clamp(min=1e-300))


def sampled_bandit(problem, M, G, seed):
    """M·G i.i.d. outcomes per prompt (the library's sampler, ``montecarlo.sample_groups``):
    rewards, S, lengths (=1), scores' Gram, per prompt."""
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("r", "S", "ell", "gram")}
    for x in range(problem.num_prompts):
        g = montecarlo.sample_groups(problem, np.full(M, x), G, rng)  # M groups of G
        s = g.scores.reshape(M * G, -1)
        cols["r"].append(g.rewards.reshape(-1))
        cols["S"].append(g.sq_norms.reshape(-1))
        cols["ell"].append(g.lengths.reshape(-1).astype(float))
        cols["gram"].append(s @ s.T)
    return {k: np.stack(v) for k, v in cols.items()}


TOK = CharTokenizer()  # the built-in task's tokenizer and task
TASK = ArithmeticTask()


def task_model64():
    """The tiny Qwen3 of the built-in task's tokenizer, float64, seeded, in eval mode."""
    return tiny_qwen3(TOK, seed=3, dtype=torch.float64).eval()


# ------------------------------------------------------------------ tolerances from the arithmetic
from tolerances import U as U64  # noqa: E402  (float64 unit roundoff; the core tests' bounds)


def chain_length(model, T):
    """Terms summed along the longest chain of accumulations in one forward pass of a decoder LM
    at ``T`` positions: per layer the attention projections (3 × hidden: q/k/v in, o out), the
    scores and the mixing (head_dim, T), the MLP (hidden, intermediate); then the output layer
    (hidden) and the softmax's normaliser (vocab). A backward pass has the same chain reversed."""
    c = model.config
    h = getattr(c, "hidden_size", None) or c.n_embd
    L = getattr(c, "num_hidden_layers", None) or c.n_layer
    heads = getattr(c, "num_attention_heads", None) or c.n_head
    hd = getattr(c, "head_dim", None) or h // heads
    inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * h
    return L * (3 * h + hd + T + h + inter) + h + c.vocab_size


def roundoff_tol(n, condition=1.0, u=U64):
    """Bound on the relative error of a computation whose accumulations sum ``n`` terms along its
    longest chain: ``γ_n · condition``, ``γ_n = n u / (1 − n u)`` (``tests/tolerances.gamma`` for
    float64; ``u`` = 2⁻²⁴ for float32), where ``condition = Σ|terms| / |result|`` covers
    cancellation (Higham, Accuracy and Stability of Numerical Algorithms, §3.1). Any summation
    order obeys it, so it holds whatever CPU kernels (ATEN_CPU_CAPABILITY) run."""
    return n * u / (1 - n * u) * condition
