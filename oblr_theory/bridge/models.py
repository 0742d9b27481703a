"""Models for the bridge: a tiny Qwen3 built locally, or a local Hugging Face checkpoint.

- :func:`tiny_qwen3` builds a Qwen3 causal LM from a config (random weights, seeded) sized for
  the built-in arithmetic task; :func:`pretrain` trains it briefly by supervised next-token
  prediction on correct answers, so that rewards are neither all 0 nor all 1 (a fixed ``θ``
  with reward variance is what the theory-vs-practice checks need).
- :func:`qwen3_shaped` gives the published Qwen3 shapes (0.6B, 1.7B, 4B, 8B) with random weights
  and any vocabulary, for benchmarks on a GPU without downloads.
- :func:`load_local` loads a local checkpoint directory (``--model PATH``) with safetensors only
  and no network (``use_safetensors=True, local_files_only=True``), on the requested device in
  the requested dtype (default: a visible GPU, and the checkpoint's own dtype). What it cannot
  load right (a hub name with no local files, pickle-only weights, no tokenizer, a model that is
  not a causal LM, a tokenizer larger than the embedding, a large model without a GPU) gets a
  one-line error with the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .task import ArithmeticTask, CharTokenizer, as_task_tokenizer

__all__ = ["TinyQwen3Spec", "tiny_qwen3", "qwen3_shaped", "QWEN3_SHAPES", "pretrain",
           "load_local", "load_model", "param_count", "LARGE_MODEL_PARAMS", "make_float64_exact",
           "DTYPES", "resolve_dtype", "resolve_device", "supervised_batch"]

#: A model above this many parameters needs a GPU (loading it in fp32 on a CPU is refused).
LARGE_MODEL_PARAMS = 1_000_000_000

#: Published Qwen3 dense shapes: hidden, layers, heads, kv heads, head dim, MLP width, tied.
QWEN3_SHAPES = {
    "0.6B": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072, tie_word_embeddings=True),
    "1.7B": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=6144, tie_word_embeddings=True),
    "4B": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, intermediate_size=9728, tie_word_embeddings=True),
    "8B": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, intermediate_size=12288, tie_word_embeddings=False),
}


@dataclass(frozen=True)
class TinyQwen3Spec:
    """Shape of the default tiny Qwen3 (tied embeddings, as in small Qwen3 models)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 64


def make_float64_exact(model):
    """Make a float64 model float64 throughout: Hugging Face's RMSNorm computes in float32 even
    for float64 inputs, which caps agreement between two exact computations at ~1e-7. Asks each
    module's per-sample rule (``oblr_theory.per_sample.rules``) for a same-dtype forward
    (``exact_forward``: the norm rules give one for an RMSNorm, same formula, checked against
    the module's own forward) and rebinds ``forward`` where there is one. Returns ``model``.
    """
    from ..per_sample.rules import rule_for

    for mod in model.modules():
        rule = rule_for(mod)
        forward = rule.exact_forward(mod) if rule is not None else None
        if forward is not None:
            mod.forward = forward
    return model


