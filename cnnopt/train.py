"""The training loop: ``train_one_epoch`` and ``evaluate`` (as in torchvision's reference train.py)
and ``fit``, which runs epochs and hands each epoch's statistics to a callback.

No Optuna here. The objective passes an ``on_epoch`` callback that reports to the trial and raises
``optuna.TrialPruned``; ``cnnopt train`` passes one that draws a progress bar. Both see the same
loop, so a retrained configuration behaves exactly as it did in its trial.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnopt.augment import make_augment
from cnnopt.config import RunConfig, TrainConfig
from cnnopt.data.tensors import DeviceLoader, Split, StreamLoader, is_lazy, make_loader
from cnnopt.errors import DeviceError, TrialFailed
from cnnopt.metrics import classification_metrics
from cnnopt.models import build_model, count_params


class Interrupted(Exception):
    """Raised inside the loop when the worker was asked to stop (Ctrl-C on `cnnopt run`)."""


class CudaContextLost(Exception):
    """A sticky CUDA error (an illegal address, a device-side assert, an ECC error...): this
    process's CUDA context is unusable, every later CUDA call fails. The trial ends FAIL with
    ``reason`` and the worker process must be replaced (see worker._work)."""

    def __init__(self, reason: str, trial_id: int | None = None):
        super().__init__(reason)
        self.reason, self.trial_id = reason, trial_id


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    metrics: dict[str, float]  # val_loss, val_accuracy (and multi-label metrics)
    seconds: float
    images_per_second: float
    lr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    history: list[EpochStats] = field(default_factory=list)
    params: int = 0
    flops: int = 0  # forward FLOPs per image, from torch.utils.flop_counter
    device: str = "cpu"
    amp: str = "off"
    channels_last: bool = False
    stopped_early: bool = False
    model: nn.Module | None = None

    def last(self, key: str) -> float:
        return self.history[-1].metrics[key]


# -- device and precision ------------------------------------------------------------------------


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a torch.device; a GPU this machine does not
    have is a DeviceError (one line), not a CUDA error at the first tensor."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        from cnnopt.devices import check_gpus

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        check_gpus(spec, [dev.index or 0], count)
        dev = torch.device("cuda", dev.index or 0)
    return dev


def use_device(spec: str | torch.device = "auto") -> torch.device:
    """``resolve_device``, and on CUDA make the device current: everything that uses "the current
    device" (the DataLoader's pin-memory thread, pinned host memory, the allocator's caches)
    then stays on it instead of creating a context on GPU 0."""
    dev = resolve_device(str(spec))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 (AVX512-BF16 / AMX): there bf16 autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device | str | None = None) -> dict[str, Any]:
    """The machine a result came from: CPU, cores, threads, and the GPU ``device`` names (asked
    of that device: an index-0 query would create a CUDA context on GPU 0). Stored with every
    trial and final training: the same params and seed give the same curve to the last digit
    only on the same kind of CPU or GPU with the same torch thread count (bf16 kernels and
    reductions are split differently), so a rebuild that differs says why."""
    out = {
        "cpu": cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device is None:  # no device named: the current GPU, if this process already uses CUDA
        device = torch.cuda.current_device() if torch.cuda.is_initialized() else "cpu"
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "off":
        return None
    if cfg.amp == "bf16":
        return torch.bfloat16
    if cfg.amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        # bf16 only where the tensor cores do it natively (compute capability 8.0: A100, L4,
        # H100 and later). is_bf16_supported() is True on V100 and T4 too, where bf16 is
        # emulated without tensor cores: those get fp16 (their tensor cores) with a GradScaler.
        # Below 7.0 (Pascal: P100, P40, GTX 10x0) there are no tensor cores: fp16 saves memory
        # but autocast's casts and the GradScaler make it slower than fp32 (and on 6.1 fp16
        # arithmetic runs at 1/64 rate), so those train in fp32 without autocast.
        # Asked of this device, not of the current one (which may be another GPU).
        capability = torch.cuda.get_device_capability(device)
        if capability < (7, 0):
            return None
        return torch.bfloat16 if capability >= (8, 0) else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def use_channels_last(cfg: RunConfig) -> bool:
    if cfg.train.channels_last != "auto":
        return cfg.train.channels_last == "on"
    return cfg.model.family != "mlp"  # convolutions in NHWC are faster with oneDNN and cuDNN


# -- optimizers and schedules --------------------------------------------------------------------


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    wd, lr, opt = cfg.weight_decay, cfg.lr, cfg.optimizer
    if opt == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if opt in ("sgd_momentum", "sgd_nesterov"):
        return torch.optim.SGD(
            params, lr=lr, momentum=cfg.momentum, nesterov=opt == "sgd_nesterov", weight_decay=wd
        )
    if opt == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    cls = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adamax": torch.optim.Adamax,
        "adagrad": torch.optim.Adagrad,
        "adadelta": torch.optim.Adadelta,
        "nadam": torch.optim.NAdam,
    }[opt]
    return cls(params, lr=lr, weight_decay=wd)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """The schedule, and whether it steps per batch (one-cycle) rather than per epoch."""
    s = cfg.schedule
    if s == "step":  # R2: StepLR x0.1 every 10 epochs
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma), False
    if s == "step_decay":  # R1: lr = lr0 * gamma ** floor((1 + epoch) / step_size)
        fn = lambda e: cfg.gamma ** math.floor((1 + e) / cfg.step_size)  # noqa: E731
        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn), False
    if s == "cosine":
        total = cfg.epochs * steps_per_epoch
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total), True
    if s == "onecycle":
        return (
            torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch
            ),
            True,
        )
    return None, False


# -- measuring -----------------------------------------------------------------------------------


def count_flops(model: nn.Module, in_channels: int, size: int, device: torch.device) -> int:
    """Forward FLOPs for one image, counted by PyTorch's own FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


