"""`cnnopt bench`: measure cnnopt against the way the reports' authors worked, side by side.

Four sections, each a list of rows; every row is one measurement next to its baseline.

1. throughput: cnnopt's training step (device-resident data, channels_last, bf16 autocast where the
   CPU has it) against report R2's loop (torchvision FashionMNIST + ToTensor + DataLoader(batch
   128, shuffle) + the same CNN-BN + Adam, fp32, NCHW), same model, batch, threads and images.
   Variants run interleaved in chunks (round-robin, rotating order), so a noisy neighbour slows
   every variant alike. Plus a check that bf16 costs no accuracy.
2. study: epochs (and wall time) until a study first reaches a target validation accuracy, for
   cnnopt's default TPE + successive halving, random search without pruning, and random search with
   successive halving (Ray Tune's ASHA tutorial), over the same space, data and epochs per trial.
3. scaling: trials/hour with 1, 2 (and 4) workers through the Runner on the journal file storage;
   per-trial overhead (worker start, dataset load, storage calls) as a share of trial time, on the
   file storage and on PostgreSQL when a URL is given.
4. gpu: with CUDA only, throughput and peak memory of 1..k workers sharing one GPU, and the
   placement the runner would choose from measured free memory.

Benchmarks are not tests: nothing here asserts a speed. ``tests/test_bench.py`` runs the suite on
tiny synthetic data and checks the report's shape.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from cnnopt.config import DataConfig, RunConfig

BENCH_STUDY = Path(__file__).with_name("bench_study.py")
R2_EPOCH_IMAGES = 48_000  # R2 trained on 80% of FashionMNIST's 60k training images


# -- plans ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Sizes of one bench run. QUICK fits in < 10 min on a 2-core CPU; TINY is for the smoke test."""

    name: str
    # 1. throughput
    throughput_images: int  # images per variant (R2's loop and each cnnopt variant)
    chunk_images: int  # variants take turns every this many images
    accuracy_subset: int  # bf16-vs-fp32 check: images (train + val) and epochs
    accuracy_epochs: int
    compile_variant: bool  # also time torch.compile (costly to compile: full mode only)
    # 2. study
    study_subset: int
    study_epochs: int  # epochs per trial (the max a pruner lets a trial run)
    study_target: float  # validation accuracy to reach
    study_cap: int  # epochs per study before giving up (the run counts as censored)
    study_extra_variants: bool  # also run EXTRA_STUDY_VARIANTS (full suite)
    # 3. scaling
    scaling_trials: int  # identical trials per worker count
    scaling_epochs: int
    scaling_subset: int
    overhead_trials: int  # in-process trials per storage for the storage-call share
    # 4. gpu
    gpu_max_workers: int
    gpu_images: int


QUICK = Plan(
    "quick",
    throughput_images=20_480, chunk_images=2_560, accuracy_subset=10_000, accuracy_epochs=1,
    compile_variant=False,
    study_subset=5_000, study_epochs=4, study_target=0.84, study_cap=48, study_extra_variants=False,
    scaling_trials=4, scaling_epochs=2, scaling_subset=4_000, overhead_trials=3,
    gpu_max_workers=4, gpu_images=20_480,
)  # fmt: skip
FULL = Plan(
    "full",
    throughput_images=48_000, chunk_images=4_000, accuracy_subset=20_000, accuracy_epochs=2,
    compile_variant=True,
    study_subset=10_000, study_epochs=6, study_target=0.88, study_cap=120, study_extra_variants=True,
    scaling_trials=8, scaling_epochs=3, scaling_subset=10_000, overhead_trials=5,
    gpu_max_workers=8, gpu_images=48_000,
)  # fmt: skip
TINY = Plan(
    "tiny",
    throughput_images=256, chunk_images=128, accuracy_subset=512, accuracy_epochs=1,
    compile_variant=False,
    study_subset=512, study_epochs=2, study_target=0.6, study_cap=4, study_extra_variants=True,
    scaling_trials=2, scaling_epochs=1, scaling_subset=512, overhead_trials=1,
    gpu_max_workers=2, gpu_images=256,
)  # fmt: skip
PLANS = {p.name: p for p in (QUICK, FULL, TINY)}
SECTIONS = ("throughput", "study", "scaling", "gpu")