def param_count(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def _qwen3(vocab_size: int, pad: int, eos: int, seed: int, dtype, device="cpu", **shape):
    """A seeded Qwen3 built directly on ``device`` (no CPU copy of a large model)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=vocab_size, pad_token_id=pad, eos_token_id=eos, bos_token_id=None,
                      attention_dropout=0.0, **shape)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(cfg)
    model = model.to(dtype)
    return make_float64_exact(model) if dtype == torch.float64 else model


def tiny_qwen3(tokenizer: CharTokenizer | None = None, spec: TinyQwen3Spec = TinyQwen3Spec(),
               seed: int = 0, dtype=torch.float32):
    """A tiny Qwen3 causal LM with random weights (seeded), vocabulary of ``tokenizer``."""
    tok = tokenizer or CharTokenizer()
    return _qwen3(tok.vocab_size, tok.pad_token_id, tok.eos_token_id, seed, dtype, **spec.__dict__)


def qwen3_shaped(size: str, vocab_size: int, pad: int = 0, eos: int = 1, seed: int = 0,
                 dtype=torch.bfloat16, num_hidden_layers: int | None = None, device="cpu"):
    """A Qwen3 model with a published shape (``QWEN3_SHAPES``) and random weights.

    ``num_hidden_layers`` optionally truncates the depth (same per-layer shape, less time).
    """
    if size not in QWEN3_SHAPES:
        raise ValueError(f"size={size!r} is not one of {sorted(QWEN3_SHAPES)}")
    shape = dict(QWEN3_SHAPES[size], max_position_embeddings=4096)
    if num_hidden_layers is not None:
        shape["num_hidden_layers"] = int(num_hidden_layers)
    return _qwen3(vocab_size, pad, eos, seed, dtype, device=device, **shape)


def _supervised_batch(task: ArithmeticTask, tok, n: int, rng: np.random.Generator, device):
    """``n`` problems of ``task`` as a :func:`supervised_batch`."""
    return supervised_batch(task.sample(n, rng), tok, device)


def supervised_batch(problems, tok, device):
    """Right-padded ``prompt + answer + <eos>`` rows of ``problems``: ``(ids, attention, labels)``,
    each ``(n, T)``, labels only on answer and ``<eos>`` tokens (``-100`` elsewhere)."""
    n = len(problems)
    rows, starts = [], []
    for p in problems:
        prompt = tok.encode(p.prompt)
        rows.append(prompt + tok.encode(p.answer) + [tok.eos_token_id])
        starts.append(len(prompt))
    T = max(map(len, rows))
    ids = torch.full((n, T), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((n, T), -100, dtype=torch.long)
    attn = torch.zeros((n, T), dtype=torch.long)
    for i, (row, s) in enumerate(zip(rows, starts)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, s: len(row)] = torch.tensor(row[s:])
        attn[i, : len(row)] = 1
    return ids.to(device), attn.to(device), labels.to(device)


def pretrain(model, tokenizer, task: ArithmeticTask, steps: int = 150, batch_size: int = 64,
             lr: float = 3e-3, seed: int = 0, progress: bool = False,
             stop_at_reward: float | None = None, check_every: int = 10) -> list[float]:
    """Brief supervised training on correct answers (cross-entropy on answer tokens only).

    Returns the loss per step. Stopping early leaves a policy that is right on some prompts and
    some samples only, i.e. rewards with variance, which the validation needs.
    ``stop_at_reward``: stop once the exact expected reward over all problems
    (:func:`~oblr_theory.bridge.rollout.expected_task_reward`) reaches it (checked every
    ``check_every`` steps), so models of any size end at a comparable policy.
    """
    from .rollout import expected_task_reward

    from tqdm.auto import tqdm

    tok = as_task_tokenizer(tokenizer)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="pretrain", disable=not progress):
        ids, attn, labels = _supervised_batch(task, tok, batch_size, rng, device)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if stop_at_reward is not None and len(losses) % check_every == 0:
            model.eval()
            if float(expected_task_reward(model, tok, task.all_problems()).mean()) >= stop_at_reward:
                break
            model.train()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return losses


def _looks_like_hub_name(path: str) -> bool:
    return not os.path.exists(path) and path.count("/") == 1 and not path.startswith((".", "/", "~"))


#: The dtypes a model can be loaded in, by the names the command line uses.
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def resolve_dtype(dtype) -> torch.dtype | None:
    """``None``, a ``torch.dtype`` of ``DTYPES`` or its name (``"bfloat16"``) -> torch dtype / None."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)} (or None: from the checkpoint)")


def resolve_device(device) -> torch.device:
    """``None`` -> ``cuda`` when a GPU is visible, else ``cpu``; a requested CUDA device must exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but no CUDA GPU is visible "
                         "(use --device cpu, or omit it)")
    return device


#: Tokenizer files of a Hugging Face checkpoint (any one is enough for AutoTokenizer).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model")


def _check_checkpoint_files(path: str) -> None:
    """Refuse, before loading anything, a directory without safetensors weights (pickle-only or
    none) or without a tokenizer."""
    files = set(os.listdir(path))
    if not any(f.endswith(".safetensors") for f in files):
        pickles = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
        if pickles:
            raise ValueError(
                f"model={path!r} has only pickle weights ({', '.join(pickles[:3])}), which can run code "
                "when loaded, so only *.safetensors are loaded; convert once, where you trust the file: "
                "AutoModelForCausalLM.from_pretrained(PATH).save_pretrained(PATH, safe_serialization=True)")
        raise ValueError(f"model={path!r} has no *.safetensors weights; save the model with "
                         "save_pretrained(PATH, safe_serialization=True)")
    if not files & set(TOKENIZER_FILES):
        raise ValueError(f"model={path!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                         "save the model's tokenizer there too: tokenizer.save_pretrained(PATH)")


def _check_causal_config(path: str, cfg) -> None:
    """Refuse a config that AutoModelForCausalLM cannot build as a decoder-only causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kind = getattr(cfg, "model_type", None)
    if getattr(cfg, "is_encoder_decoder", False) or kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"model={path!r} is a {kind!r} model, not a causal (decoder-only) language "
                         "model; the bridge scores Σ_t log π(y_t | y_<t) and needs one, e.g. Qwen3")


