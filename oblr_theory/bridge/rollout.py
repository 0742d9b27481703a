"""Rollouts for the bridge: ``B`` prompts with ``G`` sampled completions each, with their masks and
rewards (HF ``generate``, seeded; plain ancestral sampling at temperature 1 unless asked, so the
samples follow ``π_θ`` exactly and T1 applies), and the exact expected reward of the built-in
task (teacher forcing). Inputs to one update (:mod:`oblr_theory.bridge.step`) and to the
validation (:mod:`oblr_theory.bridge.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .logprobs import sequence_logprobs
from .task import ArithmeticTask, Problem, as_task_tokenizer

__all__ = ["Rollout", "encode_prompts", "completion_masks", "sample_rollout", "sampling_config",
           "expected_task_reward", "answer_inputs"]


@dataclass
class Rollout:
    """A batch of ``B`` prompts with ``G`` sampled completions each.

    input_ids_bgt / attention_bgt / completion_bgt: (B, G, T) prompt + completion, left-padded
    prompts, right padding after ``<eos>``; ``completion_bgt`` marks the scored tokens (the
    completion up to and including its first ``<eos>``). rewards_bg: (B, G) float64.
    """

    problems: list
    input_ids_bgt: torch.Tensor
    attention_bgt: torch.Tensor
    completion_bgt: torch.Tensor
    texts_bg: list
    rewards_bg: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.input_ids_bgt.shape)

    @property
    def lengths_bg(self) -> torch.Tensor:
        return self.completion_bgt.sum(-1)


def encode_prompts(tokenizer, prompts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask, each (N, P)."""
    tok = as_task_tokenizer(tokenizer)
    rows = [tok.encode(p) for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("prompts must each encode to at least one token")
    P = max(map(len, rows))
    ids = torch.full((len(rows), P), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r)
        attn[i, P - len(r):] = 1
    return ids.to(device), attn.to(device)


def completion_masks(sequences_nt: torch.Tensor, prompt_attn_np: torch.Tensor, eos_id: int):
    """``(attention_nt, completion_nt)`` for generated rows ``[left-padded prompt | new tokens]``.

    The completion is the new tokens up to and including the first ``eos_id`` (all of them when
    none is ``eos``); tokens after it (generate's padding) are masked out of both masks.
    """
    N, T = sequences_nt.shape
    P = prompt_attn_np.shape[1]
    new_nt = sequences_nt[:, P:]
    is_eos = (new_nt == eos_id).long()
    before_eos = (is_eos.cumsum(-1) - is_eos) == 0  # positions up to and including the first eos
    comp = torch.zeros((N, T), dtype=torch.bool, device=sequences_nt.device)
    comp[:, P:] = before_eos
    attn = torch.cat([prompt_attn_np.bool(), before_eos], dim=1)
    return attn, comp


def sampling_config(max_new_tokens: int, tokenizer, temperature: float = 1.0):
    """A ``GenerationConfig`` that samples from ``π_θ`` itself: no top-k/top-p/penalties.

    Checkpoints ship defaults such as ``top_k=20, top_p=0.95``; those change the sampling law,
    and then ``E[s] ≠ 0`` under it and T1 fails. Every logits processor is switched off here.
    """
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    tok = as_task_tokenizer(tokenizer)
    return GenerationConfig(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0,
                            min_p=None, typical_p=1.0, repetition_penalty=1.0, num_beams=1,
                            max_new_tokens=int(max_new_tokens), min_new_tokens=0,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                            use_cache=True)


@torch.no_grad()
def sample_rollout(model, tokenizer, task: ArithmeticTask, problems: Sequence[Problem],
                   group_size: int, max_new_tokens: int, seed: int,
                   temperature: float = 1.0) -> Rollout:
    """Sample ``G = group_size`` completions for each problem with HF ``generate``, seeded.

    The torch RNG is forked, so the caller's random state is untouched and the same ``seed``
    gives the same rollout.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    tok = as_task_tokenizer(tokenizer)
    device = next(model.parameters()).device
    B, G = len(problems), int(group_size)
    ids_np, attn_np = encode_prompts(tok, [p.prompt for p in problems], device)
    ids_np, attn_np = ids_np.repeat_interleave(G, 0), attn_np.repeat_interleave(G, 0)  # (B·G, P)
    devices = [device] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        seqs_nt = model.generate(input_ids=ids_np, attention_mask=attn_np,
                                 generation_config=sampling_config(max_new_tokens, tok, temperature))
    model.train(was_training)
    attn_nt, comp_nt = completion_masks(seqs_nt, attn_np, tok.eos_token_id)
    P = ids_np.shape[1]
    texts = [tok.decode(row[P:].tolist()) for row in seqs_nt]
    texts_bg = [texts[b * G:(b + 1) * G] for b in range(B)]
    rewards_bg = torch.as_tensor(task.rewards(texts_bg, problems), dtype=torch.float64, device=device)
    T = seqs_nt.shape[1]
    return Rollout(list(problems), seqs_nt.reshape(B, G, T), attn_nt.reshape(B, G, T),
                   comp_nt.reshape(B, G, T), texts_bg, rewards_bg)


def answer_inputs(tokenizer, problems: Sequence[Problem], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each problem's prompt followed by its rewarded completion ``answer ⊕ <eos>``, as ``(X, 1, T)``
    inputs ``(input_ids, attention, completion)`` (left padding, as in sampling; the completion
    mask marks the answer and ``<eos>``)."""
    tok = as_task_tokenizer(tokenizer)
    rows, starts = [], []
    for p in problems:
        prompt = tok.encode(p.prompt)
        rows.append(prompt + tok.encode(p.answer) + [tok.eos_token_id])
        starts.append(len(prompt))
    T = max(map(len, rows))
    X = len(rows)
    ids = torch.full((X, 1, T), tok.pad_token_id, dtype=torch.long, device=device)
    attn = torch.zeros((X, 1, T), dtype=torch.bool, device=device)
    comp = torch.zeros((X, 1, T), dtype=torch.bool, device=device)
    for i, (row, s) in enumerate(zip(rows, starts)):
        off = T - len(row)
        ids[i, 0, off:] = torch.tensor(row, device=device)
        attn[i, 0, off:] = True
        comp[i, 0, off + s:] = True
    return ids, attn, comp


@torch.no_grad()
def expected_task_reward(model, tokenizer, problems: Sequence[Problem]) -> torch.Tensor:
    """Exact ``J_x = π_θ(answer ⊕ <eos> | x)`` per problem, (X,) float64 (teacher forcing).

    With :class:`~oblr_theory.bridge.task.CharTokenizer` a completion earns reward 1 iff it is the
    answer's tokens followed by ``<eos>`` (a ``<pad>`` token never matches), so this is the exact
    expected reward, provided ``max_new_tokens >= len(answer) + 1`` when sampling. With other
    tokenizers it is a lower bound (other tokenisations of the answer also score).
    """
    ids, attn, comp = answer_inputs(tokenizer, problems, next(model.parameters()).device)
    logp = sequence_logprobs(model, ids, attn, comp).seq_logp_bg[:, 0]
    return logp.double().exp()
