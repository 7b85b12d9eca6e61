"""Bench section ``throughput``: cnnopt's training step against report R2's loop.

cnnopt's step (device-resident data, channels_last, bf16 autocast where the device has it natively)
against R2's loop (torchvision FashionMNIST + ToTensor + DataLoader(batch 128, shuffle) + the same
CNN-BN + Adam, fp32, NCHW), same model, batch, threads and images. Variants run interleaved in
chunks (round-robin, rotating order), so a noisy neighbour slows every variant alike. Plus a check
that bf16 costs no accuracy. Precision follows training's own rule (``train.amp_dtype``).
"""

from __future__ import annotations

import gzip
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from cnnopt.bench.common import (
    R2_EPOCH_IMAGES,
    BenchOptions,
    Context,
    Row,
    base_cfg,
    median_spread,
    r2_model_flat,
    sync,
)
from cnnopt.config import DataConfig, RunConfig


def torchvision_root(opts: BenchOptions, workdir: Path) -> Path:
    """A folder torchvision's FashionMNIST class reads offline: <root>/FashionMNIST/raw/<idx>.

    The IDX files are decompressed from the data dir when it has them (the files R2 read), else
    written from the loaded tensors (the synthetic dataset of the smoke test). Never downloads.
    """
    from cnnopt.data.registry import _IDX_FILES, _find_idx, data_dir, load_dataset

    raw = workdir / "torchvision" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    cfg = DataConfig(dataset=opts.dataset, data_dir=opts.data_dir)
    found = {k: _find_idx(data_dir(cfg), v) for k, v in _IDX_FILES.items()}
    if opts.dataset in ("fashion_mnist", "mnist") and all(found.values()):
        for key, src in found.items():
            dst = raw / _IDX_FILES[key]
            if dst.exists():
                continue
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rb") as f_in, open(dst, "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
    else:
        ds = load_dataset(cfg)
        x_test = ds.x_test if ds.x_test is not None else ds.x_train[:1]
        y_test = ds.y_test if ds.y_test is not None else ds.y_train[:1]
        _write_idx(raw / _IDX_FILES["train_x"], ds.x_train[:, 0])
        _write_idx(raw / _IDX_FILES["train_y"], ds.y_train.to(torch.uint8))
        _write_idx(raw / _IDX_FILES["test_x"], x_test[:, 0])
        _write_idx(raw / _IDX_FILES["test_y"], y_test.to(torch.uint8))
    return workdir / "torchvision"