@dataclass
class BenchOptions:
    plan: Plan = QUICK
    dataset: str = "fashion_mnist"  # the smoke test uses "synthetic"
    data_dir: str | None = None
    device: str = "auto"
    seeds: int = 3
    threads: int | None = None  # None: all cores this process may use
    postgres: str | None = None
    sections: tuple[str, ...] = SECTIONS
    workdir: str | None = None  # temp files (torchvision layout, journals); None: a temp dir
    log: Callable[[str], None] = lambda msg: None


@dataclass
class Row:
    """One measurement and its baseline. ``ratio`` is value / baseline_value (None if either is)."""

    section: str
    name: str
    value: float | None
    unit: str
    baseline: str
    baseline_value: float | None
    ratio: float | None = None
    better: str = "higher"  # which direction of value is better: higher | lower
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratio is None and self.value is not None and self.baseline_value:
            self.ratio = self.value / self.baseline_value


@dataclass
class Report:
    machine: dict[str, Any]
    plan: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    throughput_ratio: float | None = None
    epochs_to_target_ratio: float | None = None
    epochs_to_target_ratio_vs_asha: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = [asdict(r) for r in self.rows]
        return d


# -- machine -------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def n_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    import optuna

    from cnnopt.train import cpu_has_bf16

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": n_cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "optuna": optuna.__version__,
        "python": platform.python_version(),
        "bf16": cpu_has_bf16(),
        "gpu": None,
        "load_average_start": _loadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                "bf16": torch.cuda.is_bf16_supported(),
            }
            for i in range(torch.cuda.device_count())
        ]
        info["cuda"] = torch.version.cuda
    return info


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- shared helpers ------------------------------------------------------------------------------


def r2_model_flat() -> dict[str, Any]:
    """R2's CNN-BN: two 3x3 conv blocks of 32 and 64 filters, each conv followed by BatchNorm then
    ReLU (cnnopt's batchnorm="before" the activation), max-pooling, a dense layer of 128 (R2's
    ``l1``), 10 outputs."""
    return dict(
        family="cnn", conv_blocks=2, filters=[32, 64], kernel_size=3, batchnorm="before",
        activation="relu", hidden=[128], dropout=0.0,
    )  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _base_cfg(opts: BenchOptions, **flat: Any) -> RunConfig:
    return RunConfig.from_flat(
        {"dataset": opts.dataset, "data_dir": opts.data_dir, **flat}, where="cnnopt bench"
    )


# -- 1. throughput -------------------------------------------------------------------------------


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
        _sync(self.device)

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
        _sync(self.device)

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


def bench_throughput(opts: BenchOptions, workdir: Path, device: torch.device) -> list[Row]:
    from cnnopt.data import load_split
    from cnnopt.train import cpu_has_bf16

    plan = opts.plan
    log = opts.log
    base = _base_cfg(opts, **r2_model_flat(), batch_size=128, lr=1e-3, optimizer="adam")
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
    has_bf16 = cpu_has_bf16() if on_cpu else True
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
                note="skipped: this CPU has no native bf16 (AVX512-BF16/AMX); cnnopt stays fp32",
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
        "chunk_images_per_s": _median_spread(per_chunk),
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
                "val accuracy, fp32", None, note="skipped: no native bf16 on this CPU")
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


# -- 2. study efficiency -------------------------------------------------------------------------


STUDY_VARIANTS: dict[str, dict[str, Any]] = {
    # cnnopt's defaults (StudySettings, studies/fashion_cnn_bn.py): TPE after 5 random trials,
    # successive halving with rungs at 1, 2, 4 epochs keeping the top half
    "cnnopt: TPE + successive halving": dict(sampler="tpe", pruner="successive_halving"),
    "random search, no pruning": dict(sampler="random", pruner="none"),
    # Ray Tune's PyTorch tutorial: random search + ASHAScheduler(grace_period=1, reduction_factor=2)
    "random search + successive halving (ASHA)": dict(
        sampler="random", pruner="successive_halving", min_resource=1, reduction_factor=2
    ),
}


# Full suite only, for information (the headline ratios use cnnopt's defaults above): the median
# pruner (cnnopt's default before this measurement) waits for n_startup_trials finished trials,
# so on a budget of a few trials it spends most epochs unpruned.
EXTRA_STUDY_VARIANTS: dict[str, dict[str, Any]] = {
    "TPE + median pruner": dict(sampler="tpe", pruner="median", n_warmup_steps=2),
    "TPE + median pruner, 2 startup trials": dict(
        sampler="tpe", pruner="median", n_startup_trials=2, n_warmup_steps=1
    ),
}