def load_local(path: str, device: str | None = None, dtype=None):
    """Load a local Hugging Face checkpoint: ``(model, tokenizer)``, safetensors only, no network.

    ``device``: None gives ``"cuda"`` when a GPU is visible, else ``"cpu"``. ``dtype``
    (``torch.dtype`` or a ``DTYPES`` name): None keeps the checkpoint's own dtype (its config's
    ``dtype``; float32 if it names none). A float64 model computes in float64 throughout
    (:func:`make_float64_exact`). Raises a one-line ValueError with the fix for: a hub name with
    no local files, a directory with pickle weights only or no weights, no tokenizer, a model
    that is not a causal LM (config, then one small forward: ``checks.check_causal``), a tokenizer
    with more tokens than the model's embedding has rows, a model above ``LARGE_MODEL_PARAMS``
    without a GPU, and a requested GPU that is not visible.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .checks import check_causal, vocab_size_of

    path = os.path.expanduser(str(path))
    if not os.path.isdir(path):
        hint = (f" It looks like a hub name: this project loads local files only. Download it "
                f"first, e.g. `hf download {path} --local-dir ./{path.split('/')[-1]}`, then pass "
                f"--model ./{path.split('/')[-1]}") if _looks_like_hub_name(path) else ""
        raise ValueError(f"model={path!r} is not a local checkpoint directory.{hint}")
    _check_checkpoint_files(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    _check_causal_config(path, cfg)
    n_params = _config_params(cfg)
    if n_params > LARGE_MODEL_PARAMS and device.type != "cuda":
        raise ValueError(f"model={path!r} has about {n_params / 1e9:.1f}B parameters and needs a GPU "
                         "(none is visible). Run on a GPU machine, or use the built-in tiny model "
                         "(omit --model)")
    tok = as_task_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
    if dtype is None:
        dtype = resolve_dtype(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
                              or torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, local_files_only=True,
                                                 dtype=dtype)
    model = model.to(device=device, dtype=dtype).eval()
    if dtype == torch.float64:
        make_float64_exact(model)
    rows = vocab_size_of(model)
    if rows is not None and tok.vocab_size > rows:
        raise ValueError(f"model={path!r}: its tokenizer has {tok.vocab_size} tokens but the model's "
                         f"embedding only {rows} rows, so ids >= {rows} would index out of range; use "
                         "the tokenizer saved with these weights (or resize_token_embeddings and save)")
    check_causal(model)
    return model, tok


def _config_params(cfg) -> int:
    """Rough parameter count of a decoder config (embeddings + attention + MLP per layer)."""
    h = getattr(cfg, "hidden_size", 0)
    L = getattr(cfg, "num_hidden_layers", 0)
    inter = getattr(cfg, "intermediate_size", 4 * h)
    V = getattr(cfg, "vocab_size", 0)
    emb = V * h * (1 if getattr(cfg, "tie_word_embeddings", False) else 2)
    return int(emb + L * (4 * h * h + 3 * h * inter))


def load_model(model: str | None, task: ArithmeticTask, seed: int = 0, pretrain_steps: int = 150,
               device: str | None = None, dtype=None, progress: bool = False):
    """``(model, tokenizer)`` for a model spec, on ``device`` in ``dtype`` (``torch.dtype`` or a
    ``DTYPES`` name):

    - ``None`` / ``"tiny"``: the tiny Qwen3, pretrained for ``pretrain_steps`` steps (in float32),
      then cast to ``dtype``; defaults ``"cpu"`` and float32;
    - ``"shape:0.6B"`` (any ``QWEN3_SHAPES`` key, optionally ``"shape:0.6B:4"`` for 4 layers): a
      Qwen3-shaped model with the character vocabulary, pretrained until its expected reward
      reaches 0.3 (checked every 2 steps, at most ``pretrain_steps`` steps, AdamW lr 1e-4);
      same defaults;
    - a local checkpoint directory: :func:`load_local` (no pretraining; defaults: a visible GPU,
      else the CPU, and the checkpoint's own dtype).
    """
    if model in (None, "tiny") or str(model).startswith("shape:"):
        device = torch.device("cpu") if device is None else resolve_device(device)
        dtype = resolve_dtype(dtype) or torch.float32
        tok = CharTokenizer()
        if model in (None, "tiny"):
            m = tiny_qwen3(tok, seed=seed, dtype=torch.float32).to(device)
            kw = dict(lr=3e-3)
        else:
            parts = str(model).split(":")
            layers = int(parts[2]) if len(parts) > 2 else None
            m = qwen3_shaped(parts[1], tok.vocab_size, tok.pad_token_id, tok.eos_token_id, seed=seed,
                             dtype=torch.float32, num_hidden_layers=layers, device=device)
            kw = dict(lr=1e-4, stop_at_reward=0.3, check_every=2)
        if pretrain_steps > 0:
            pretrain(m, tok, task, steps=pretrain_steps, seed=seed, progress=progress, **kw)
        m = m.to(dtype)
        if dtype == torch.float64:
            make_float64_exact(m)
        return m.eval(), tok
    return load_local(model, device=device, dtype=dtype)
