"""Refusals of the bridge (oblr_theory.bridge.checks): active dropout, no trainable parameter, an
attention mask with a gap, token ids outside the vocabulary, a non-causal model; each through
``score_gram`` and ``OBLRPO.update``, with valid inputs (left, right and two-sided padding) as the
negative control."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from oblr_theory.bridge import checks  # noqa: E402
from oblr_theory.bridge.gram import score_gram  # noqa: E402
from oblr_theory.bridge.rollout import sample_rollout  # noqa: E402
from oblr_theory.bridge.step import OBLRPO, StepConfig  # noqa: E402
from bridge_helpers import TASK, TOK, VOCAB, make_batch, task_model64, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen3")


@pytest.fixture(scope="module")
def batch():
    return make_batch(B=2, G=3, pad_side="left", extra_pad=1)


def test_valid_inputs_pass_with_left_right_and_two_sided_padding(model):
    """Negative control: every padding layout the contract allows passes, for every method."""
    for pad_side in ("left", "right"):
        ids, attn, comp = make_batch(B=2, G=3, pad_side=pad_side, extra_pad=2)
        for method in ("ghost", "loop", "length", "logit"):
            checks.check_score_inputs(model, ids, attn, comp, method)
    ids, attn, comp = make_batch(B=1, G=2, pad_side="left", extra_pad=2)
    # two-sided: shift the left-padded rows one place left, leaving one pad at each end
    two = [torch.roll(x, -1, dims=-1) for x in (ids, attn, comp)]
    assert bool((two[1][..., 0] == 0).all()) and bool((two[1][..., -1] == 0).all())
    score_gram(model, *two, method="ghost")


# ------------------------------------------------------------------------------- dropout
def gpt2_with_dropout(p=0.1):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                                  resid_pdrop=p, embd_pdrop=p, attn_pdrop=p,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float64)


def test_dropout_makes_two_identical_calls_differ_so_it_is_refused(batch):
    """Why the refusal: in train mode with dropout, two identical forward passes give different
    log-probs (here, not a rounding difference: float64, identical inputs)."""
    from oblr_theory.bridge.logprobs import sequence_logprobs

    m = gpt2_with_dropout().train()
    a = sequence_logprobs(m, *batch).seq_logp_bg.detach()
    b = sequence_logprobs(m, *batch).seq_logp_bg.detach()
    assert float((a - b).abs().max()) > 1e-3 * float(a.abs().max())
    with pytest.raises(ValueError, match=r"dropout is active.*p=0\.1.*model\.eval\(\)"):
        score_gram(m, *batch, method="ghost")
    m.eval()  # negative control: the same model in eval mode is deterministic and accepted
    with torch.no_grad():
        assert torch.equal(sequence_logprobs(m, *batch).seq_logp_bg,
                           sequence_logprobs(m, *batch).seq_logp_bg)
    score_gram(m, *batch, method="ghost")


def test_config_attention_dropout_in_train_mode_is_refused(batch):
    """Qwen3 applies config.attention_dropout inside the attention kernel (no dropout module)."""
    m = tiny_model("qwen3")
    m.config.attention_dropout = 0.2
    m.train()
    with pytest.raises(ValueError, match=r"config\.attention_dropout=0\.2"):
        score_gram(m, *batch, method="loop")
    m.eval()  # eval mode: the kernel gets dropout 0
    score_gram(m, *batch, method="loop")
    m.config.attention_dropout = 0.0
    m.train()  # train mode without any dropout is fine
    score_gram(m, *batch, method="loop")


# ------------------------------------------------------------------------------- trainable
def test_no_trainable_parameter_is_refused_for_exact_methods_only(batch):
    m = tiny_model("qwen3")
    m.requires_grad_(False)
    for method in ("ghost", "loop"):
        with pytest.raises(ValueError, match="no parameter with requires_grad.*rloo"):
            score_gram(m, *batch, method=method)
    for method in ("length", "logit"):  # forward-only proxies need no gradient
        score_gram(m, *batch, method=method)
    m.lm_head.weight.requires_grad_(True)  # one trainable (tied) matrix is enough
    score_gram(m, *batch, method="ghost")


# ------------------------------------------------------------------------------- mask layout
def test_attention_mask_with_a_gap_is_refused(model, batch):
    ids, attn, comp = (x.clone() for x in batch)
    # a zero inside the prompt of sequence (1, 2), between real tokens
    row = attn[1, 2].nonzero().flatten()
    attn[1, 2, row[1]] = 0
    with pytest.raises(ValueError, match=r"attention_mask has a gap.*\(1, 2\)"):
        score_gram(model, ids, attn, comp)
    with pytest.raises(ValueError, match="gap"):
        checks.check_attention_layout(torch.tensor([[1, 0, 1]]))
    for ok in ([1, 1, 0], [0, 1, 1], [0, 1, 0], [1, 1, 1]):  # negative control
        checks.check_attention_layout(torch.tensor([ok]))


# ------------------------------------------------------------------------------- token ids
@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_token_ids_outside_the_vocabulary_are_refused(model, batch, bad):
    ids, attn, comp = (x.clone() for x in batch)
    ids[0, 0, 0] = bad  # a padding position of a left-padded row: embedded all the same
    assert int(attn[0, 0, 0]) == 0
    with pytest.raises(ValueError, match=rf"outside the model's vocabulary \[0, {VOCAB}\)"):
        score_gram(model, ids, attn, comp, method="length")
    ids[0, 0, 0] = VOCAB - 1  # negative control: the largest valid id
    score_gram(model, ids, attn, comp, method="length")


# ------------------------------------------------------------------------------- causality
def test_non_causal_model_is_refused():
    causal = tiny_model("qwen3")
    checks.check_causal(causal)  # negative control
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, vocab_size=VOCAB, is_decoder=False,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert = transformers.BertLMHeadModel(cfg).eval()
    with pytest.raises(ValueError, match="not causal"):
        checks.check_causal(bert)


# ------------------------------------------------------------------------------- the update
@pytest.fixture(scope="module")
def rollout():
    m = task_model64()
    problems = TASK.sample(2, np.random.default_rng(0))
    roll = sample_rollout(m, TOK, TASK, problems, group_size=3, max_new_tokens=3, seed=5)
    roll.rewards_bg = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    return roll


@pytest.mark.parametrize("cfg", [StepConfig(), StepConfig(estimator="grpo", lr_rule="constant",
                                                            sq_norms="length")])
def test_update_refuses_before_touching_the_parameters(rollout, cfg):
    """The update refuses each cause (also GRPO at a constant rate, which calls no score_gram);
    the parameters are unchanged after a refusal; the valid rollout is then accepted."""
    m = task_model64()
    algo = OBLRPO(m, cfg)
    before = [p.detach().clone() for p in m.parameters()]
    bad = [dataclasses.replace(rollout, input_ids_bgt=rollout.input_ids_bgt + TOK.vocab_size)]
    attn = rollout.attention_bgt.clone()
    row = attn[0, 0].nonzero().flatten()
    attn[0, 0, row[1]] = 0  # gap inside the prompt (the completion stays inside the mask)
    bad.append(dataclasses.replace(rollout, attention_bgt=attn))
    for roll, pattern in zip(bad, ("outside the model's vocabulary", "gap")):
        with pytest.raises(ValueError, match=pattern):
            algo.update(roll)
    m.config.attention_dropout = 0.1
    m.train()
    with pytest.raises(ValueError, match="dropout is active"):
        algo.update(rollout)
    m.config.attention_dropout = 0.0
    m.eval()
    m.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        algo.update(rollout)
    m.requires_grad_(True)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
    algo.update(rollout)  # negative control: the valid rollout is accepted
