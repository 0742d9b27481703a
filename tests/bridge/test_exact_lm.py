"""The exact reference on an enumerable LM (``bridge/exact_lm.py``): every completion up to the
horizon, total probability one, and the multiset engine against the T2 closed forms."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from oblr_theory.bridge import exact_lm  # noqa: E402
from oblr_theory.bridge.models import tiny_qwen3  # noqa: E402
from oblr_theory.bridge.task import ArithmeticTask, CharTokenizer  # noqa: E402
from oblr_theory.bridge.validate import CLOSED_FORMS  # noqa: E402


@pytest.fixture(scope="module")
def small_lm():
    tok = CharTokenizer("0123456789+=")
    return tiny_qwen3(tok, seed=2, dtype=torch.float64).eval(), tok


def test_enumerated_completions_have_total_probability_one(small_lm):
    model, tok = small_lm
    task = ArithmeticTask(max_answer=9)
    comps = exact_lm.enumerate_completions(tok.vocab_size, tok.eos_token_id, 2)
    V_ = tok.vocab_size
    assert len(comps) == 1 + (V_ - 1) + (V_ - 1) ** 2 and len({tuple(c) for c in comps}) == len(comps)
    ref = exact_lm.exact_reference(model, tok, task, task.all_problems()[:2], horizon=2, group_size=2)
    assert ref["prob_total_max_dev"] < 1e-10
    # G = 2: the multiset engine and the T2 closed forms agree on exact moments
    for name in CLOSED_FORMS:
        assert ref[f"V_multiset/{name}"] == pytest.approx(ref[f"V_exact/{name}"], rel=1e-9)
