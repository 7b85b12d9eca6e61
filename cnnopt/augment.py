"""Batched, on-device augmentation of training batches.

Every image of a batch gets its own random flip, shift, zoom, rotation, brightness/contrast and
cutout, drawn as tensors on the batch's device: no per-image Python and no trip to the CPU.
torchvision.transforms.v2 draws one set of random parameters per call (a whole batch would share
one shift), so per-image geometry goes through one affine_grid/grid_sample call instead; v2's
MixUp and CutMix, which are batch operations by design, are used as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cnnopt.config import AugmentConfig

Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def is_identity(cfg: AugmentConfig) -> bool:
    return cfg == AugmentConfig()


def make_augment(
    cfg: AugmentConfig, n_classes: int, multilabel: bool = False, seed: int = 0
) -> Augment | None:
    """An augmentation function for float batches in [0, 1], or None when everything is off."""
    if is_identity(cfg):
        return None
    gen: dict[torch.device, torch.Generator] = {}

    def rng(device: torch.device) -> torch.Generator:
        if device not in gen:
            gen[device] = torch.Generator(device=device).manual_seed(seed + 1)
        return gen[device]

    mix = None
    if not multilabel and (cfg.mixup > 0 or cfg.cutmix > 0):
        from torchvision.transforms import v2

        choices = []
        if cfg.mixup > 0:
            choices.append(v2.MixUp(alpha=cfg.mixup, num_classes=n_classes))
        if cfg.cutmix > 0:
            choices.append(v2.CutMix(alpha=cfg.cutmix, num_classes=n_classes))
        mix = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    def augment(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = rng(x.device)
        b = x.shape[0]
        if cfg.hflip:
            flip = torch.rand(b, device=x.device, generator=g) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = _geometry(x, cfg, g)
        if cfg.brightness > 0 or cfg.contrast > 0:
            x = _photometric(x, cfg, g)
        if cfg.cutout > 0:
            x = _cutout(x, cfg.cutout, g)
        if mix is not None:
            x, y = mix(x, y)
        elif multilabel and cfg.mixup > 0:
            lam = float(torch.distributions.Beta(cfg.mixup, cfg.mixup).sample())
            perm = torch.randperm(b, device=x.device, generator=g)
            x = lam * x + (1 - lam) * x[perm]
            y = lam * y.float() + (1 - lam) * y[perm].float()
        return x, y

    return augment


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, device=device, generator=g) * (high - low) + low


def _geometry(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Per-image shift (crop_padding / translate), zoom and rotation in one grid_sample."""
    size = x.shape[-1]
    shift = max(cfg.translate, cfg.crop_padding / size)
    if shift == 0 and cfg.scale == 0 and cfg.rotation == 0:
        return x
    b, dev = x.shape[0], x.device
    angle = _uniform(b, -cfg.rotation, cfg.rotation, g, dev) * (math.pi / 180)
    zoom = _uniform(b, 1 - cfg.scale, 1 + cfg.scale, g, dev)
    if cfg.crop_padding and not cfg.translate:
        # whole-pixel shifts, like RandomCrop(padding=p): offsets in {-p..p} pixels
        p = cfg.crop_padding
        tx = torch.randint(-p, p + 1, (b,), device=dev, generator=g) * (2 / size)
        ty = torch.randint(-p, p + 1, (b,), device=dev, generator=g) * (2 / size)
    else:
        tx = _uniform(b, -2 * shift, 2 * shift, g, dev)
        ty = _uniform(b, -2 * shift, 2 * shift, g, dev)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(
        x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    mode = "nearest" if cfg.rotation == 0 and cfg.scale == 0 else "bilinear"
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _photometric(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    b, dev = x.shape[0], x.device
    if cfg.brightness > 0:
        x = x * _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, g, dev).view(-1, 1, 1, 1)
    if cfg.contrast > 0:
        c = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, g, dev).view(-1, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean
    return x.clamp_(0, 1)


def _cutout(x: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
    """Erase one side x side square per image, at a random centre (DeVries & Taylor 2017)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1, 1), device=x.device, generator=g)
    cx = torch.randint(0, w, (b, 1, 1), device=x.device, generator=g)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys - cy).abs() <= side // 2) & ((xs - cx).abs() <= side // 2)
    return x.masked_fill(inside.unsqueeze(1), 0.0)
