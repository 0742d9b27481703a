"""The rule registry: which rule covers which module, and the extension path of docs/bridge.md
("Adding a layer type") run as written: one rule class and one entry in ``RULES``."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bridge_helpers import make_batch, rel_err, tiny_model  # noqa: E402
from oblr_theory.bridge import score_gram  # noqa: E402
from oblr_theory.per_sample import rules  # noqa: E402
from oblr_theory.per_sample.rules.norm import NormRule  # noqa: E402


@pytest.mark.parametrize("arch, expect", [
    ("qwen3", {"Linear": "linear", "Embedding": "embedding", "Qwen3RMSNorm": "norm"}),
    ("gpt2", {"Conv1D": "conv1d", "Embedding": "embedding", "LayerNorm": "norm",
              "Linear": "linear"}),
])
def test_every_parameter_owner_has_its_rule(arch, expect):
    model = tiny_model(arch)
    got = {}
    for mod in model.modules():
        if any(True for _ in mod.parameters(recurse=False)):
            rule = rules.rule_for(mod)
            got.setdefault(type(mod).__name__, set()).add(rule.name if rule else None)
    assert got == {k: {v} for k, v in expect.items()}
    assert rules.rule_for(torch.nn.Conv2d(1, 1, 1)) is None  # a layer type with no rule


class LayerScale(torch.nn.Module):
    """``y = x ⊙ w``: no built-in rule matches it."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(1 + 0.1 * torch.randn(d, dtype=torch.float64))

    def forward(self, x):
        return x * self.weight


class LayerScaleRule(NormRule):
    """``y = x ⊙ w``: the norm rule with ``x̂ = x`` (``∇w_n = Σ_pos b_n ⊙ x_n``)."""

    name = "layer_scale"

    def matches(self, module):
        return isinstance(module, LayerScale)


def test_adding_a_layer_type_is_one_rule_and_one_line(monkeypatch):
    """docs/bridge.md's worked example: refused without its rule; with it, ghost == loop
    (full Gram and diagonal, float64, 1e-9)."""
    torch.manual_seed(0)
    model = tiny_model("qwen3", tied=False)
    model.model.norm = torch.nn.Sequential(model.model.norm, LayerScale(32))
    batch = make_batch()
    with pytest.raises(ValueError, match=r"\(LayerScale\): no rule"):
        score_gram(model, *batch)
    monkeypatch.setattr(rules, "RULES", rules.RULES + (LayerScaleRule(),))
    loop = score_gram(model, *batch, method="loop").gram_bgg
    assert rel_err(score_gram(model, *batch).gram_bgg, loop) < 1e-9
    diag = score_gram(model, *batch, diagonal_only=True).sq_norms_bg
    assert rel_err(diag, torch.diagonal(loop, dim1=1, dim2=2)) < 1e-9


def test_a_norm_with_an_unknown_offset_matches_no_rule():
    """``y = x̂ ⊙ (2 + w)``: the offset probe finds neither 0 nor 1, so no norm rule claims it."""
    from test_ghost_pass import PowerRMSNorm

    model = tiny_model("qwen3")
    model.model.norm = PowerRMSNorm(model.model.norm, offset=2.0)
    with pytest.raises(ValueError, match=r"\(PowerRMSNorm\): no rule"):
        score_gram(model, *make_batch())