class _TargetReached(Exception):
    pass


class _BudgetSpent(Exception):
    pass


def run_study_to_target(
    opts: BenchOptions, variant: dict[str, Any], seed: int, device: torch.device
) -> dict[str, Any]:
    """Run one study (in-memory storage, sequential trials) until a trial first reports the target
    validation accuracy, or until the epoch cap. Epochs are counted from the trials' reported
    intermediate values: every epoch any trial trained before (and including) the hit."""
    import optuna

    from cnnopt.errors import TrialFailed
    from cnnopt.objective import Objective
    from cnnopt.study import Study

    plan = opts.plan
    overrides = {
        "dataset": opts.dataset,
        "data_dir": opts.data_dir,
        "train_subset": plan.study_subset,
        "epochs": plan.study_epochs,
        "seed": seed,
        "split_seed": 0,
        **variant,
    }
    study = Study.load(BENCH_STUDY, overrides)
    ostudy = optuna.create_study(
        direction="maximize", sampler=study.make_sampler(), pruner=study.make_pruner()
    )
    state = {"epochs": 0, "hit": None}

    def emit(event: dict) -> None:
        if event["event"] != "epoch":
            return
        state["epochs"] += 1
        if event["value"] >= plan.study_target:
            state["hit"] = (event["trial"], event["epoch"])
            raise _TargetReached()
        if state["epochs"] >= plan.study_cap:
            raise _BudgetSpent()

    objective = Objective(study, device, emit=emit)
    t0 = time.perf_counter()
    with contextlib.suppress(_TargetReached, _BudgetSpent):
        ostudy.optimize(objective, n_trials=10_000, catch=(TrialFailed,), gc_after_trial=False)
    seconds = time.perf_counter() - t0
    trials = ostudy.get_trials(deepcopy=False)
    epochs = sum(len(t.intermediate_values) for t in trials)
    best = max((max(t.intermediate_values.values(), default=0.0) for t in trials), default=0.0)
    pruned = sum(1 for t in trials if t.state == optuna.trial.TrialState.PRUNED)
    return {
        "seed": seed,
        "reached": state["hit"] is not None,
        "epochs": epochs,
        "counted_by_callback": state["epochs"],
        "seconds": seconds,
        "trials": len(trials),
        "pruned": pruned,
        "best": best,
        "hit_trial": state["hit"][0] if state["hit"] else None,
    }


