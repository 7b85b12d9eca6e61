"""Dense baseline (R1's 300-100 MLP, R2's 2-hidden-layer MLP with dropout)."""

from __future__ import annotations

from torch import nn

from cnnopt.config import ModelConfig
from cnnopt.models.layers import init_weights, norm_act


def build_mlp(cfg: ModelConfig) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    features = cfg.in_channels * cfg.input_size * cfg.input_size
    for width in cfg.hidden:
        layers.append(nn.Linear(features, width))
        layers += norm_act(cfg.batchnorm, cfg.activation, width, nn.BatchNorm1d)
        if cfg.dense_dropout > 0:
            layers.append(nn.Dropout(cfg.dense_dropout))
        features = width
    layers.append(nn.Linear(features, cfg.num_classes))
    model = nn.Sequential(*layers)
    init_weights(model, cfg.init, cfg.activation)
    return model
