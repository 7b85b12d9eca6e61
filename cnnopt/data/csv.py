"""Pixel-per-column CSV datasets: Kaggle's Sign Language MNIST (report R1).

Each file is ``label,pixel1,...,pixel784``: one 28x28 grey image per row. Real copies of this
dataset are not clean (R1 found a label ``200``), so every row is checked and a malformed one is
either dropped *and reported* (``bad_rows="drop"``: ``Dataset.info["dropped_rows"]`` plus a
warning on the ``cnnopt`` logger) or stops the load (``bad_rows="error"``). A bad row is never
silently kept.

Parsing is vectorised: one ``np.loadtxt`` over all rows that have the right number of fields
(numpy's C parser reads the 27k-row training file in about a second); only when that fails on a
non-numeric value do we fall back to a per-row parse, to find and name the offending rows.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

import numpy as np
import torch

from cnnopt.config import DataConfig
from cnnopt.data.registry import data_dir, register
from cnnopt.data.tensors import Dataset
from cnnopt.errors import DataError

log = logging.getLogger("cnnopt")

SIDE = 28
N_PIXELS = SIDE * SIDE
HEADER = ["label", *(f"pixel{i}" for i in range(1, N_PIXELS + 1))]
# Labels are letter indices 0..25; J (9) and Z (25) need motion, so the dataset has no such rows.
MISSING_LABELS = {9: "J", 25: "Z"}
LETTERS = [c for i, c in enumerate(string.ascii_uppercase) if i not in MISSING_LABELS]  # 24
# letter index -> class index 0..23 (-1: not a class)
_REMAP = np.full(26, -1, dtype=np.int64)
for _k, _c in enumerate(LETTERS):
    _REMAP[string.ascii_uppercase.index(_c)] = _k

FILES = {"train": "sign_mnist_train.csv", "test": "sign_mnist_test.csv"}
MAX_LISTED = 10  # rows named in one message; the full list is in info["dropped_rows"]


def find_csv(root: Path, name: str) -> Path:
    """``name`` in root, root/sign_mnist or root/<stem> (the Kaggle archive's own layout)."""
    stem = name.removesuffix(".csv")
    candidates = [root / name, root / "sign_mnist" / name, root / stem / name]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(
        f"sign_mnist: {name} not found in {root} (also looked in {root / 'sign_mnist'} and "
        f"{root / stem}); download the Kaggle 'Sign Language MNIST' CSVs and pass --data-dir"
    )


def read_pixel_csv(path: Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Parse one CSV into (labels int64 [N], pixels uint8 [N, 784], bad rows).

    Letter labels are returned as written (0..25); a row is bad when a field is not a number, the
    field count is not 785, a pixel is not an integer in 0..255, or the label is not a letter of
    the dataset. Bad rows are returned as ``{"file", "line", "reason"}`` dicts (``line`` is the
    1-based line number in the file, the header being line 1), not included in the arrays.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Excel exports
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read CSV: {e}") from None
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{path}: empty file, expected a header {HEADER[0]},{HEADER[1]},...")
    header = [h.strip().strip('"').lower() for h in lines[0].split(",")]
    if header != HEADER:
        shown = ",".join(header[:4]) + (",..." if len(header) > 4 else "")
        raise DataError(
            f"{path}: header has {len(header)} columns ({shown}); expected {len(HEADER)} columns "
            f"label,pixel1,...,pixel{N_PIXELS}"
        )

    bad: list[dict] = []
    rows: list[str] = []
    line_no: list[int] = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # blank lines (a trailing newline) are not rows
        n = line.count(",") + 1
        if n != len(HEADER):
            bad.append(
                {"file": str(path), "line": i, "reason": f"{n} fields, expected {len(HEADER)}"}
            )
            continue
        rows.append(line)
        line_no.append(i)
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, N_PIXELS), np.uint8), bad

    try:
        # int32: exact for every valid value, and half the memory traffic of float64.
        values = np.loadtxt(rows, delimiter=",", dtype=np.int32, ndmin=2)
        ok = np.ones(len(rows), dtype=bool)
    except (ValueError, OverflowError):
        values, ok = _parse_rows_slowly(rows, line_no, path, bad)

    labels, pixels = values[:, 0], values[:, 1:]
    pix_ok = ((pixels >= 0) & (pixels <= 255)).all(1)
    lab_ok = (labels >= 0) & (labels <= 25)
    lab_ok[lab_ok] &= _REMAP[labels[lab_ok]] >= 0
    for j in np.flatnonzero(ok & ~(pix_ok & lab_ok)):
        if not lab_ok[j]:
            letter = MISSING_LABELS.get(int(labels[j]))
            why = (
                f"label {labels[j]} ({letter}) is not in the dataset"
                if letter
                else f"label {labels[j]} not in 0..25"
            )
        else:
            k = int(np.flatnonzero((pixels[j] < 0) | (pixels[j] > 255))[0])
            why = f"pixel{k + 1}={pixels[j, k]} not in 0..255"
        bad.append({"file": str(path), "line": line_no[j], "reason": why})
    keep = ok & pix_ok & lab_ok
    bad.sort(key=lambda b: b["line"])
    return labels[keep].astype(np.int64), pixels[keep].astype(np.uint8), bad