def bench_study(opts: BenchOptions, device: torch.device) -> tuple[list[Row], dict[str, Any]]:
    from cnnopt.data import load_split
    from cnnopt.study import Study

    plan = opts.plan
    # Load the data once before any clock starts: every variant then finds it in the cache, as a
    # worker's second trial does.
    overrides = {
        "dataset": opts.dataset,
        "data_dir": opts.data_dir,
        "train_subset": plan.study_subset,
    }
    warm = Study.load(BENCH_STUDY, {**overrides, "epochs": 1})
    load_split(warm.base_config().data, device)
    # And one untimed epoch: the first training of a process pays one-off costs (oneDNN primitive
    # creation, allocator growth) that would otherwise land on whichever variant runs first.
    import optuna

    from cnnopt.objective import Objective

    Objective(warm, device)(optuna.trial.FixedTrial(FIXED_PARAMS))
    variants = {**STUDY_VARIANTS, **(EXTRA_STUDY_VARIANTS if plan.study_extra_variants else {})}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for seed in range(opts.seeds):
        for name, variant in variants.items():
            r = run_study_to_target(opts, variant, seed, device)
            results[name].append(r)
            opts.log(
                f"study seed {seed} {name}: {'reached' if r['reached'] else 'NOT reached'} "
                f"after {r['epochs']} epochs, {r['trials']} trials, {r['seconds']:.0f} s"
            )
    names = list(variants)  # the three compared first, then the full suite's extras
    med = {n: statistics.median(r["epochs"] for r in results[n]) for n in names}
    secs = {n: statistics.median(r["seconds"] for r in results[n]) for n in names}
    rows: list[Row] = []
    for n in names:
        rs = results[n]
        reached = sum(r["reached"] for r in rs)
        censored = (
            ""
            if reached == len(rs)
            else f"; {len(rs) - reached} run(s) hit the cap (counted as {plan.study_cap})"
        )
        epochs = [r["epochs"] for r in rs]
        base_name = names[1] if n != names[1] else "itself (baseline)"
        base_val = med[names[1]]
        extra = {
            "runs": rs,
            "epochs": _median_spread(epochs),
            "seconds": _median_spread([r["seconds"] for r in rs]),
        }
        note = (
            f"epochs per seed {epochs}; reached {reached}/{len(rs)}{censored}; "
            f"median {secs[n]:.0f} s wall; trials {[r['trials'] for r in rs]}"
        )
        rows.append(Row("study", f"epochs to {plan.study_target:.0%}: {n}", med[n], "epochs",
                        base_name, base_val, better="lower", note=note, extra=extra))  # fmt: skip
    # The same comparison against ASHA, and in wall time.
    rows.append(Row("study", f"epochs to {plan.study_target:.0%}: {names[0]}", med[names[0]], "epochs",
                    names[2], med[names[2]], better="lower", note="the same medians, against ASHA"))  # fmt: skip
    # A median at the cap means that variant mostly never got there: its true value is larger, so
    # a ratio against it is an upper bound (and one of cnnopt's at the cap is a lower bound).
    censored = {n: sum(not r["reached"] for r in results[n]) * 2 > len(results[n]) for n in names}
    for row, base in ((rows[0], names[1]), (rows[-1], names[2])):
        if censored[base] and not censored[names[0]]:
            row.note += (
                f"; baseline median is the cap ({plan.study_cap}): the ratio is an upper bound"
            )
        elif censored[names[0]]:
            row.note += f"; cnnopt's median is the cap ({plan.study_cap}): not conclusive"
    for n in names:
        rows.append(Row("study", f"seconds to {plan.study_target:.0%}: {n}", secs[n], "s",
                        names[1], secs[names[1]], better="lower",
                        note="median wall time; machine-dependent"))  # fmt: skip
    summary = {
        "target": plan.study_target,
        "subset": plan.study_subset,
        "epochs_per_trial": plan.study_epochs,
        "cap": plan.study_cap,
        "seeds": opts.seeds,
        "median_epochs": med,
        "censored_median": censored,
        "epochs_to_target_ratio": med[names[0]] / med[names[1]] if med[names[1]] else None,
        "epochs_to_target_ratio_vs_asha": med[names[0]] / med[names[2]] if med[names[2]] else None,
    }
    return rows, summary


# -- 3. worker scaling and per-trial overhead ----------------------------------------------------

# One mid-size point of the bench space: scaling runs N copies of the same trial, so that trials
# per hour compare worker counts and nothing else.
FIXED_PARAMS: dict[str, Any] = {
    "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "base_filters": 16, "kernel_size": 3,
    "batchnorm": "before", "activation": "relu", "dropout": 0.1, "l1": 64,
}  # fmt: skip


def _scaling_overrides(opts: BenchOptions, name: str) -> dict[str, Any]:
    plan = opts.plan
    return {
        "name": name,
        "dataset": opts.dataset,
        "data_dir": str(Path(opts.data_dir).resolve()) if opts.data_dir else None,
        "train_subset": plan.scaling_subset,
        "epochs": plan.scaling_epochs,
        "sampler": "random",
        "pruner": "none",
    }


def _probe_worker_start(study_path: str, overrides: dict, device: str, queue) -> None:
    """What a worker does before its first trial: import, load the study file, load the data."""
    t0 = time.perf_counter()
    import optuna  # noqa: F401

    from cnnopt.data import load_split
    from cnnopt.objective import Objective  # noqa: F401
    from cnnopt.study import Study

    study = Study.load(study_path, overrides)
    t1 = time.perf_counter()
    load_split(study.base_config().data, device)
    queue.put({"import_s": t1 - t0, "data_s": time.perf_counter() - t1})


def measure_worker_start(opts: BenchOptions, device: str) -> dict[str, float]:
    ctx = mp.get_context("spawn")  # as the runner starts its workers
    queue = ctx.Queue()
    overrides = _scaling_overrides(opts, "bench_probe")
    t0 = time.perf_counter()
    p = ctx.Process(target=_probe_worker_start, args=(str(BENCH_STUDY), overrides, device, queue))
    p.start()
    out = queue.get(timeout=300)
    total = time.perf_counter() - t0
    p.join()
    out["spawn_s"] = max(total - out["import_s"] - out["data_s"], 0.0)
    out["total_s"] = total
    return out


