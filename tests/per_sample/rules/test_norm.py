"""The norm rules' own tests: the offset probe and the same-dtype forward for float64 models."""

import pytest

torch = pytest.importorskip("torch")

from oblr_theory.per_sample.rules import rule_for  # noqa: E402
from oblr_theory.per_sample.rules.norm import weight_offset  # noqa: E402


class TinyRMSNorm(torch.nn.Module):
    """``x / sqrt(mean(x²) + eps) ⊙ (o + w)`` computed in float32, as Hugging Face's do;
    ``centred`` subtracts the mean first (a LayerNorm without bias: another formula)."""

    def __init__(self, d, offset=0.0, centred=False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(d, dtype=torch.float64))
        self.variance_epsilon, self.offset, self.centred = 1e-6, offset, centred

    def forward(self, x):
        h = x.float()
        if self.centred:
            h = h - h.mean(-1, keepdim=True)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (h * (self.offset + self.weight.float())).to(x.dtype)


@pytest.mark.parametrize("offset, rule", [(0.0, "norm"), (1.0, "offset_norm"), (2.0, None)])
def test_the_offset_probe_picks_the_rule(offset, rule):
    module = TinyRMSNorm(8, offset=offset)
    assert weight_offset(module) == (offset if offset in (0.0, 1.0) else None)
    assert (rule_for(module).name if rule_for(module) else None) == rule
    assert rule_for(torch.nn.LayerNorm(8)).name == "norm"
    assert rule_for(torch.nn.LayerNorm(8, elementwise_affine=False)) is None


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_exact_forward_is_float64_and_the_same_formula(offset):
    """The replacement agrees with the module's float32 forward to float32 accuracy and with a
    float64 evaluation of the formula to float64 accuracy; a different formula (mean-centred)
    gets no replacement."""
    module = TinyRMSNorm(8, offset=offset)
    forward = rule_for(module).exact_forward(module)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (offset + module.weight)
        got, own = forward(x), module(x)
    assert float((got - ref).abs().max()) <= 64 * 2.0**-52 * float(ref.abs().max())
    assert float((got - own).abs().max()) <= 64 * 8 * 2.0**-24 * float(ref.abs().max())
    assert float((own - ref).abs().max()) > float((got - ref).abs().max())  # float32 was lost
    centred = TinyRMSNorm(8, offset=offset, centred=True)
    assert rule_for(centred) is not None and rule_for(centred).exact_forward(centred) is None
