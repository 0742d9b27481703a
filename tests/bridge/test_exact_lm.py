"""The exact reference on an enumerable LM (``bridge/exact_lm.py``): every completion up to the
horizon, total probability one, and the multiset engine against the T2 closed forms."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from oblr_theory.bridge import exact_lm  # noqa: E402
from oblr_theory.bridge.models import tiny_qwen3  # noqa: E402
from oblr_theory.bridge.task import ArithmeticTask, CharTokenizer  # noqa: E402
from oblr_theory.bridge.validate import CLOSED_FORMS  # noqa: E402
from oblr_theory.exact import num_multisets  # noqa: E402
from bridge_helpers import chain_length, roundoff_tol  # noqa: E402


def max_abs_logit(model, tok, problems, comps):
    """max |z| over every enumerated prompt + completion sequence (the logits' scale)."""
    rows = [tok.encode(p.prompt) + c for p in problems for c in comps]
    T = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])
    with torch.no_grad():
        return float(model(input_ids=ids).logits.abs().max()), T


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
    problems = task.all_problems()[:2]
    ref = exact_lm.exact_reference(model, tok, task, problems, horizon=2, group_size=2)
    # π(y|x) = exp(Σ_{t<=2} log π_t), each log π_t off by <= 2 eps max(1, |z|) (eps: one float64
    # forward chain); the n probabilities are positive, so their sum is off by <= n u more
    n = len(comps)
    zmax, T = max_abs_logit(model, tok, problems, comps)
    eps = roundoff_tol(chain_length(model, T))
    assert ref["prob_total_max_dev"] <= 2 * 2 * eps * max(1.0, zmax) + roundoff_tol(n + 1)
    # G = 2: the multiset engine and the T2 closed forms agree on exact moments. Accumulations:
    # the C(n+1, 2) multisets, the n-term moments, and the n² of the eigendecomposition that
    # gives the scores (inner products exact to n² u ||K||, ||K|| <= tr K); V is E||ĝ||² − ||∇J||²,
    # so the cancellation factor is 1 + ||∇J||² / V
    acc = num_multisets(n, 2) + n + n * n
    for name in CLOSED_FORMS:
        cond = 1 + ref["moment/grad_sq_norm"] / ref[f"V_exact/{name}"]
        assert ref[f"V_multiset/{name}"] == pytest.approx(ref[f"V_exact/{name}"],
                                                          rel=roundoff_tol(acc, cond), abs=0)