def _write_idx(path: Path, t: torch.Tensor) -> None:
    header = bytes([0, 0, 0x08, t.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in t.shape)
    path.write_bytes(header + t.contiguous().numpy().tobytes())


class Variant:
    """One way of training: ``warmup()`` runs a batch untimed, ``train(indices)`` trains on those
    training images (one pass, shuffled) and returns the seconds it took."""

    name: str
    note: str = ""

    def warmup(self) -> None: ...

    def train(self, indices: torch.Tensor) -> float: ...


class R2Loop(Variant):
    """Report R2's loop, as its authors wrote it (and as Ray Tune's PyTorch tutorial does)."""

    def __init__(self, root: Path, cfg: RunConfig, device: torch.device):
        from torch.utils.data import DataLoader, Subset
        from torchvision import datasets, transforms

        self.name = "R2 loop: torchvision DataLoader, fp32, NCHW"
        self.DataLoader, self.Subset = DataLoader, Subset
        self.trainset = datasets.FashionMNIST(
            root=str(root), train=True, download=False, transform=transforms.ToTensor()
        )
        from cnnopt.models import build_model

        torch.manual_seed(0)
        self.device = device
        self.batch = cfg.train.batch_size
        self.model = build_model(cfg.model).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.loss = torch.nn.CrossEntropyLoss()

    def _loop(self, indices: torch.Tensor, max_batches: int | None = None) -> None:
        loader = self.DataLoader(
            self.Subset(self.trainset, indices.tolist()), batch_size=self.batch, shuffle=True
        )
        self.model.train()
        for i, (inputs, labels) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            outputs = self.model(inputs)
            loss = self.loss(outputs, labels)
            loss.backward()
            self.optimizer.step()
        sync(self.device)

    def warmup(self) -> None:
        self._loop(torch.arange(self.batch), 1)

    def train(self, indices: torch.Tensor) -> float:
        t0 = time.perf_counter()
        self._loop(indices)
        return time.perf_counter() - t0


class CnnoptStep(Variant):
    """cnnopt's trainer: the model as ``train.fit`` builds it, a ``DeviceLoader`` over the
    device-resident uint8 images, and ``train.train_one_epoch`` (the very loop trials run)."""

    def __init__(self, name: str, cfg: RunConfig, split, device: torch.device, compile_: bool):
        from cnnopt.models import build_model
        from cnnopt.train import _loss_fn, amp_dtype, make_optimizer, use_channels_last

        self.name = name
        self.cfg = cfg
        self.split = split
        self.device = device
        self.cl = use_channels_last(cfg)
        self.amp = amp_dtype(cfg.train, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as train.fit sets it
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device)
        if self.cl:
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(model, cfg.train)
        self.compiled = compile_
        self.model = torch.compile(model) if compile_ else model
        self.loss_fn = _loss_fn(False, 0.0)
        self.compile_seconds = 0.0
        self.epoch = 0

    def _loader(self, indices: torch.Tensor):
        from cnnopt.data.tensors import DeviceLoader

        idx = indices.to(self.split.x_train.device)
        self.epoch += 1
        return DeviceLoader(
            self.split.x_train[idx], self.split.y_train[idx], self.split.mean, self.split.std,
            self.cfg.train.batch_size, shuffle=True, drop_last=False, seed=self.epoch,
            channels_last=self.cl,
        )  # fmt: skip

    def _run(self, indices: torch.Tensor) -> None:
        from cnnopt.train import train_one_epoch

        train_one_epoch(
            self.model, self.optimizer, self._loader(indices), self.loss_fn, self.cfg.train,
            self.amp,
        )  # fmt: skip
        sync(self.device)

    def warmup(self) -> None:
        t0 = time.perf_counter()
        # a compiled model traces forward and backward on its first batches: two warm-up batches
        for _ in range(2 if self.compiled else 1):
            self._run(torch.arange(self.cfg.train.batch_size))
        self.compile_seconds = time.perf_counter() - t0

    def train(self, indices: torch.Tensor) -> float:
        t0 = time.perf_counter()
        self._run(indices)
        return time.perf_counter() - t0


def run(opts: BenchOptions, ctx: Context) -> list[Row]:
    """The section as ``run_bench`` calls it; ``throughput_ratio`` is the default variant's ratio."""
    rows = bench_throughput(opts, ctx.workdir, ctx.device)
    default = next((r for r in rows if r.extra.get("default")), None)
    ctx.report.throughput_ratio = default.ratio if default else None
    return rows


def no_bf16_reason(device: torch.device) -> str:
    if device.type == "cuda":
        return "this GPU has no native bf16 (compute capability < 8.0); AMP auto uses fp16"
    return "this CPU has no native bf16 (AVX512-BF16/AMX); cnnopt stays fp32"


def bench_throughput(opts: BenchOptions, workdir: Path, device: torch.device) -> list[Row]:
    from cnnopt.data import load_split
    from cnnopt.train import amp_dtype

    plan = opts.plan
    log = opts.log
    base = base_cfg(opts, **r2_model_flat(), batch_size=128, lr=1e-3, optimizer="adam")
    ds, _ = load_split(base.data, "cpu")
    base = base.replace(
        in_channels=ds.in_channels, input_size=ds.image_size, num_classes=ds.num_classes
    )
    n_train = ds.x_train.shape[0]
    n_images = min(plan.throughput_images, n_train)
    # The whole training set on the device, as a worker holds it, in its file order: chunk i is
    # then the very same images for R2's loop (a Subset of torchvision's dataset) and for cnnopt.
    from cnnopt.data.tensors import Split, channel_stats

    mean, std = channel_stats(ds.x_train)
    full = Split(ds.x_train, ds.y_train, ds.x_train[:0], ds.y_train[:0], mean, std).to(device)
    # The same images, in the same chunks, for every variant (the raw order of the training set).
    chunks = list(torch.arange(n_images).split(plan.chunk_images))

    variants: list[Variant] = [R2Loop(torchvision_root(opts, workdir), base, device)]
    on_cpu = device.type == "cpu"
    # bf16 where training would use it (amp=auto): train.amp_dtype, the rule every trial follows
    # (native bf16 only: AVX512-BF16/AMX CPUs, GPUs of compute capability 8.0 and up).
    has_bf16 = amp_dtype(base.replace(amp="auto").train, device) == torch.bfloat16
    steps = [
        ("cnnopt: device-resident data, fp32, NCHW", dict(amp="off", channels_last="off")),
        ("cnnopt: + channels_last", dict(amp="off", channels_last="on")),
    ]
    if has_bf16:
        steps.append(("cnnopt: + bf16 autocast", dict(amp="bf16", channels_last="on")))
    if not on_cpu:
        steps.append(("cnnopt: + AMP auto (default)", dict(amp="auto", channels_last="auto")))
    for name, flat in steps:
        variants.append(CnnoptStep(name, base.replace(**flat), full, device, compile_=False))
    default_cfg = base.replace(amp="auto", channels_last="auto")
    if plan.compile_variant and on_cpu:
        variants.append(
            CnnoptStep("cnnopt default + torch.compile", default_cfg, full, device, compile_=True)
        )

    log(f"throughput: {len(variants)} variants x {n_images} images, interleaved")
    for v in variants:
        v.warmup()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    # CPU time of this process too: on a shared machine it is far less disturbed by neighbours
    # than wall time (it still counts OpenMP threads spinning at barriers).
    cpu: dict[str, float] = {v.name: 0.0 for v in variants}
    for r, chunk in enumerate(chunks):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]  # rotate
        for v in order:
            c0 = time.process_time()
            times[v.name].append(v.train(chunk))
            cpu[v.name] += time.process_time() - c0

    def ips(v: Variant) -> float:
        return n_images / sum(times[v.name])

    ref = variants[0]
    ref_ips = ips(ref)
    rows: list[Row] = []
    rows.append(
        Row(
            "throughput", ref.name, ref_ips, "images/s", "itself (reference)", ref_ips,
            note=f"{R2_EPOCH_IMAGES / ref_ips:.1f} s per 48k-image epoch; "
            f"{n_images / cpu[ref.name]:,.0f} images per CPU-second",
            extra=_chunk_extra(times[ref.name], chunks, cpu[ref.name]),
        )
    )  # fmt: skip
    default_row: Row | None = None
    from cnnopt.train import amp_dtype, use_channels_last

    want = (amp_dtype(default_cfg.train, device), use_channels_last(default_cfg))
    for v in variants[1:]:
        assert isinstance(v, CnnoptStep)
        cpu_ratio = cpu[ref.name] / cpu[v.name]
        note = (
            f"{R2_EPOCH_IMAGES / ips(v):.1f} s per 48k-image epoch; {n_images / cpu[v.name]:,.0f} "
            f"images per CPU-second ({cpu_ratio:.2f}x the reference's by CPU time)"
        )
        if v.compiled:
            note += f"; compile + 2 warm-up batches {v.compile_seconds:.0f} s"
        row = Row(
            "throughput", v.name, ips(v), "images/s", ref.name, ref_ips, note=note,
            extra={**_chunk_extra(times[v.name], chunks, cpu[v.name]), "amp": str(v.amp), "channels_last": v.cl},
        )  # fmt: skip
        rows.append(row)
        if (v.amp, v.cl) == want and not v.compiled and default_row is None:
            default_row = row
    if default_row is not None:
        default_row.name += "  [cnnopt default]"
        default_row.extra["default"] = True
    if not has_bf16:
        rows.append(
            Row(
                "throughput", "cnnopt: + bf16 autocast", None, "images/s", ref.name, ref_ips,
                note=f"skipped: {no_bf16_reason(device)}",
            )
        )  # fmt: skip
    if not plan.compile_variant:
        rows.append(
            Row(
                "throughput", "cnnopt default + torch.compile", None, "images/s", ref.name,
                ref_ips, note="not timed in --quick (compiling costs tens of seconds); see full mode",
            )
        )  # fmt: skip
    rows.extend(bf16_accuracy_check(opts, base, device, has_bf16))
    return rows


