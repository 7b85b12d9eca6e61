"""The configurable CNN: conv blocks (BN placement, activation, dropout) and a dense head.

A block is ``convs_per_block`` x [conv -> BN/activation in the configured order], then pooling and
dropout. R2's CNN-BN is 2 blocks of 1 conv with BN; R3's VGG-style net is 3 blocks of 2 convs with
increasing dropout; the 94% FashionMNIST net is 3 blocks of 2 convs with BN and global average
pooling. All are points of this one space.
"""

from __future__ import annotations

from torch import nn

from cnnopt.config import ModelConfig
from cnnopt.models.layers import init_weights, norm_act


def build_cnn(cfg: ModelConfig) -> nn.Module:
    layers: list[nn.Module] = []
    channels, size = cfg.in_channels, cfg.input_size
    pool = nn.MaxPool2d if cfg.pool == "max" else nn.AvgPool2d
    for out_ch, p in zip(cfg.filters, cfg.block_dropouts()):
        for _ in range(cfg.convs_per_block):
            # With BN right after the conv, its bias is redundant (BN subtracts the mean).
            bias = cfg.batchnorm != "before"
            layers.append(nn.Conv2d(channels, out_ch, cfg.kernel_size, padding="same", bias=bias))
            layers += norm_act(cfg.batchnorm, cfg.activation, out_ch)
            channels = out_ch
        if size >= 2:  # never pool a 1x1 map away (deep nets on 28x28 inputs)
            layers.append(pool(2))
            size //= 2
        if p > 0:
            layers.append(nn.Dropout(p))
    if cfg.global_pool:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        features = channels
    else:
        layers.append(nn.Flatten())
        features = channels * size * size
    for width in cfg.hidden:
        if cfg.dense_dropout > 0:
            layers.append(nn.Dropout(cfg.dense_dropout))
        layers.append(nn.Linear(features, width, bias=cfg.batchnorm != "before"))
        layers += norm_act(cfg.batchnorm, cfg.activation, width, nn.BatchNorm1d)
        features = width
    if cfg.dense_dropout > 0:
        layers.append(nn.Dropout(cfg.dense_dropout))
    layers.append(nn.Linear(features, cfg.num_classes))
    model = nn.Sequential(*layers)
    init_weights(model, cfg.init, cfg.activation)
    return model
