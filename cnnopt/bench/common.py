"""What every bench section shares: sizes (plans), options, rows and the report, the machine,
and the report's output (table, Markdown, JSON).

A section is a function ``(opts, ctx) -> list[Row]`` (see ``cnnopt.bench``); every row is one
measurement next to its baseline. Nothing here imports a section.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnopt.config import RunConfig
from cnnopt.train import cpu_model

# The study file the scaling section runs (loaded with Study.load, never imported).
BENCH_STUDY = Path(__file__).with_name("bench_study.py")
R2_EPOCH_IMAGES = 48_000  # R2 trained on 80% of FashionMNIST's 60k training images

# One mid-size point of the bench study's space: scaling runs N copies of the same trial, so that
# trials per hour compare worker counts and nothing else.
FIXED_PARAMS: dict[str, Any] = {
    "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "base_filters": 16, "kernel_size": 3,
    "batchnorm": "before", "activation": "relu", "dropout": 0.1, "l1": 64,
}  # fmt: skip


# -- statistics ----------------------------------------------------------------------------------


@dataclass
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}] (n={self.n})"


# Student's t, two-sided 95% critical values for 1..30 degrees of freedom (scipy is not a
# dependency for one quantile); above 30, the Cornish-Fisher expansion is within 0.001
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile(df: int) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_mean(values: Sequence[float]) -> Interval:
    """Mean of ``values`` with Student's t 95% interval. With a handful of seeds (the live
    studies) the percentile bootstrap is too narrow: it resamples only the values seen and
    ignores that the spread itself is estimated from them; the t interval accounts for that."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {x.size}")
    half = t_quantile(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    m = float(x.mean())
    return Interval(m, m - half, m + half, int(x.size))


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
    # 2. search (replays of the committed table: seconds, whatever the plan)
    search_seeds: int  # replay seeds per set (one set chooses the pruner, a fresh one reports)
    search_ray_seeds: int  # fresh seeds Ray Tune replays (0: no Ray rows)
    search_smoke: bool  # too few seeds to compare anything: every output says it is a smoke run
    # 3. scaling
    scaling_trials: int  # identical trials per worker count
    scaling_epochs: int
    scaling_subset: int
    overhead_trials: int  # in-process trials per storage for the storage-call share
    # 4. gpu
    gpu_max_workers: int
    gpu_window_s: float  # the common window in which all k workers on one GPU train


QUICK = Plan(
    "quick",
    throughput_images=20_480, chunk_images=2_560, accuracy_subset=10_000, accuracy_epochs=1,
    compile_variant=False,
    search_seeds=8, search_ray_seeds=2, search_smoke=True,
    scaling_trials=4, scaling_epochs=2, scaling_subset=4_000, overhead_trials=3,
    gpu_max_workers=4, gpu_window_s=10.0,
)  # fmt: skip
FULL = Plan(
    "full",
    throughput_images=48_000, chunk_images=4_000, accuracy_subset=20_000, accuracy_epochs=2,
    compile_variant=True,
    search_seeds=100, search_ray_seeds=30, search_smoke=False,
    scaling_trials=8, scaling_epochs=3, scaling_subset=10_000, overhead_trials=5,
    gpu_max_workers=8, gpu_window_s=30.0,
)  # fmt: skip
TINY = Plan(
    "tiny",
    throughput_images=256, chunk_images=128, accuracy_subset=512, accuracy_epochs=1,
    compile_variant=False,
    search_seeds=2, search_ray_seeds=0, search_smoke=True,
    scaling_trials=2, scaling_epochs=1, scaling_subset=512, overhead_trials=1,
    gpu_max_workers=2, gpu_window_s=2.0,
)  # fmt: skip
PLANS = {p.name: p for p in (QUICK, FULL, TINY)}


@dataclass
class BenchOptions:
    plan: Plan = QUICK
    dataset: str = "fashion_mnist"  # the smoke test uses "synthetic"
    data_dir: str | None = None
    device: str = "auto"
    seeds: int | None = None  # search replay seeds per set; None: the plan's search_seeds
    threads: int | None = None  # None: all cores this process may use
    postgres: str | None = None
    sections: tuple[str, ...] = ()  # empty: every registered section (cnnopt.bench.SECTIONS)
    workdir: str | None = None  # temp files (torchvision layout, journals); None: a temp dir
    # where a section writes files meant to be kept next to the report (the search section's
    # search.md, search.json and anytime figure search.html); None: runs/bench-search
    out_dir: str | None = None
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
    # the search section's headline: the chosen default's best validation accuracy within the
    # budget minus the baseline's, paired over fresh replay seeds: {mean, low, high, n} (95% CI)
    search_default: str | None = None
    search_best_val_diff_vs_random: dict[str, float] | None = None
    search_best_val_diff_vs_ray_asha: dict[str, float] | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = [asdict(r) for r in self.rows]
        return d


@dataclass
class Context:
    """What ``run_bench`` hands every section besides the options."""

    workdir: Path  # temp files (torchvision layout, journals), removed after the run
    device: torch.device
    report: Report  # a section may set the report's headline figures and ``plan`` entries


# -- machine -------------------------------------------------------------------------------------


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
        "load_average_start": loadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                "bf16": _cuda_bf16(i),
            }
            for i in range(torch.cuda.device_count())
        ]
        info["cuda"] = torch.version.cuda
    return info


def _cuda_bf16(index: int) -> bool:
    """Whether training on this GPU uses bf16: the same rule as ``train.amp_dtype`` (amp=auto)."""
    from cnnopt.config import TrainConfig
    from cnnopt.train import amp_dtype

    return amp_dtype(TrainConfig(amp="auto"), torch.device(f"cuda:{index}")) == torch.bfloat16


def loadavg() -> list[float] | None:
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def base_cfg(opts: BenchOptions, **flat: Any) -> RunConfig:
    return RunConfig.from_flat(
        {"dataset": opts.dataset, "data_dir": opts.data_dir, **flat}, where="cnnopt bench"
    )


# -- output --------------------------------------------------------------------------------------


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

    def diff(d: dict[str, float] | None) -> str:
        if d is None:
            return "n/a"
        return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] (n={d['n']})"

    m = report.machine
    return (
        f"throughput_ratio {show(report.throughput_ratio)} | search_best_val_diff_vs_random "
        f"{diff(report.search_best_val_diff_vs_random)} | vs Ray ASHA "
        f"{diff(report.search_best_val_diff_vs_ray_asha)} (default {report.search_default or 'n/a'})"
        f" | {report.seconds:.0f} s, load average "
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
