"""Sampling a batch of groups (``bridge/rollout.py``) on a tiny Qwen3: the policy's own law
(checkpoint top-k/top-p switched off), seeding, and completion masks ending at the first eos."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from oblr_theory.bridge.rollout import completion_masks, sample_rollout, sampling_config  # noqa: E402
from bridge_helpers import TASK, TOK, task_model64  # noqa: E402

model64 = pytest.fixture(scope="module", name="model64")(task_model64)


def test_sampling_uses_the_policy_distribution(model64):
    """Checkpoint defaults (top-k, top-p) must not reach sampling: processed scores == logits."""
    model64.generation_config.top_k, model64.generation_config.top_p = 2, 0.5
    try:
        ids = torch.tensor([TOK.encode("3+4=")])
        out = model64.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               generation_config=sampling_config(3, TOK),
                               output_scores=True, output_logits=True, return_dict_in_generate=True)
        for s, z in zip(out.scores, out.logits):
            torch.testing.assert_close(s, z, rtol=0, atol=0)
    finally:
        model64.generation_config.top_k, model64.generation_config.top_p = None, None


def test_sample_rollout_is_seeded_and_masks_end_at_eos(model64):
    probs = TASK.sample(2, np.random.default_rng(3))
    a = sample_rollout(model64, TOK, TASK, probs, 5, 4, seed=11)
    b = sample_rollout(model64, TOK, TASK, probs, 5, 4, seed=11)
    assert torch.equal(a.input_ids_bgt, b.input_ids_bgt) and a.texts_bg == b.texts_bg
    c = sample_rollout(model64, TOK, TASK, probs, 5, 4, seed=12)  # negative control: the seed acts
    assert c.texts_bg != a.texts_bg
    comp, ids = a.completion_bgt, a.input_ids_bgt
    for bb in range(2):
        for g in range(5):
            toks = ids[bb, g][comp[bb, g]].tolist()
            assert 1 <= len(toks) <= 4
            assert TOK.eos_token_id not in toks[:-1]  # only the last scored token may be eos
            assert TOK.decode(toks) == a.texts_bg[bb][g]


def test_completion_masks_include_first_eos_only():
    eos, pad = TOK.eos_token_id, TOK.pad_token_id
    seqs = torch.tensor([[pad, 5, 6, 7, eos, pad], [4, 5, 6, 7, 8, 9]])
    prompt_attn = torch.tensor([[0, 1, 1], [1, 1, 1]])
    attn, comp = completion_masks(seqs, prompt_attn, eos)
    assert comp.tolist() == [[False, False, False, True, True, False], [False, False, False, True, True, True]]
    assert attn.tolist() == [[False, True, True, True, True, False], [True] * 6]