class StorageTimer:
    """Wraps every public method of a storage object (in place) to time the calls made from the
    main thread; nested calls (a storage method calling another) count once."""

    def __init__(self, storage: Any):
        import threading

        self.storage = storage
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        main = threading.main_thread()
        for name in dir(storage):
            if name.startswith("_"):
                continue
            attr = getattr(storage, name)
            if not callable(attr) or isinstance(attr, type):
                continue
            setattr(storage, name, self._wrap(attr, threading, main))

    def _wrap(self, fn: Callable, threading: Any, main: Any) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not main or self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
                self._depth -= 1

        return timed


def measure_storage_share(
    opts: BenchOptions, url: str, label: str, device: torch.device
) -> dict[str, Any]:
    """Run a few identical trials in-process on ``url`` with timed storage calls."""
    import optuna

    from cnnopt.errors import TrialFailed
    from cnnopt.objective import Objective
    from cnnopt.storage import get_storage
    from cnnopt.study import Study

    study = Study.load(BENCH_STUDY, _scaling_overrides(opts, f"bench_overhead_{label}"))
    storage = get_storage(url)
    timer = StorageTimer(storage)
    t0 = time.perf_counter()
    ostudy = optuna.create_study(
        storage=storage, study_name=study.name, direction="maximize",
        sampler=study.make_sampler(), pruner=study.make_pruner(), load_if_exists=True,
    )  # fmt: skip
    setup_s, setup_calls = timer.seconds, timer.calls
    timer.seconds, timer.calls = 0.0, 0
    for _ in range(opts.plan.overhead_trials + 1):
        ostudy.enqueue_trial(FIXED_PARAMS)
    objective = Objective(study, device)
    # One untimed trial first: data loading is measured separately, and the first trial of a
    # process also pays one-off warm-up (oneDNN primitives, allocator) that is not a storage cost.
    ostudy.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
    timer.seconds, timer.calls = 0.0, 0
    t1 = time.perf_counter()
    ostudy.optimize(
        objective, n_trials=opts.plan.overhead_trials, catch=(TrialFailed,), gc_after_trial=False
    )
    trial_s = (time.perf_counter() - t1) / opts.plan.overhead_trials
    out = {
        "storage": label,
        "trial_s": trial_s,
        "storage_s_per_trial": timer.seconds / opts.plan.overhead_trials,
        "storage_calls_per_trial": timer.calls / opts.plan.overhead_trials,
        "create_study_s": setup_s,
        "create_study_calls": setup_calls,
        "first_call_s": t1 - t0,
    }
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()
    return out


