"""Offline fixtures for the TRL tests: a tiny seeded Qwen3, reward functions, CPU config keywords;
the task's tokenizer and dataset come from :mod:`oblr_theory.integrations.trl_task`."""

from __future__ import annotations

import torch

from oblr_theory.bridge.models import TinyQwen3Spec, tiny_qwen3
from oblr_theory.bridge.task import CharTokenizer
from oblr_theory.integrations.trl_task import answer_ids_reward, arithmetic_dataset  # noqa: F401
from oblr_theory.integrations.trl_task import hf_char_tokenizer as char_tokenizer  # noqa: F401


def tiny_model(seed: int = 0, dtype=torch.float32, spec: TinyQwen3Spec = TinyQwen3Spec()):
    return tiny_qwen3(CharTokenizer(), spec=spec, seed=seed, dtype=dtype)


def base_kwargs(**over):
    """GRPOConfig keywords for a CPU run with no logging, saving or downloads."""
    kw = dict(output_dir="unused", use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
              per_device_train_batch_size=8, num_generations=4, max_completion_length=3,
              max_steps=1, learning_rate=0.1, optim="sgd", seed=0, bf16=False, fp16=False,
              lr_scheduler_type="constant", disable_tqdm=True, dataloader_num_workers=0)
    kw.update(over)
    return kw


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