def _chunk_extra(
    times: list[float], chunks: list[torch.Tensor], cpu_seconds: float
) -> dict[str, Any]:
    per_chunk = [len(c) / t for c, t in zip(chunks, times)]
    images = sum(len(c) for c in chunks)
    return {
        "seconds": sum(times),
        "cpu_seconds": cpu_seconds,
        "images_per_cpu_second": images / cpu_seconds if cpu_seconds else None,
        "images": sum(len(c) for c in chunks),
        "chunk_images_per_s": median_spread(per_chunk),
    }


def bf16_accuracy_check(
    opts: BenchOptions, base: RunConfig, device: torch.device, has_bf16: bool
) -> list[Row]:
    """Train R2's model with ``train.fit`` in fp32 and in bf16 autocast (both channels_last), same
    seed and subset; the difference in validation accuracy should be within sampling noise."""
    from cnnopt.data import load_split
    from cnnopt.train import fit

    if not has_bf16:
        return [
            Row("throughput", "val accuracy, bf16 autocast", None, "accuracy",
                "val accuracy, fp32", None,
                note=f"skipped: no native bf16 on this {'GPU' if device.type == 'cuda' else 'CPU'}")
        ]  # fmt: skip
    plan = opts.plan
    cfg = base.replace(
        train_subset=plan.accuracy_subset, epochs=plan.accuracy_epochs, channels_last="on"
    )
    _, split = load_split(cfg.data, device)
    acc = {}
    for amp in ("off", "bf16"):
        res = fit(cfg.replace(amp=amp), split, device=device)
        acc[amp] = res.last("val_accuracy")
    n_val = split.x_val.shape[0]
    p = acc["off"]
    noise = 2 * math.sqrt(max(p * (1 - p), 1e-6) / max(n_val, 1))  # 2 sigma of a binomial
    diff = acc["bf16"] - acc["off"]
    verdict = "within noise" if abs(diff) <= noise else "OUTSIDE noise"
    return [
        Row(
            "throughput", "val accuracy, bf16 autocast", acc["bf16"], "accuracy",
            "val accuracy, fp32", acc["off"],
            note=f"{diff:+.4f} after {plan.accuracy_epochs} epoch(s) on {cfg.data.train_subset} "
            f"images ({verdict}: 2 sigma = {noise:.4f} on {n_val} val images)",
            extra={"diff": diff, "two_sigma": noise, "n_val": n_val},
        )
    ]  # fmt: skip
