"""torchvision backbones for transfer learning (reports R4 and R5): ResNet-18/50, MobileNetV3
small/large, ShuffleNetV2 and VGG16, from scratch or with ImageNet weights.

``build_transfer(cfg)`` returns an ``InputAdapter`` wrapping the torchvision model:

* head: the last Linear is replaced by one with ``num_classes`` outputs, preceded by
  ``Dropout(dense_dropout)`` when that is > 0. For MobileNetV3 and VGG16, whose classifiers end
  in Dropout -> Linear, that torchvision Dropout is removed so ``dense_dropout`` alone decides the
  dropout in front of the new head (VGG's earlier Dropout between its hidden layers stays).
* weights: ``pretrained=True`` loads the ImageNet ``DEFAULT`` weights from torch's hub cache
  (``torch.hub.get_dir()/checkpoints``), downloading them only where the file is not there. When
  neither works (an offline machine) a ConfigError names the exact file, its URL and the folder
  to put it in.
* grey inputs: pretrained models see the grey channel repeated three times (``x.expand``, no
  copy), so the ImageNet first-layer filters apply unchanged. From scratch, the first convolution
  is instead rebuilt with ``in_channels`` inputs (a third of its FLOPs, same architecture).
* small inputs: every family downsamples 32x, so 28x28 images would vanish before the last stage
  (VGG16 fails outright). The adapter upsamples, with bilinear ``F.interpolate`` on the batch,
  anything smaller than ``MIN_SIZE_SCRATCH`` (32) from scratch, or ``MIN_SIZE_PRETRAINED`` (96)
  with ImageNet weights, whose filters expect objects tens of pixels wide. 224 would match
  ImageNet but costs ~50x the FLOPs of 32 (too slow for CPU studies); to get it anyway set
  ``image_size`` (the data side resizes once, or per batch on the device).
* freeze: ``none``; ``backbone`` (only the new head trains); ``last:K`` (the head and the last K
  blocks train: ResNet's stem + 4 stages, ShuffleNet's 5 stages, MobileNet's feature blocks and
  hidden classifier layer, VGG's 5 conv stages and 2 hidden classifier layers; K larger than the
  number of blocks trains everything). BatchNorm layers inside frozen parts stay in eval mode even
  while the model trains: otherwise their running statistics would drift to the new data under
  weights that can no longer adapt to them.

Inputs are normalised with the dataset's own mean/std (as R4 did), not ImageNet's.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from cnnopt.config import TORCHVISION_FAMILIES, ModelConfig
from cnnopt.errors import ConfigError

MIN_SIZE_SCRATCH = 32
MIN_SIZE_PRETRAINED = 96
DOWNLOAD_TIMEOUT_S = 30  # per socket operation: a firewalled machine fails instead of hanging


class InputAdapter(nn.Module):
    """Repeats a grey channel for RGB-pretrained weights and upsamples too-small batches."""

    def __init__(self, net: nn.Module, repeat_grey: bool, min_size: int):
        super().__init__()
        self.net = net
        self.repeat_grey = repeat_grey
        self.min_size = min_size
        self.frozen_norms: list[nn.Module] = []  # plain list: not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat_grey and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            s = self.min_size / min(h, w)
            x = F.interpolate(
                x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False
            )
        return self.net(x)

    def train(self, mode: bool = True) -> InputAdapter:
        super().train(mode)
        for m in self.frozen_norms:
            m.eval()
        return self


def build_transfer(cfg: ModelConfig) -> nn.Module:
    if cfg.family not in TORCHVISION_FAMILIES:
        raise ConfigError(
            f"family={cfg.family!r} is not a torchvision family ({', '.join(TORCHVISION_FAMILIES)})"
        )
    if cfg.pretrained and cfg.in_channels not in (1, 3):
        raise ConfigError(
            f"pretrained {cfg.family} needs 1 or 3 input channels, not in_channels={cfg.in_channels}"
        )
    keep_last = _parse_freeze(cfg.freeze)
    net = _load(cfg)
    if not cfg.pretrained and cfg.in_channels != 3:
        _adapt_first_conv(net, cfg.in_channels)  # before _structure, which holds module references
    blocks, head_parent, head_key, drop_key = _structure(cfg.family, net)

    linear = nn.Linear(_child(head_parent, head_key).in_features, cfg.num_classes)
    head: nn.Module = (
        nn.Sequential(nn.Dropout(cfg.dense_dropout), linear) if cfg.dense_dropout > 0 else linear
    )
    _set_child(head_parent, head_key, head)
    if drop_key is not None:
        _set_child(head_parent, drop_key, nn.Identity())

    model = InputAdapter(
        net,
        repeat_grey=cfg.pretrained and cfg.in_channels == 1,
        min_size=MIN_SIZE_PRETRAINED if cfg.pretrained else MIN_SIZE_SCRATCH,
    )
    if keep_last is not None:
        trainable = (
            [m for block in blocks[max(0, len(blocks) - keep_last) :] for m in block]
            if keep_last
            else []
        )
        for p in net.parameters():
            p.requires_grad_(False)
        for m in [*trainable, head]:
            for p in m.parameters():
                p.requires_grad_(True)
        model.frozen_norms = [
            m
            for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in m.parameters())
        ]
    return model


def _parse_freeze(freeze: str) -> int | None:
    """None: train everything; K: train the head and the last K blocks (0 for ``backbone``)."""
    if freeze == "none":
        return None
    if freeze == "backbone":
        return 0
    k = freeze.removeprefix("last:")
    if freeze.startswith("last:") and k.isdigit():
        return int(k)
    raise ConfigError(f"freeze={freeze!r} is not none, backbone or last:K (K a whole number)")


# -- weights -------------------------------------------------------------------------------------


def weights_file(family: str) -> tuple[Path, str]:
    """Where torch's hub cache keeps the ImageNet weights of ``family``, and their URL."""
    from torchvision.models import get_model_weights

    url = get_model_weights(family).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name, url


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _load(cfg: ModelConfig) -> nn.Module:
    from torchvision.models import get_model, get_model_weights

    if not cfg.pretrained:
        return get_model(cfg.family, weights=None)
    path, url = weights_file(cfg.family)
    cached = path.is_file()
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            # A cached file is read without any network access; otherwise torch.hub downloads it.
            return get_model(cfg.family, weights=get_model_weights(cfg.family).DEFAULT)
    except Exception as e:  # noqa: BLE001 - URLError, timeout, hash mismatch, truncated file...
        why = f"{type(e).__name__}: {str(e).strip()[:200]}"
        if cached:
            raise ConfigError(
                f"pretrained {cfg.family}: cannot load {path} ({why}); delete it and download "
                f"{url} again into {path.parent}"
            ) from None
        raise ConfigError(
            f"pretrained {cfg.family}: ImageNet weights {path.name} are not in {path.parent} and "
            f"could not be downloaded ({why}); download {url} on a connected machine and put it "
            f"in {path.parent} (or set TORCH_HOME), or set pretrained=false"
        ) from None