# -- the loop ------------------------------------------------------------------------------------


def _loss_fn(
    multilabel: bool, label_smoothing: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if multilabel:
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits.float(), y.float())
    return lambda logits, y: F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DeviceLoader,
    loss_fn: Callable,
    cfg: TrainConfig,
    amp: torch.dtype | None,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> float:
    """One pass over the training batches; returns the mean training loss."""
    model.train()
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    seen = 0
    l1_params = (
        [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1] if cfg.l1 else []
    )
    for i, (x, y) in enumerate(loader):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(model(x), y)
        if l1_params:
            loss = loss + cfg.l1 * sum(p.abs().sum() for p in l1_params)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach() * x.shape[0]
        seen += x.shape[0]
        # A .item() forces a device sync: do it every 50 batches, not every batch.
        if i % 50 == 49:
            if not math.isfinite(total.item()):
                raise TrialFailed(
                    f"training loss became {total.item()} (diverged) in batch {i + 1}"
                )
            if should_stop is not None and should_stop():
                raise Interrupted()
    mean = total.item() / max(seen, 1)
    if not math.isfinite(mean):
        raise TrialFailed(f"training loss became {mean} (diverged)")
    return mean


@torch.no_grad()
def predict(
    model: nn.Module, loader: DeviceLoader, amp: torch.dtype | None, tta_flip: bool = False
) -> torch.Tensor:
    """Logits for every image of the loader, in order (averaged with the mirror image for TTA)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for x, _ in loader:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x).float()
            if tta_flip:
                logits = (logits + model(x.flip(-1)).float()) / 2
        out.append(logits)
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    loader: DeviceLoader,
    loss_fn: Callable,
    amp: torch.dtype | None,
    multilabel: bool = False,
    tta_flip: bool = False,
    threshold: float = 0.5,
    prefix: str = "val_",
) -> dict[str, float]:
    logits = predict(model, loader, amp, tta_flip)
    y = loader.y
    metrics = {"loss": float(loss_fn(logits, y))}
    metrics.update(classification_metrics(logits, y, multilabel, threshold))
    return {prefix + k: v for k, v in metrics.items()}


def make_loaders(
    cfg: RunConfig, split: Split, multilabel: bool, channels_last: bool, size: int | None = None
) -> tuple[DeviceLoader | StreamLoader, DeviceLoader | StreamLoader]:
    """Train and validation loaders: DeviceLoaders for a cached split, StreamLoaders (DataLoader
    workers: ``cfg.data.stream_workers``, None = automatic) for a streamed one."""
    t = cfg.train
    workers = cfg.data.stream_workers
    if is_lazy(split.x_train) and size is None:
        raise TrialFailed("a streamed dataset needs image_size (batches need one image size)")
    train = make_loader(
        split.x_train, split.y_train, split.mean, split.std, t.batch_size, workers,
        shuffle=True, drop_last=split.x_train.shape[0] > t.batch_size,
        augment=make_augment(cfg.augment, n_classes=cfg.model.num_classes, multilabel=multilabel, seed=t.seed),
        seed=t.seed, channels_last=channels_last, image_size=size,
    )  # fmt: skip
    val = make_loader(
        split.x_val, split.y_val, split.mean, split.std, max(t.batch_size, 512), workers,
        channels_last=channels_last, image_size=size,
    )  # fmt: skip
    return train, val


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(seed)  # the current device only: the others are not ours


def fit(
    cfg: RunConfig,
    split: Split,
    *,
    multilabel: bool = False,
    device: torch.device | str = "cpu",
    on_start: Callable[[TrainResult], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    evaluate_each_epoch: bool = True,
) -> TrainResult:
    """Build the model from ``cfg.model`` and train it on ``split`` (already on ``device``; a
    streamed split's images stay on disk and are read per batch, see ``make_loaders``).

    ``on_start`` sees the built model's size (params, FLOPs) before the first epoch; ``on_epoch`` sees every epoch's statistics and may raise to stop (the objective raises
    optuna.TrialPruned). ``resume`` is a checkpoint dict (model, optimizer, scheduler, GradScaler
    state, epoch) from ``on_checkpoint``; training goes on from the epoch after it.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the loader's pin-memory thread uses the current device
    t = cfg.train
    seed_everything(t.seed)
    cl = use_channels_last(cfg)
    amp = amp_dtype(t, device)
    size = cfg.data.image_size
    model = build_model(cfg.model).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    result = TrainResult(
        params=count_params(model),
        flops=count_flops(model, cfg.model.in_channels, cfg.model.input_size, device),
        device=str(device),
        amp=str(amp).replace("torch.", "") if amp else "off",
        channels_last=cl,
        model=model,
    )
    if on_start is not None:
        on_start(result)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_loader, val_loader = make_loaders(cfg, split, multilabel, cl, size)
    optimizer = make_optimizer(model, t)
    scheduler, per_batch = make_scheduler(optimizer, t, len(train_loader))
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    loss_fn = _loss_fn(multilabel, t.label_smoothing)
    eval_loss = _loss_fn(multilabel, 0.0)
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume.get("scheduler"):
            scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])  # the fp16 loss scale it had found
        start = int(resume["epoch"])
        result.history = [EpochStats(**h) for h in resume.get("history", [])]
        train_loader.generator.manual_seed(t.seed + start)
    best_loss, bad_epochs = math.inf, 0
    for epoch in range(start + 1, t.epochs + 1):
        t0 = time.perf_counter()
        train_loss = train_one_epoch(
            model, optimizer, train_loader, loss_fn, t, amp, scaler,
            scheduler if per_batch else None, should_stop,
        )  # fmt: skip
        if scheduler is not None and not per_batch:
            scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        metrics = (
            evaluate(model, val_loader, eval_loss, amp, multilabel, t.tta_flip, t.threshold)
            if evaluate_each_epoch and val_loader.n_images
            else {}
        )
        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            metrics=metrics,
            seconds=seconds,
            images_per_second=train_loader.n_images / seconds,
            lr=optimizer.param_groups[0]["lr"],
        )
        result.history.append(stats)
        if on_checkpoint is not None:
            on_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "epoch": epoch,
                    "config": cfg.to_dict(),
                    "history": [h.to_dict() for h in result.history],
                }
            )
        if on_epoch is not None:
            on_epoch(stats)
        if t.patience is not None and "val_loss" in metrics:
            if metrics["val_loss"] < best_loss - 1e-4:
                best_loss, bad_epochs = metrics["val_loss"], 0
            else:
                bad_epochs += 1
                if bad_epochs >= t.patience:
                    result.stopped_early = True
                    break
    return result
