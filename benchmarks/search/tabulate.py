"""Tabulate learning curves: every configuration of report R2's grid, trained with cnnopt's own
trainer (``cnnopt.train.fit`` on a RunConfig, exactly as a trial trains), once per training seed.

R2's Ray Tune search: batch {32, 64, 128} x lr {1e-4, 1e-3, 1e-2} x dense width l1 {64, 128, 256}
on its CNN-BN with Adam, 10 epochs per trial. The data is a fixed 15k subset of the FashionMNIST
training set split 12k / 3k (split_seed 0), the protocol the search benchmark uses everywhere.

The table is written after every finished run (atomically), so an interrupted tabulation resumes
where it stopped: runs already in the table are skipped. Seeds are the outer loop, so every finished
seed is a complete grid that replays can use on its own.

    python -m benchmarks.search.tabulate --out benchmarks/search/tables/r2_grid.json \
        --data-dir ../shared/data/fashion-mnist --seeds 0 1 2 --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

GRID: dict[str, tuple] = {
    "batch_size": (32, 64, 128),
    "lr": (1e-4, 1e-3, 1e-2),
    "l1": (64, 128, 256),
}
EPOCHS = 10
TRAIN_SUBSET = 15000  # 12k train + 3k validation at val_fraction 0.2
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def r2_flat(batch_size: int, lr: float, l1: int) -> dict[str, Any]:
    """R2's CNN-BN with Adam: two 3x3 conv blocks of 32 and 64 filters, each conv followed by
    BatchNorm then ReLU, max-pooling, one dense layer of ``l1`` units, 10 outputs; no weight decay,
    no schedule, no augmentation (what R2 trained)."""
    return dict(
        family="cnn", conv_blocks=2, filters=[32, 64], kernel_size=3, batchnorm="before",
        activation="relu", hidden=[l1], dropout=0.0,
        optimizer="adam", lr=lr, batch_size=batch_size, weight_decay=0.0,
    )  # fmt: skip


def grid_configs(grid: dict[str, tuple] = GRID) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def config_key(config: dict[str, Any]) -> str:
    """A stable name for one configuration (the table's and the replay's identity of a config)."""
    return ",".join(f"{k}={config[k]!r}" for k in sorted(config))


def run_key(config: dict[str, Any], seed: int) -> str:
    return f"{config_key(config)},seed={seed}"


def load_table(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"meta": {}, "runs": {}}


def save_table(table: dict[str, Any], path: Path) -> None:
    """Atomic: a kill mid-write never leaves a truncated table behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def pending(
    table: dict[str, Any], configs: list[dict[str, Any]], seeds: Iterable[int], epochs: int
) -> list[tuple[dict[str, Any], int]]:
    """Runs still to train, seed-major (a finished seed is a complete grid). A run in the table
    with all its epochs is done; one with fewer (never written by this module, but possible by
    hand) is trained again."""
    out = []
    for seed in seeds:
        for config in configs:
            run = table["runs"].get(run_key(config, seed))
            if run is None or len(run["epochs"]) < epochs:
                out.append((config, seed))
    return out


def train_run(
    config: dict[str, Any],
    seed: int,
    *,
    dataset: str,
    data_dir: str | None,
    epochs: int,
    train_subset: int | None,
    flat: Callable[..., dict[str, Any]] = r2_flat,
) -> dict[str, Any]:
    """Train one configuration with cnnopt's trainer, as a trial would; return its curve."""
    from cnnopt.config import RunConfig

    cfg = RunConfig.from_flat(
        {
            **flat(**config),
            "dataset": dataset, "data_dir": data_dir, "epochs": epochs, "seed": seed,
            "train_subset": train_subset, "val_fraction": VAL_FRACTION, "split_seed": SPLIT_SEED,
        },
        where="tabulate",
    )  # fmt: skip
    return train_curve(cfg, config, seed)


def cpu_split(cfg):
    """The run's data split on the CPU, and ``cfg`` completed with the dataset's shape."""
    from cnnopt.data import load_split

    ds, split = load_split(cfg.data, "cpu")
    return cfg.replace(
        in_channels=ds.in_channels, input_size=ds.image_size, num_classes=ds.num_classes
    ), split