@contextlib.contextmanager
def scratch_postgres(url: str) -> Iterator[str]:
    """A throw-away database on the server of ``url`` (dropped afterwards)."""
    import sqlalchemy

    base = sqlalchemy.engine.make_url(url)
    name = f"cnnopt_bench_{os.getpid()}_{int(time.time())}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_scaling(opts: BenchOptions, workdir: Path, device: torch.device) -> list[Row]:
    from cnnopt.runner import Runner, RunOptions, open_study
    from cnnopt.study import Study

    plan = opts.plan
    cores = n_cores()
    device_spec = "cpu" if device.type == "cpu" else opts.device
    counts = [1, 2] + ([4] if cores >= 4 or device.type == "cuda" else [])
    rows: list[Row] = []
    tph: dict[int, float] = {}
    steady: dict[int, float] = {}
    for w in counts:
        name = f"bench_scaling_w{w}"
        overrides = _scaling_overrides(opts, name)
        study = Study.load(BENCH_STUDY, overrides)
        url = str(workdir / f"{name}.journal")
        ostudy = open_study(study, url)
        for _ in range(plan.scaling_trials):
            ostudy.enqueue_trial(FIXED_PARAMS)
        options = RunOptions(
            workers=w, n_trials=plan.scaling_trials, storage=url, device=device_spec,
            progress=False,
        )  # fmt: skip
        summary = Runner(study, overrides, options).run()
        done = summary.states.get("COMPLETE", 0)
        tph[w] = done / summary.seconds * 3600
        # Steady state: from the first trial's start to the last trial's end (no worker start).
        trials = [t for t in open_study(study, url, create=False).get_trials(deepcopy=False)
                  if t.datetime_start and t.datetime_complete]  # fmt: skip
        span = (
            max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        ).total_seconds()
        steady[w] = len(trials) / span * 3600 if span > 0 else float("nan")
        opts.log(f"scaling: {w} worker(s): {done} trials in {summary.seconds:.1f} s")
        threads = max(1, cores // w) if device.type == "cpu" else None
        rows.append(
            Row(
                "scaling", f"trials/hour, {w} worker(s)", tph[w], "trials/h",
                "trials/hour, 1 worker" if w > 1 else "itself (baseline)", tph.get(1),
                note=f"{done} identical trials x {plan.scaling_epochs} epochs on "
                f"{plan.scaling_subset} images, journal file, wall time incl. worker start"
                + (f"; {threads} thread(s) per worker on {cores} cores" if threads else ""),
                extra={"seconds": summary.seconds, "states": summary.states},
            )
        )  # fmt: skip
        rows.append(
            Row(
                "scaling", f"trials/hour steady state, {w} worker(s)", steady[w], "trials/h",
                "steady state, 1 worker" if w > 1 else "itself (baseline)", steady.get(1),
                note="first trial start to last trial end: worker start and data load excluded",
            )
        )  # fmt: skip
    if cores < 4 and device.type == "cpu":
        rows.append(
            Row("scaling", "trials/hour, 4 workers", None, "trials/h", "trials/hour, 1 worker",
                tph.get(1), note=f"skipped: {cores} cores")
        )  # fmt: skip

    # Per-trial overhead: what a worker pays once (start, data) and per trial (storage calls).
    start = measure_worker_start(opts, str(device))
    shares = [measure_storage_share(opts, str(workdir / "overhead.journal"), "journal", device)]
    pg_note = None
    if opts.postgres:
        try:
            with scratch_postgres(opts.postgres) as pg_url:
                shares.append(measure_storage_share(opts, pg_url, "postgresql", device))
        except Exception as e:  # noqa: BLE001 - an unreachable server skips the row, with why
            pg_note = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    trial_s = shares[0]["trial_s"]
    once = [
        ("worker start (spawn + imports + study file)", start["spawn_s"] + start["import_s"]),
        ("dataset load + split (once per worker)", start["data_s"]),
    ]
    for label, secs in once:
        rows.append(
            Row("scaling", label, secs, "s", "one trial", trial_s, better="lower",
                note=f"{secs / trial_s:.1%} of one trial; paid once per worker, shared by all "
                "its trials", extra=start)
        )  # fmt: skip
    for s in shares:
        rows.append(
            Row(
                "scaling", f"storage calls per trial, {s['storage']}", s["storage_s_per_trial"],
                "s", "one trial", s["trial_s"], better="lower",
                note=f"{s['storage_s_per_trial'] / s['trial_s']:.2%} of trial time; "
                f"{s['storage_calls_per_trial']:.0f} calls per trial",
                extra=s,
            )
        )  # fmt: skip
    if opts.postgres is None or pg_note:
        rows.append(
            Row("scaling", "storage calls per trial, postgresql", None, "s", "one trial", trial_s,
                better="lower", note=pg_note or "skipped: no --postgres URL given")
        )  # fmt: skip
    return rows


# -- 4. GPU packing ------------------------------------------------------------------------------


def _gpu_worker(
    plan: Plan, dataset: str, data_dir: str | None, device: str, barrier, queue, profile: bool
) -> None:
    """One of k processes training R2's model on one GPU at once (spawned; CUDA only)."""
    opts = BenchOptions(plan=plan, dataset=dataset, data_dir=data_dir)
    try:
        from cnnopt.data import load_split

        dev = torch.device(device)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        base = _base_cfg(opts, **r2_model_flat(), batch_size=128, lr=1e-3)
        ds, split = load_split(base.data, dev)
        cfg = base.replace(
            in_channels=ds.in_channels, input_size=ds.image_size, num_classes=ds.num_classes
        )
        step = CnnoptStep("gpu", cfg, split, dev, compile_=False)
        n = split.x_train.shape[0]
        chunk = torch.arange(min(n, opts.plan.gpu_images))
        step.warmup()
        torch.cuda.reset_peak_memory_stats(dev)
        barrier.wait(timeout=300)
        done, seconds = 0, 0.0
        while done < opts.plan.gpu_images:
            seconds += step.train(chunk)
            done += len(chunk)
        out = {
            "images_per_s": done / seconds,
            "peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20,
        }
        if profile:
            out["kernel_share"] = _kernel_time_share(step, chunk)
        queue.put(out)
    except Exception as e:  # noqa: BLE001 - report, never hang the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


def _kernel_time_share(step: CnnoptStep, chunk: torch.Tensor) -> float | None:
    """Share of wall time the GPU spends in kernels while training: is the GPU kept busy?"""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        seconds = step.train(chunk)
    busy_us = 0.0
    for evt in prof.key_averages():
        if getattr(evt, "device_type", None) is not None and "CUDA" in str(evt.device_type):
            busy_us += getattr(evt, "self_device_time_total", 0.0)
    if not busy_us:  # older event fields
        busy_us = sum(
            getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
            for e in prof.key_averages()
        )
    return busy_us / 1e6 / seconds if seconds else None


def bench_gpu(opts: BenchOptions, device: torch.device) -> list[Row]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return [
            Row("gpu", "GPU packing: workers sharing one GPU", None, "images/s",
                "1 worker on the GPU", None, note="skipped: no CUDA device")
        ]  # fmt: skip
    from cnnopt.runner import plan_devices

    ctx = mp.get_context("spawn")
    dev = f"cuda:{device.index or 0}"
    rows: list[Row] = []
    totals: dict[int, float] = {}
    k = 1
    while k <= opts.plan.gpu_max_workers:
        queue, barrier = ctx.Queue(), ctx.Barrier(k)
        procs = [
            ctx.Process(
                target=_gpu_worker,
                args=(
                    opts.plan,
                    opts.dataset,
                    opts.data_dir,
                    dev,
                    barrier,
                    queue,
                    k == 1 and i == 0,
                ),
            )
            for i in range(k)
        ]
        for p in procs:
            p.start()
        outs = [queue.get(timeout=900) for _ in procs]
        for p in procs:
            p.join()
        errors = [o["error"] for o in outs if "error" in o]
        if errors:
            rows.append(Row("gpu", f"{k} workers on {dev}", None, "images/s", "1 worker",
                            totals.get(1), note=f"failed: {errors[0]}"))  # fmt: skip
            break
        totals[k] = sum(o["images_per_s"] for o in outs)
        peak = max(o["peak_mib"] for o in outs)
        note = f"peak memory per worker {peak:.0f} MiB"
        if "kernel_share" in outs[0] and outs[0]["kernel_share"] is not None:
            note += f"; GPU kernel time {outs[0]['kernel_share']:.0%} of wall (1 worker)"
        rows.append(
            Row("gpu", f"{k} worker(s) sharing {dev}", totals[k], "images/s",
                "1 worker" if k > 1 else "itself (baseline)", totals.get(1), note=note,
                extra={"workers": outs})
        )  # fmt: skip
        if k > 1 and totals[k] < 1.05 * totals[k // 2]:
            rows[-1].note += f"; throughput stopped rising: {k // 2} workers fill this GPU"
            break
        k *= 2
    free = {i: torch.cuda.mem_get_info(i) for i in range(torch.cuda.device_count())}
    placement = plan_devices("cuda", max(totals) if totals else 1)
    best = max(free.values(), key=lambda f: f[0])
    rows.append(
        Row(
            "gpu", "placement: free memory of the first GPU chosen", free[int(placement[0][5:])][0] / 2**30,
            "GiB", "most free memory on any GPU", best[0] / 2**30,
            note=f"runner.plan_devices('cuda') places workers on {placement} by measured free memory",
            extra={"free_gib": {i: f[0] / 2**30 for i, f in free.items()}},
        )
    )  # fmt: skip
    return rows


# -- driver --------------------------------------------------------------------------------------


def run_bench(opts: BenchOptions) -> Report:
    from cnnopt.train import resolve_device

    warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if opts.data_dir:
        opts = replace(opts, data_dir=str(Path(opts.data_dir).expanduser().resolve()))
    threads = opts.threads or n_cores()
    torch.set_num_threads(threads)
    device = resolve_device(opts.device)
    t0 = time.perf_counter()
    report = Report(machine=machine_info(), plan={**asdict(opts.plan), "seeds": opts.seeds})
    report.machine["threads"] = threads
    report.machine["device"] = str(device)
    tmp = tempfile.TemporaryDirectory(prefix="cnnopt-bench-") if opts.workdir is None else None
    workdir = Path(opts.workdir or tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for section in opts.sections:
            opts.log(f"section {section} ...")
            try:
                if section == "throughput":
                    rows = bench_throughput(opts, workdir, device)
                    default = next((r for r in rows if r.extra.get("default")), None)
                    report.throughput_ratio = default.ratio if default else None
                elif section == "study":
                    rows, summary = bench_study(opts, device)
                    report.epochs_to_target_ratio = summary["epochs_to_target_ratio"]
                    report.epochs_to_target_ratio_vs_asha = summary[
                        "epochs_to_target_ratio_vs_asha"
                    ]
                    report.plan["study"] = summary
                elif section == "scaling":
                    rows = bench_scaling(opts, workdir, device)
                elif section == "gpu":
                    rows = bench_gpu(opts, device)
                else:
                    raise ValueError(f"unknown section {section!r}")
            except Exception as e:  # noqa: BLE001 - one failing section must not hide the others
                rows = [Row(section, f"{section} section", None, "", "n/a", None,
                            note=f"failed: {type(e).__name__}: {e}")]  # fmt: skip
            report.rows.extend(rows)
    finally:
        if tmp is not None:
            tmp.cleanup()
    report.seconds = time.perf_counter() - t0
    report.machine["load_average_end"] = _loadavg()
    loads = [x[0] for x in (report.machine["load_average_start"], _loadavg()) if x]
    if loads and max(loads) > 0.75 * report.machine["cores"] + threads:
        report.notes.append(
            f"the machine was busy (1-minute load average up to {max(loads):.1f} on "
            f"{report.machine['cores']} cores): wall-clock figures are noisy; compare the "
            "CPU-time figures in the notes, or re-run on a quiet machine"
        )
    return report


def write_json(report: Report, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "accuracy":
        return f"{v:.4f}"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s"
    if unit == "epochs":
        return f"{v:g} epochs"
    if unit == "GiB":
        return f"{v:.1f} GiB"
    return f"{v:,.0f} {unit}" if abs(v) >= 100 else f"{v:.2f} {unit}"


def _headline(report: Report) -> str:
    def show(v: float | None) -> str:
        return f"{v:.2f}" if v is not None else "n/a"

    m = report.machine
    return (
        f"throughput_ratio {show(report.throughput_ratio)} | epochs_to_target_ratio "
        f"{show(report.epochs_to_target_ratio)} (vs random search) | vs ASHA "
        f"{show(report.epochs_to_target_ratio_vs_asha)} | {report.seconds:.0f} s, load average "
        f"{m.get('load_average_start')} -> {m.get('load_average_end')}"
    )


def _machine_line(report: Report) -> str:
    m = report.machine
    gpu = ", ".join(g["name"] for g in m["gpu"]) if m.get("gpu") else "no GPU"
    return (
        f"{m['cpu']}, {m['cores']} cores ({m.get('threads')} threads), {gpu}, torch {m['torch']}, "
        f"bf16 {'yes' if m['bf16'] else 'no'}, device {m.get('device')}"
    )


def print_report(report: Report, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]cnnopt bench ({report.plan['name']})[/] on {_machine_line(report)}")
    for section in dict.fromkeys(r.section for r in report.rows):
        table = Table(title=section, title_justify="left", expand=False)
        table.add_column("measurement [dim](vs baseline)[/]", ratio=3)
        table.add_column("value", justify="right", no_wrap=True)
        table.add_column("baseline", justify="right", no_wrap=True)
        table.add_column("ratio", justify="right", no_wrap=True)
        table.add_column("note", ratio=4, overflow="fold")
        for r in report.rows:
            if r.section != section:
                continue
            table.add_row(
                f"{r.name}\n[dim]vs {r.baseline}[/]",
                _fmt(r.value, r.unit),
                _fmt(r.baseline_value, r.unit),
                f"{r.ratio:.2f}x" if r.ratio is not None else "-",
                r.note,
            )
        console.print(table)
    console.print(_headline(report))
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")


def to_markdown(report: Report) -> str:
    """The report as a Markdown table (for the README's Performance section)."""
    lines = [
        f"Machine: {_machine_line(report)}.",
        "",
        "| section | measurement | value | baseline | baseline value | ratio | note |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for r in report.rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        note = r.note.replace("|", "/")
        lines.append(
            f"| {r.section} | {r.name} | {_fmt(r.value, r.unit)} | {r.baseline} | "
            f"{_fmt(r.baseline_value, r.unit)} | {ratio} | {note} |"
        )
    lines += ["", _headline(report), "", *(f"Note: {n}" for n in report.notes)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m cnnopt.bench [options]``: the same as ``cnnopt bench [options]``."""
    import sys

    from cnnopt.cli import main as cli_main

    sys.argv = ["cnnopt", "bench", *(sys.argv[1:] if argv is None else argv)]
    cli_main()


if __name__ == "__main__":
    main()
