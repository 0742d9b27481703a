"""smoke: a short default OBLR-PO run (optimal_loo, exact S, T5/T7 learning rate) inside TRL on
the built-in arithmetic task raises the exact expected reward of a briefly pretrained tiny Qwen3.

The expected reward ``J = mean_x π(answer ⊕ <eos> | x)`` over all 25 problems is computed
exactly (teacher forcing), so the only randomness is the training run's own sampling. The
reward function is the one whose expectation that is (completion tokens = answer ⊕ <eos>).
Plain SGD: T5's step ``η = η_max · SNR/(1+SNR)`` is derived for SGD; ``η_max`` (TRL's scheduled
rate) is 0.2, below the rates at which the same run with GRPO's advantages and a constant rate
already loses reward (docs/trl.md, "Step size").
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from oblr_theory.bridge.models import pretrain  # noqa: E402
from oblr_theory.bridge.rollout import expected_task_reward  # noqa: E402
from oblr_theory.bridge.task import ArithmeticTask, CharTokenizer  # noqa: E402
from oblr_theory.integrations.trl import OBLRPOConfig, OBLRPOTrainer  # noqa: E402

from .trl_helpers import (answer_ids_reward, arithmetic_dataset, base_kwargs,  # noqa: E402
                          char_tokenizer, tiny_model)

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_smoke_oblrpo_raises_expected_reward(tmp_path):
    task, seed = ArithmeticTask(max_operand=4), 1
    model = tiny_model(seed=seed)
    pretrain(model, CharTokenizer(), task, steps=200, stop_at_reward=0.3, lr=3e-3, seed=seed)
    problems = task.all_problems()
    J0 = float(expected_task_reward(model, CharTokenizer(), problems).mean())
    args = OBLRPOConfig(**base_kwargs(output_dir=str(tmp_path), max_steps=10, learning_rate=0.2,
                                      optim="sgd", per_device_train_batch_size=64, num_generations=8,
                                      gradient_checkpointing=False, seed=seed))
    tr = OBLRPOTrainer(model=model, reward_funcs=answer_ids_reward, args=args,
                       train_dataset=arithmetic_dataset(4096, task=task), processing_class=char_tokenizer())
    tr.train()
    model.eval()
    J1 = float(expected_task_reward(model, CharTokenizer(), problems).mean())
    factors = [h["oblrpo/lr_factor"] for h in tr.state.log_history if "oblrpo/lr_factor" in h]
    assert len(factors) == 10 and max(factors) > 0  # the T5 factor moved the parameters
    assert J1 > J0, (J0, J1, factors)