def train_curve(cfg, config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train ``cfg`` (a RunConfig) on CPU with ``cnnopt.train.fit``; the table's run record, with
    ``config`` (the table's identity of the configuration) and the training ``seed``."""
    from cnnopt.train import fit

    cfg, split = cpu_split(cfg)
    result = fit(cfg, split, device="cpu")
    return {
        "config": config,
        "seed": seed,
        "params": result.params,
        "flops": result.flops,
        "n_train": int(split.x_train.shape[0]),
        "n_val": int(split.x_val.shape[0]),
        "epochs": [
            {
                "epoch": h.epoch,
                "val_accuracy": h.metrics["val_accuracy"],
                "val_loss": h.metrics["val_loss"],
                "train_loss": h.train_loss,
                "seconds": h.seconds,
            }
            for h in result.history
        ],
    }


def tabulate(
    out: Path,
    *,
    seeds: Iterable[int] = (0, 1, 2),
    dataset: str = "fashion_mnist",
    data_dir: str | None = None,
    epochs: int = EPOCHS,
    train_subset: int | None = TRAIN_SUBSET,
    grid: dict[str, tuple] = GRID,
    command: str = "",
    limit: int | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Train every run the table at ``out`` lacks (at most ``limit``), saving after each one."""
    import torch

    table = load_table(out)
    table["meta"] = {
        "what": "learning curves of report R2's grid (CNN-BN, Adam) trained by cnnopt.train.fit",
        "command": command or table["meta"].get("command", ""),
        "grid": {k: list(v) for k, v in grid.items()},
        "epochs": epochs,
        "seeds": sorted(set(seeds) | set(table["meta"].get("seeds", []))),
        "dataset": dataset,
        "train_subset": train_subset,
        "val_fraction": VAL_FRACTION,
        "split_seed": SPLIT_SEED,
        "model": r2_flat(batch_size=0, lr=0.0, l1=0) | {"batch_size": None, "lr": None, "l1": None},
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "note": "seconds are wall-clock per training epoch on a shared 2-core CPU; compare them "
        "only within this table",
    }
    todo = pending(table, grid_configs(grid), seeds, epochs)
    if limit is not None:
        todo = todo[:limit]
    log(f"{len(todo)} runs to train ({len(table['runs'])} already in {out})")
    for i, (config, seed) in enumerate(todo, 1):
        t0 = time.perf_counter()
        run = train_run(
            config, seed, dataset=dataset, data_dir=data_dir, epochs=epochs,
            train_subset=train_subset,
        )  # fmt: skip
        table["runs"][run_key(config, seed)] = run
        save_table(table, out)
        last = run["epochs"][-1]
        log(
            f"[{i}/{len(todo)}] {run_key(config, seed)}: val_accuracy {last['val_accuracy']:.4f} "
            f"in {time.perf_counter() - t0:.0f}s"
        )
    save_table(table, out)
    return table


def command_line(prog: str, args: argparse.Namespace) -> str:
    """The command that regenerates a table, as stored in its ``meta.command`` (``--limit`` left
    out: it only splits the work)."""

    def arg(k: str, v: Any) -> str:
        flag = f"--{k.replace('_', '-')}"
        if v is True:  # a store_true flag
            return flag
        return f"{flag} {' '.join(map(str, v)) if isinstance(v, list) else v}"

    return f"{prog} " + " ".join(
        arg(k, v)
        for k, v in vars(args).items()
        if v is not None and v is not False and k != "limit"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search.tabulate", description=__doc__)
    p.add_argument("--out", default="benchmarks/search/tables/r2_grid.json")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--train-subset", type=int, default=TRAIN_SUBSET)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="train at most this many runs")
    a = p.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    command = command_line("python -m benchmarks.search.tabulate", a)
    tabulate(
        Path(a.out), seeds=a.seeds, dataset=a.dataset, data_dir=a.data_dir, epochs=a.epochs,
        train_subset=a.train_subset, command=command, limit=a.limit,
        log=lambda msg: print(msg, flush=True, file=sys.stdout),
    )  # fmt: skip


if __name__ == "__main__":
    main()
