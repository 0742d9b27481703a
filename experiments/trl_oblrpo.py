"""OBLR-PO with TRL on the built-in arithmetic task: a runnable example of ``OBLRPOTrainer``.

    python experiments/trl_oblrpo.py                       # tiny Qwen3, pretrained briefly, CPU
    python experiments/trl_oblrpo.py --model ./Qwen3-0.6B  # a local checkpoint (safetensors)
    accelerate launch --num_processes 8 experiments/trl_oblrpo.py --model ./Qwen3-4B-Base

Prints the exact expected reward before and after (tiny model: ``expected_task_reward``, the
probability of ``answer ⊕ <eos>``) and writes TRL's log history as JSON to ``--out``.
Any ``OBLRPOConfig`` field can be set with ``--set name=value`` (e.g. ``--set use_vllm=true``,
``--set estimator=rloo``); values are parsed as JSON when they parse, else kept as strings.
"""

from __future__ import annotations

import argparse
import json
import os


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="local checkpoint directory (default: tiny Qwen3)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--optim", default="sgd")
    ap.add_argument("--batch", type=int, default=64, help="completions per device per step")
    ap.add_argument("--group", type=int, default=8, help="num_generations")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="results/trl_oblrpo")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    a = ap.parse_args(argv)

    import torch

    from oblr_theory.bridge.models import load_local, pretrain, tiny_qwen3
    from oblr_theory.bridge.rollout import expected_task_reward
    from oblr_theory.bridge.task import ArithmeticTask, CharTokenizer
    from oblr_theory.integrations.trl import OBLRPOConfig, OBLRPOTrainer
    from oblr_theory.integrations.trl_task import answer_ids_reward, arithmetic_dataset, hf_char_tokenizer

    task = ArithmeticTask(max_operand=4)
    if a.model is None:
        model, tok = tiny_qwen3(CharTokenizer(), seed=a.seed), CharTokenizer()
        pretrain(model, tok, task, steps=200, stop_at_reward=0.3, lr=3e-3, seed=a.seed)
        hf_tok, reward = hf_char_tokenizer(), answer_ids_reward
    else:
        model, tok = load_local(a.model)
        hf_tok = tok.hf

        def reward(completions, answer, **kw):  # text exact match for any tokenizer
            return [float(c.strip() == x) for c, x in zip(completions, answer)]
    extra = {}
    for item in a.set:
        name, _, value = item.partition("=")
        try:
            extra[name] = json.loads(value)
        except json.JSONDecodeError:
            extra[name] = value
    args = OBLRPOConfig(output_dir=a.out, max_steps=a.steps, learning_rate=a.lr, optim=a.optim,
                        per_device_train_batch_size=a.batch, num_generations=a.group,
                        max_completion_length=task.max_answer_chars + 1, lr_scheduler_type="constant",
                        logging_steps=1, save_strategy="no", report_to=[], seed=a.seed,
                        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(), **extra)
    problems = task.all_problems()
    J0 = float(expected_task_reward(model, tok, problems).mean())
    trainer = OBLRPOTrainer(model=model, reward_funcs=reward, args=args,
                            train_dataset=arithmetic_dataset(a.steps * a.batch * 4, seed=a.seed, task=task),
                            processing_class=hf_tok)
    trainer.train()
    model.eval()
    J1 = float(expected_task_reward(model, tok, problems).mean())
    if trainer.accelerator.is_main_process:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "log_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f, indent=1)
        print(json.dumps({"expected_reward_before": J0, "expected_reward_after": J1,
                          "steps": a.steps, "log": os.path.join(a.out, "log_history.json")}))


if __name__ == "__main__":
    main()