def _parse_rows_slowly(
    rows: list[str], line_no: list[int], path: Path, bad: list[dict]
) -> tuple[np.ndarray, np.ndarray]:
    """Row-by-row parse, used only when the fast parse failed: names every non-integer field."""
    values = np.zeros((len(rows), len(HEADER)), dtype=np.int32)
    ok = np.ones(len(rows), dtype=bool)
    for j, line in enumerate(rows):
        fields = line.split(",")
        try:
            row = np.array(fields, dtype=np.float64)
        except ValueError:
            row = None
        if (
            row is None
            or not (np.isfinite(row) & (row == np.round(row)) & (np.abs(row) < 2**31)).all()
        ):
            k = next(i for i, f in enumerate(fields) if not _is_int(f))
            name = HEADER[k]
            bad.append(
                {
                    "file": str(path),
                    "line": line_no[j],
                    "reason": f"{name}={fields[k].strip()!r} is not an integer",
                }
            )
            ok[j] = False
            continue
        values[j] = row
    return values, ok


def _is_int(s: str) -> bool:
    try:
        v = float(s)
    except ValueError:
        return False
    return v == round(v) and abs(v) < 2**31


def describe_bad_rows(path: str, bad: list[dict]) -> str:
    """``file: N malformed rows (line 3: label 200 not in 0..25; line 7: ...; ...)``."""
    listed = "; ".join(f"line {b['line']}: {b['reason']}" for b in bad[:MAX_LISTED])
    more = f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return f"{path}: {len(bad)} malformed row{'s' if len(bad) != 1 else ''} ({listed}{more})"


@register("sign_mnist")
def sign_mnist(cfg: DataConfig) -> Dataset:
    """Sign Language MNIST: 24 letters (A..Y without J), 28x28 grey, from the two Kaggle CSVs.

    Class indices are remapped to 0..23 (the CSV's letter indices skip J=9). Images keep their
    native 28x28: ``image_size`` is applied per batch on the device by the DeviceLoader.
    """
    root = data_dir(cfg)
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    dropped: list[dict] = []
    files: list[str] = []
    for part, name in FILES.items():
        path = find_csv(root, name)
        labels, pixels, bad = read_pixel_csv(path)
        if bad:
            if cfg.bad_rows == "error":
                raise DataError(
                    describe_bad_rows(str(path), bad) + "; set bad_rows=drop to skip them"
                )
            log.warning("%s; dropped", describe_bad_rows(str(path), bad))
            dropped += bad
        if len(labels) == 0:
            raise DataError(f"{path}: no valid rows")
        x = torch.from_numpy(pixels).view(-1, 1, SIDE, SIDE)
        y = torch.from_numpy(_REMAP[labels])
        parts[part] = (x, y)
        files.append(str(path))
    return Dataset(
        name=cfg.dataset,
        x_train=parts["train"][0],
        y_train=parts["train"][1],
        x_test=parts["test"][0],
        y_test=parts["test"][1],
        classes=list(LETTERS),
        info={"source": files, "dropped_rows": dropped},
    )
