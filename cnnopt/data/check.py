"""``cnnopt data check``: what a dataset looks like once loaded, and what is wrong with it.

It also says whether the images would be cached in memory or streamed from disk: image folders
whose decoded size exceeds ``max_cache_gb`` (default 4 GiB) are streamed (see ``folders.py``).
A streamed dataset is read in full here, a chunk at a time, for its statistics and duplicates.

Run before a study, so that a bad label, a lopsided class, a test set that leaks into training or
an unexpected channel count is seen once, up front, not discovered from odd trial results. The
report is a plain dict (JSON-friendly, for ``--json`` and for tests); ``format_check`` renders it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict

import torch

from cnnopt.config import DataConfig
from cnnopt.data.registry import load_dataset
from cnnopt.data.tensors import Dataset

GIB = 1024**3
IMBALANCE_RATIO = 10.0  # largest / smallest class above this is reported
MAX_LISTED = 10


def check_dataset(cfg: DataConfig) -> dict:
    """Load the dataset (malformed CSV rows are dropped and listed, whatever ``cfg.bad_rows``
    says, so that the check reports every one of them instead of stopping at the first file)
    and describe it: counts per class, image shape, per-channel statistics and problems."""
    ds = load_dataset(dataclasses.replace(cfg, bad_rows="drop"))
    x = ds.x_train
    decoded = x.shape.numel() + (ds.x_test.shape.numel() if ds.x_test is not None else 0)
    mean, std = _channel_stats(x)
    train_counts = _per_class(ds.y_train, ds)
    test_counts = _per_class(ds.y_test, ds) if ds.y_test is not None else None
    report = {
        "dataset": ds.name,
        "source": ds.info.get("source"),
        "multilabel": ds.multilabel,
        "classes": list(ds.classes),
        "channels": int(x.shape[1]),
        "image_size": [int(x.shape[2]), int(x.shape[3])],
        "train": {"images": int(x.shape[0]), "per_class": train_counts},
        "test": None
        if test_counts is None
        else {"images": int(ds.x_test.shape[0]), "per_class": test_counts},
        "mean": mean,
        "std": std,
        # image folders over max_cache_gb are streamed from disk; everything else is cached
        "storage": "streamed" if ds.streamed else "cached",
        "decoded_gb": round(decoded / GIB, 3),
        "max_cache_gb": cfg.max_cache_gb,
        "dropped_rows": list(ds.info.get("dropped_rows", [])),
        "notes": {
            k: v
            for k, v in ds.info.items()
            if k not in ("dropped_rows", "source", "storage", "decoded_gb")
        },
    }
    report["problems"] = _problems(report, ds)
    return report


def _per_class(y: torch.Tensor, ds: Dataset) -> list[int]:
    """Images per class; for multi-label targets, images carrying each label."""
    if ds.multilabel:
        return [int(v) for v in (y > 0.5).sum(0)]
    return [int(v) for v in torch.bincount(y, minlength=len(ds.classes))]


def _channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Exact per-channel mean/std over all training images, in [0, 1] units (float64 sums in
    chunks: no float copy of the whole dataset)."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        b = x[i : i + chunk].to(torch.float64).div_(255)
        s += b.sum(dim=(0, 2, 3))
        s2 += b.square().sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / max(n, 1)
    std = (s2 / max(n, 1) - mean.square()).clamp_min(0).sqrt()
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def _image_hashes(x: torch.Tensor, chunk: int = 4096) -> list[bytes]:
    out = []
    for i in range(0, x.shape[0], chunk):  # chunks: a streamed dataset is decoded bit by bit
        arr = x[i : i + chunk].contiguous().numpy()
        out += [hashlib.blake2b(a.tobytes(), digest_size=8).digest() for a in arr]
    return out


def _problems(report: dict, ds: Dataset) -> list[str]:
    out: list[str] = []
    classes = report["classes"]
    if report["dropped_rows"]:
        by_file: dict[str, list[int]] = defaultdict(list)
        for row in report["dropped_rows"]:
            by_file[row["file"]].append(row["line"])
        for file, lines in by_file.items():
            shown = ", ".join(map(str, lines[:MAX_LISTED])) + (
                ", ..." if len(lines) > MAX_LISTED else ""
            )
            out.append(f"{file}: {len(lines)} malformed rows dropped (lines {shown})")
    counts = report["train"]["per_class"]
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        out.append(f"classes with no training images: {_names(empty)}")
    present = [(n, c) for c, n in zip(classes, counts) if n > 0]
    if len(present) > 1:
        (lo, lo_c), (hi, hi_c) = min(present), max(present)
        if hi / lo > IMBALANCE_RATIO:
            out.append(
                f"class imbalance: {hi_c!r} has {hi} training images, {lo_c!r} has {lo} ({hi / lo:.0f}x)"
            )
    if report["test"] is None:
        out.append(
            "no test split: only the validation split can score trials (a final test needs one)"
        )
    else:
        missing = [c for c, n in zip(classes, report["test"]["per_class"]) if n == 0]
        if missing:
            out.append(f"classes with no test images: {_names(missing)}")
        train_hashes = set(_image_hashes(ds.x_train))
        dup = sum(h in train_hashes for h in _image_hashes(ds.x_test))
        if dup:
            out.append(
                f"{dup} test images are exact copies of training images (test accuracy will be optimistic)"
            )
    if ds.info.get("converted_channels"):
        out.append(
            f"{ds.info['converted_channels']} images converted to {report['channels']} channel(s) "
            f"(found {ds.info.get('channels_found')})"
        )
    if ds.info.get("skipped_files"):
        out.append(f"{ds.info['skipped_files']} non-image files skipped")
    return out


def _names(names: list[str]) -> str:
    return ", ".join(map(repr, names[:MAX_LISTED])) + (
        f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    )


def format_check(report: dict) -> str:
    """Plain-text rendering: a summary, a per-class table and the problems (or 'no problems')."""
    h, w = report["image_size"]
    colour = {1: "grey", 3: "RGB"}.get(report["channels"], f"{report['channels']} channels")
    test = report["test"]
    kind = "multi-label" if report["multilabel"] else "single-label"
    lines = [
        f"dataset {report['dataset']}  ({_source(report['source'])})",
        f"  {report['train']['images']} train / {test['images'] if test else 'no'} test images, "
        f"{h}x{w} {colour}, {len(report['classes'])} classes, {kind}",
        f"  mean {_floats(report['mean'])}  std {_floats(report['std'])}  (train, per channel, 0..1)",
        f"  {report['decoded_gb']:g} GiB decoded: {_storage(report)}",
        "",
    ]
    width = max([5, *(len(c) for c in report["classes"])])
    unit = "images with label" if report["multilabel"] else "images"
    lines.append(f"  {'class':<{width}}  {'train':>7}  {'test':>7}   ({unit})")
    test_counts = test["per_class"] if test else [None] * len(report["classes"])
    for c, n, t in zip(report["classes"], report["train"]["per_class"], test_counts):
        lines.append(f"  {c:<{width}}  {n:>7}  {'-' if t is None else t:>7}")
    lines.append("")
    if report["problems"]:
        lines.append("problems:")
        lines += [f"  - {p}" for p in report["problems"]]
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def _storage(report: dict) -> str:
    limit = report["max_cache_gb"]
    if report["storage"] == "streamed":
        return f"streamed from disk per batch (over max_cache_gb={limit:g})"
    return f"cached in memory (image folders over max_cache_gb={limit:g} are streamed)"


def _floats(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def _source(source) -> str:
    if isinstance(source, list):
        return ", ".join(source)
    return str(source or "in memory")
