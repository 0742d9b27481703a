"""Offline fixtures for the TRL tests: a char-level tokenizer, a tiny seeded Qwen3, the built-in
arithmetic task as an in-memory dataset, and its exact-match reward."""

from __future__ import annotations

import numpy as np
import torch

from oblr_theory.bridge.models import TinyQwen3Spec, tiny_qwen3
from oblr_theory.bridge.task import ArithmeticTask, CharTokenizer, exact_match_reward


def char_tokenizer():
    """``PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel model, one token per
    character, with the ids of :class:`CharTokenizer` (``<pad>`` 0, ``<eos>`` 1)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ct = CharTokenizer()
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(ct.alphabet)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


def tiny_model(seed: int = 0, dtype=torch.float32, spec: TinyQwen3Spec = TinyQwen3Spec()):
    return tiny_qwen3(CharTokenizer(), spec=spec, seed=seed, dtype=dtype)


def arithmetic_dataset(n: int, seed: int = 0, task: ArithmeticTask = ArithmeticTask(max_operand=4)):
    from datasets import Dataset

    probs = task.sample(n, np.random.default_rng(seed))
    return Dataset.from_dict({"prompt": [p.prompt for p in probs], "answer": [p.answer for p in probs]})


def exact_match(completions, answer, **kwargs):
    """TRL reward function: 1 when the completion text is the answer."""
    return [exact_match_reward(c, a) for c, a in zip(completions, answer)]


def base_kwargs(**over):
    """GRPOConfig keywords for a CPU run with no logging, saving or downloads."""
    kw = dict(output_dir="unused", use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
              per_device_train_batch_size=8, num_generations=4, max_completion_length=3,
              max_steps=1, learning_rate=0.1, optim="sgd", seed=0, bf16=False, fp16=False,
              lr_scheduler_type="constant", disable_tqdm=True, dataloader_num_workers=0)
    kw.update(over)
    return kw


def answer_ids_reward(completion_ids, answer, **kwargs):
    """TRL reward function: 1 iff the completion's tokens are exactly ``answer ⊕ <eos>`` (the
    reward whose expectation :func:`oblr_theory.bridge.rollout.expected_task_reward` gives)."""
    ct = CharTokenizer()
    return [float(list(ids) == ct.encode(a) + [ct.eos_token_id]) for ids, a in zip(completion_ids, answer)]


def dense_reward(completions, **kwargs):
    """A deterministic reward with spread on random models: ``(Σ ord(c) mod 5) / 4``."""
    return [float(sum(map(ord, c)) % 5) / 4 for c in completions]


def capture(trainer_cls):
    """A subclass of ``trainer_cls`` that keeps every ``_generate_and_score_completions`` output."""

    class Capturing(trainer_cls):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            self.captured = getattr(self, "captured", []) + [{k: v for k, v in out.items()}]
            return out

    return Capturing