# -- per-family structure ------------------------------------------------------------------------


def _structure(
    family: str, net: nn.Module
) -> tuple[list[list[nn.Module]], nn.Module, str | int, int | None]:
    """(blocks from input to output, the head's parent, the head's key in it, the key of a
    Dropout right before the head to remove, if any)."""
    if family.startswith("resnet"):
        stem = [net.conv1, net.bn1]
        return [stem, [net.layer1], [net.layer2], [net.layer3], [net.layer4]], net, "fc", None
    if family.startswith("shufflenet"):
        stages = [[net.conv1], [net.stage2], [net.stage3], [net.stage4], [net.conv5]]
        return stages, net, "fc", None
    cls = net.classifier
    if family.startswith("mobilenet_v3"):
        # classifier: Linear, Hardswish, Dropout, Linear
        return [[b] for b in net.features] + [[cls[0]]], cls, 3, 2
    if family == "vgg16":
        # features: 5 conv stages, each ended by a MaxPool; classifier: (Linear ReLU Dropout) x2, Linear
        stages: list[list[nn.Module]] = [[]]
        for m in net.features:
            stages[-1].append(m)
            if isinstance(m, nn.MaxPool2d):
                stages.append([])
        stages = [s for s in stages if s]
        return stages + [[cls[0]], [cls[3]]], cls, 6, 5
    raise ConfigError(
        f"no head rule for family {family!r}"
    )  # pragma: no cover - FAMILIES is closed


def _adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    """Rebuild the first Conv2d for ``in_channels`` inputs (from-scratch models only)."""
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    parent_name, _, attr = name.rpartition(".")
    _set_child(net.get_submodule(parent_name), attr, new)


def _child(parent: nn.Module, key: str | int) -> nn.Module:
    return parent.get_submodule(str(key))


def _set_child(parent: nn.Module, key: str | int, module: nn.Module) -> None:
    # Sequential children are named "0", "1", ...: setattr with that name replaces them in place.
    setattr(parent, str(key), module)
