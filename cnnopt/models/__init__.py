"""Model builders: a ModelConfig in, an nn.Module out. No Optuna, no data, no training here."""

from __future__ import annotations

from torch import nn

from cnnopt.config import TORCHVISION_FAMILIES, ModelConfig
from cnnopt.errors import ConfigError


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.family == "cnn":
        from cnnopt.models.cnn import build_cnn

        return build_cnn(cfg)
    if cfg.family == "mlp":
        from cnnopt.models.mlp import build_mlp

        return build_mlp(cfg)
    if cfg.family in TORCHVISION_FAMILIES:
        from cnnopt.models.transfer import build_transfer

        return build_transfer(cfg)
    raise ConfigError(f"unknown model family {cfg.family!r}")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
