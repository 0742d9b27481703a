"""The built-in arithmetic task: tokenizer, problems, exact-match reward."""

import numpy as np
import pytest

from oblr_theory.bridge.task import ArithmeticTask, CharTokenizer, Problem, exact_match_reward


def test_tokenizer_roundtrip_and_special_tokens():
    tok = CharTokenizer()
    ids = tok.encode("12+7=")
    assert tok.decode(ids) == "12+7="
    assert tok.pad_token_id not in ids and tok.eos_token_id not in ids
    assert tok.decode(ids + [tok.eos_token_id] + tok.encode("99")) == "12+7="  # stops at eos
    assert tok.vocab_size == len(tok.alphabet) + 2


def test_pad_inside_a_completion_never_matches_an_answer():
    tok = CharTokenizer()
    text = tok.decode(tok.encode("1") + [tok.pad_token_id] + tok.encode("9"))
    assert text != "19" and exact_match_reward(text, "19") == 0.0


def test_unknown_character_is_an_error_naming_the_text():
    with pytest.raises(ValueError, match="outside the alphabet"):
        CharTokenizer().encode("1/2=")


def test_all_problems_are_correct_and_respect_max_answer():
    task = ArithmeticTask(max_operand=9, ops="+-*", max_answer=9)
    for p in task.all_problems():
        assert int(eval(p.prompt[:-1])) == int(p.answer) <= 9
    assert task.max_answer_chars == 2  # "-9"
    assert ArithmeticTask(max_operand=9).max_answer_chars == 2  # "18"


def test_sample_is_seeded_and_covers_the_pool():
    task = ArithmeticTask(max_operand=3)
    a = task.sample(200, np.random.default_rng(0))
    b = task.sample(200, np.random.default_rng(0))
    assert a == b
    assert {p.prompt for p in a} == {p.prompt for p in task.all_problems()}


def test_rewards_are_exact_match_with_shape_b_g():
    task = ArithmeticTask()
    probs = [Problem("1+2=", "3"), Problem("9+9=", "18")]
    r = task.rewards([["3", "4", " 3"], ["18", "1", "180"]], probs)
    np.testing.assert_array_equal(r, [[1, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match="completions has 1 groups"):
        task.rewards([["3"]], probs)


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="ops"):
        ArithmeticTask(ops="/")
    with pytest.raises(ValueError, match="max_answer"):
        ArithmeticTask(max_operand=3, max_answer=-100)


def test_digit_balanced_sampling_weights_short_and_long_operands_equally():
    """``sampling="digits"``: the first operand has one digit with probability 1/2 (two-digit
    operands up to 99), against 10/100 under ``"uniform"`` (negative control). Threshold: a
    binomial z of 5 (false-failure rate below 1e-6) on n = 4000 draws, i.e. |p̂ − 1/2| < 0.04."""
    n, z = 4000, 5.0
    digits = ArithmeticTask(max_operand=99, sampling="digits")
    probs = digits.sample(n, np.random.default_rng(0))
    one_digit = np.mean([len(p.prompt.split("+")[0]) == 1 for p in probs])
    assert abs(one_digit - 0.5) < z * np.sqrt(0.25 / n)
    uniform = ArithmeticTask(max_operand=99).sample(n, np.random.default_rng(0))
    assert abs(np.mean([len(p.prompt.split("+")[0]) == 1 for p in uniform]) - 0.5) > z * np.sqrt(0.25 / n)
    pool = set(digits.all_problems())
    assert all(p in pool for p in probs)  # same problems, correct answers
    assert probs == digits.sample(n, np.random.default_rng(0))  # seeded
    capped = ArithmeticTask(max_operand=99, max_answer=50, sampling="digits").sample(200, np.random.default_rng(1))
    assert all(int(p.answer) <= 50 for p in capped)
    with pytest.raises(ValueError, match="sampling"):
        ArithmeticTask(sampling="log")
