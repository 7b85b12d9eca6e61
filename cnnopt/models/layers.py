"""Building blocks shared by the CNN and MLP builders: activations, BN placement, weight init."""

from __future__ import annotations

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def norm_act(
    batchnorm: str, activation_name: str, channels: int, bn: type[nn.Module] = nn.BatchNorm2d
) -> list[nn.Module]:
    """Activation with BatchNorm before it, after it, or none (R3 compared all three)."""
    if batchnorm == "before":
        return [bn(channels), activation(activation_name)]
    if batchnorm == "after":
        return [activation(activation_name), bn(channels)]
    return [activation(activation_name)]


def init_weights(model: nn.Module, init: str, activation_name: str) -> None:
    """He (kaiming) for ReLU-like nets, Glorot (xavier), zero (R3's sanity check: does not train)."""
    if init == "default":
        return
    nonlinearity = "leaky_relu" if activation_name == "leaky_relu" else "relu"
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            if init == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
            elif init == "glorot":
                nn.init.xavier_uniform_(m.weight)
            elif init == "zero":
                nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
