"""Offline fixtures for the TRL tests: a tiny seeded Qwen3, reward functions, CPU config keywords;
the task's tokenizer and dataset come from :mod:`oblr_theory.integrations.trl_task`."""

from __future__ import annotations

import torch

from oblr_theory.bridge.models import TinyQwen3Spec, tiny_qwen3
from oblr_theory.bridge.task import CharTokenizer
from oblr_theory.integrations.trl_task import answer_ids_reward, arithmetic_dataset  # noqa: F401
from oblr_theory.integrations.trl_task import hf_char_tokenizer as char_tokenizer  # noqa: F401
from oblr_theory.integrations.trl_task import char_sum_reward as dense_reward  # noqa: F401
from oblr_theory.integrations.trl_task import cpu_config_kwargs as base_kwargs  # noqa: F401


def tiny_model(seed: int = 0, dtype=torch.float32, spec: TinyQwen3Spec = TinyQwen3Spec()):
    return tiny_qwen3(CharTokenizer(), spec=spec, seed=seed, dtype=dtype)


def capture(trainer_cls):
    """A subclass of ``trainer_cls`` that keeps every ``_generate_and_score_completions`` output."""

    class Capturing(trainer_cls):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            self.captured = getattr(self, "captured", []) + [{k: v for k, v in out.items()}]
            return out

    return Capturing
