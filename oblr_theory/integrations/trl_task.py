"""The built-in arithmetic task (:mod:`oblr_theory.bridge.task`) in TRL's terms, all offline:
a Hugging Face character tokenizer with :class:`CharTokenizer`'s ids, an in-memory
``datasets.Dataset`` of prompts and answers, and the exact-match reward as a TRL reward function.
"""

from __future__ import annotations

import numpy as np

from ..bridge.task import ArithmeticTask, CharTokenizer

__all__ = ["hf_char_tokenizer", "arithmetic_dataset", "answer_ids_reward", "cpu_config_kwargs", "char_sum_reward"]


def hf_char_tokenizer():
    """``PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel model, one token per character,
    with the ids of :class:`CharTokenizer` (``<pad>`` 0, ``<eos>`` 1), built without downloads."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ct = CharTokenizer()
    vocab = {ct.PAD: ct.pad_token_id, ct.EOS: ct.eos_token_id, **{c: ct.encode(c)[0] for c in ct.alphabet}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=ct.PAD))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=ct.PAD, eos_token=ct.EOS)


def arithmetic_dataset(n: int, seed: int = 0, task: ArithmeticTask = ArithmeticTask(max_operand=4)):
    """``n`` i.i.d. problems of ``task`` (seeded) as a ``Dataset`` with columns ``prompt`` and
    ``answer`` (TRL passes ``answer`` to the reward function)."""
    from datasets import Dataset

    probs = task.sample(n, np.random.default_rng(seed))
    return Dataset.from_dict({"prompt": [p.prompt for p in probs], "answer": [p.answer for p in probs]})


def answer_ids_reward(completion_ids, answer, **kwargs):
    """TRL reward function: 1 iff the completion's tokens are exactly ``answer ⊕ <eos>`` under
    :class:`CharTokenizer`'s ids (so its expectation is
    :func:`oblr_theory.bridge.rollout.expected_task_reward`), else 0."""
    ct = CharTokenizer()
    return [float(list(ids) == ct.encode(a) + [ct.eos_token_id]) for ids, a in zip(completion_ids, answer)]


def cpu_config_kwargs(**over):
    """``GRPOConfig`` keywords for a small offline CPU run: no logging, saving or downloads, SGD at a
    constant rate (``over`` replaces any of them). Shared by the tests and the TRL benchmark."""
    kw = dict(output_dir="unused", use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
              per_device_train_batch_size=8, num_generations=4, max_completion_length=3,
              max_steps=1, learning_rate=0.1, optim="sgd", seed=0, bf16=False, fp16=False,
              lr_scheduler_type="constant", disable_tqdm=True, dataloader_num_workers=0)
    kw.update(over)
    return kw


def char_sum_reward(completions, **kwargs):
    """A deterministic TRL reward with spread on random models: ``(Σ ord(c) mod 5) / 4``."""
    return [float(sum(map(ord, c)) % 5) / 4 for c in completions]
