import math

import pytest
import torch
from torch import nn

from cnnopt.config import CHOICES, ModelConfig
from cnnopt.models import build_model, count_params


@pytest.mark.parametrize("family", ["mlp", "cnn"])
@pytest.mark.parametrize("batchnorm", CHOICES["batchnorm"])
@pytest.mark.parametrize("activation", CHOICES["activation"])
def test_every_family_bn_placement_and_activation_builds(family, batchnorm, activation):
    cfg = ModelConfig(family=family, batchnorm=batchnorm, activation=activation, num_classes=7)
    model = build_model(cfg)
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 7)
    kinds = [type(m) for m in model.modules()]
    n_bn = sum(k in (nn.BatchNorm1d, nn.BatchNorm2d) for k in kinds)
    assert (n_bn > 0) == (batchnorm != "none")
    if batchnorm != "none":
        # BN sits on the requested side of the activation
        seq = [m for m in model.modules() if not isinstance(m, nn.Sequential)]
        i = next(i for i, m in enumerate(seq) if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d))
        act_before = type(seq[i - 1]).__name__.lower()
        assert (batchnorm == "after") == any(
            a in act_before for a in ("relu", "elu", "gelu", "silu", "tanh", "sigmoid")
        )


def test_vgg_style_blocks_and_global_pool():
    cfg = ModelConfig(conv_blocks=3, filters=(32, 64, 128), convs_per_block=2, batchnorm="before",
                      global_pool=True, hidden=(), dropout=(0.2, 0.5, 0.7))  # fmt: skip
    model = build_model(cfg)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.2, 0.5, 0.7]
    assert count_params(model) < 300_000
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_deep_net_on_small_input_never_pools_below_one_pixel():
    cfg = ModelConfig(conv_blocks=6, filters=(4,) * 6, hidden=(8,))
    assert build_model(cfg)(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def _fans(w: torch.Tensor) -> tuple[int, int]:
    receptive = w[0][0].numel()  # kernel area for convolutions, 1 for dense layers
    return w.shape[1] * receptive, w.shape[0] * receptive


PRESCRIBED_STD = {
    "he": lambda fan_in, fan_out: math.sqrt(2.0 / fan_in),  # He et al.: ReLU gain sqrt(2), fan-in
    "glorot": lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),  # Glorot & Bengio
    "default": lambda fan_in, fan_out: (
        1.0 / math.sqrt(3.0 * fan_in)
    ),  # PyTorch: U(+-1/sqrt(fan_in))
    "zero": lambda fan_in, fan_out: 0.0,
}


@pytest.mark.parametrize("init", ["he", "glorot", "zero", "default"])
def test_weight_init_has_the_std_its_scheme_prescribes(init):
    """Each layer's weights have the spread the scheme prescribes for that layer's fan-in (and
    fan-out): He sqrt(2/fan_in), Glorot sqrt(2/(fan_in+fan_out)). Any two of the schemes differ
    by far more than the tolerance on the first layers of this model (fan-in 9 and 288), so a
    scheme that is not applied fails."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(init=init, filters=(32, 64), hidden=(256,)))
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 4
    for m in layers:
        fan_in, fan_out = _fans(m.weight)
        want = PRESCRIBED_STD[init](fan_in, fan_out)
        got = float(m.weight.detach().std())
        assert got == pytest.approx(want, rel=0.12, abs=1e-9), (type(m).__name__, fan_in)
        if init != "default":
            assert float(m.bias.detach().abs().sum()) == 0


def test_rgb_input_and_kernel_size():
    cfg = ModelConfig(in_channels=3, input_size=32, kernel_size=5, filters=(16, 32))
    assert build_model(cfg)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
