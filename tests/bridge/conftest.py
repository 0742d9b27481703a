"""Fixtures shared by the bridge tests (torch imported inside, so collection without torch skips)."""

import pytest


@pytest.fixture(scope="module")
def model64():
    """The tiny Qwen3 of the built-in task's character tokenizer, float64, seeded, in eval mode
    (one per test module)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from oblr_theory.bridge.models import tiny_qwen3
    from oblr_theory.bridge.task import CharTokenizer

    return tiny_qwen3(CharTokenizer(), seed=3, dtype=torch.float64).eval()
