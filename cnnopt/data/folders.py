"""Image-file datasets: class-per-folder trees (report R4) and a multi-label CSV (report R5).

Memory limit: ``max_cache_gb`` (DataConfig, default 4 GiB) of decoded uint8 pixels, train and
test together (N x C x S x S bytes).

* Datasets that fit are decoded once, with torchvision's decoders, into one uint8 tensor
  [N, C, H, W] that the DeviceLoader serves from memory (see ``tensors.py``): this is what makes
  a trial fast, and it is the default for anything under the limit.
* Larger datasets are streamed: ``x_train``/``x_test`` are lazy ``ImageFiles`` (the file list,
  decoded per batch by a StreamLoader's DataLoader workers; nothing is decoded up front except a
  small sample that fixes the channel count). Streaming needs ``image_size`` (batches need one
  size); without it a larger dataset is refused with a DataError saying so.

Shared rules (``decode_images``, and ``ImageFiles`` image by image):

* formats: .jpg/.jpeg/.png/.webp (case-insensitive); other files are skipped and counted in
  ``info["skipped_files"]``.
* size: with ``image_size`` set, each image's shorter side is resized to it (antialiased) and the
  centre square cropped, as R4's Resize + CenterCrop; without it, every image must already have
  one square size, else DataError "mismatched image sizes ... set image_size".
* channels: alpha is dropped (RGBA -> RGB, grey+alpha -> grey), then every image is converted to
  the channel count of the majority (grey -> 1, RGB -> 3; a tie keeps colour). The number of
  converted images is in ``info["converted_channels"]`` (streamed: the majority of a sample of
  ``CHANNEL_SAMPLE`` images, and no count).
* 16-bit PNGs are scaled to 8 bits.

``info["storage"]`` says "cached" or "streamed", ``info["decoded_gb"]`` the (projected) size.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from cnnopt.config import DataConfig
from cnnopt.data.registry import data_dir, register
from cnnopt.data.tensors import Dataset, is_lazy
from cnnopt.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SPLITS = ("train", "val", "test")
CHUNK = 256  # images decoded between two checks of the memory limit
CHANNEL_SAMPLE = 64  # images decoded to pick the channel count of a streamed dataset
GIB = 1024**3

# torchvision 0.29 deprecates its decoders in favour of TorchCodec, which is not a dependency of
# cnnopt; the decoders still work, so keep the notice out of every `cnnopt data check`.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


# -- decoding ------------------------------------------------------------------------------------


def _decode_one(path: Path, size: int | None) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    try:
        img = decode_image(str(path), mode=ImageReadMode.UNCHANGED, apply_exif_orientation=True)
    except (RuntimeError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot decode image ({msg})") from None
    if img.ndim != 3 or img.shape[0] not in (1, 2, 3, 4):
        raise DataError(f"{path}: unsupported image layout {tuple(img.shape)}")
    if img.dtype != torch.uint8:  # 16-bit PNG
        img = TF.to_dtype(img, torch.uint8, scale=True)
    if img.shape[0] in (2, 4):  # drop alpha
        img = img[:-1]
    if size is not None:
        img = TF.center_crop(TF.resize(img, [size], antialias=True), [size, size])
    return img.contiguous()


def decode_images(
    paths: list[Path], image_size: int | None, max_cache_gb: float
) -> tuple[torch.Tensor | ImageFiles, dict]:
    """Decode ``paths`` into one uint8 tensor [N, C, S, S] (rules in the module docstring), or,
    when that would exceed ``max_cache_gb`` and ``image_size`` is set, lazy ``ImageFiles``.

    Returns the images and notes for ``Dataset.info``. Raises DataError naming the file for an
    unreadable image, and naming the limit when images over it cannot be streamed (no
    ``image_size``).
    """
    if not paths:
        raise DataError("no images to decode")
    limit = max_cache_gb * GIB
    if image_size is not None and len(paths) * 3 * image_size**2 > limit:
        # The size is known but for the channel count: take it from an even sample of images.
        step = max(1, len(paths) // CHANNEL_SAMPLE)
        sample = [_decode_one(p, image_size) for p in paths[::step][:CHANNEL_SAMPLE]]
        counts = Counter(int(t.shape[0]) for t in sample)
        channels = 3 if counts[3] >= counts[1] else 1
        nbytes = len(paths) * channels * image_size**2
        if nbytes > limit:
            notes = {"storage": "streamed", "decoded_gb": round(nbytes / GIB, 3)}
            return ImageFiles(paths, channels, image_size), notes
    images: list[torch.Tensor] = []
    done_bytes = 0
    # Decoders run in C++; threads overlap file reads and decoding of a few images at a time.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start : start + CHUNK]
            images += pool.map(lambda p: _decode_one(p, image_size), chunk)
            done_bytes += sum(t.numel() for t in images[start:])
            # Project from what was decoded so far: fail after one chunk, not after 30 GB.
            projected = done_bytes * len(paths) / len(images)
            if projected > limit:
                raise DataError(
                    f"{len(paths)} images would take about {projected / GIB:.1f} GiB once decoded "
                    f"(after {len(images)} images: {done_bytes / GIB:.2f} GiB), over "
                    f"max_cache_gb={max_cache_gb:g}; set image_size to stream them from disk, "
                    f"or raise the limit (--set max_cache_gb={max(1, int(projected / GIB) + 1)})"
                )

    sizes = {tuple(t.shape[1:]) for t in images}
    if len(sizes) > 1:
        first = tuple(images[0].shape[1:])
        j = next(i for i, t in enumerate(images) if tuple(t.shape[1:]) != first)
        raise DataError(
            f"mismatched image sizes: {paths[0]} is {_hw(first)} but {paths[j]} is "
            f"{_hw(images[j].shape[1:])}; set image_size to resize them all"
        )
    (h, w) = sizes.pop()
    if h != w:
        raise DataError(f"images are {_hw((h, w))}, not square ({paths[0]}); set image_size")

    counts = Counter(int(t.shape[0]) for t in images)
    channels = 3 if counts[3] >= counts[1] else 1
    out = torch.empty((len(images), channels, h, w), dtype=torch.uint8)
    converted = 0
    for i, img in enumerate(images):
        if img.shape[0] != channels:
            img = _to_channels(img, channels)
            converted += 1
        out[i] = img
        images[i] = None  # type: ignore[call-overload]  # free as we go: peak stays ~1x, not 2x
    return out, {
        "converted_channels": converted,
        "channels_found": dict(counts),
        "storage": "cached",
        "decoded_gb": round(out.numel() / GIB, 3),
    }


class ImageFiles:
    """Images left on disk: a list of paths decoded on access to uint8 [C, S, S] (the rules of
    ``decode_images``, with a fixed channel count and ``image_size``).

    Tensor-like where loaders need it: ``len``, ``shape`` ([N, C, S, S]), ``x[i]`` (one image),
    ``x[slice or index tensor]`` (a decoded uint8 batch [n, C, S, S]) and ``subset(indices)``
    (lazy ImageFiles of those images, decoding nothing). Picklable, for DataLoader workers.
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, paths: list[Path], channels: int, size: int):
        self.paths, self.channels, self.size = list(paths), channels, size

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), self.channels, self.size, self.size))

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} images, {self.channels}x{self.size}x{self.size})"

    def decode(self, i: int) -> torch.Tensor:
        img = _decode_one(self.paths[i], self.size)
        return img if img.shape[0] == self.channels else _to_channels(img, self.channels)

    def _indices(self, idx) -> list[int]:
        if isinstance(idx, slice):
            return list(range(len(self)))[idx]
        if isinstance(idx, torch.Tensor):
            return idx.reshape(-1).tolist()
        return [int(i) for i in idx]

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, int):
            return self.decode(idx)
        ids = self._indices(idx)
        out = torch.empty((len(ids), self.channels, self.size, self.size), dtype=torch.uint8)
        for j, i in enumerate(ids):
            out[j] = self.decode(i)
        return out

    def subset(self, idx) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in self._indices(idx)], self.channels, self.size)


def _part(x, start: int, stop: int | None = None):
    """Rows ``start:stop`` of decoded images or of lazy ImageFiles (as ImageFiles)."""
    return x.subset(slice(start, stop)) if is_lazy(x) else x[start:stop]


def _to_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    if channels == 3:
        return img.expand(3, -1, -1)
    return TF.rgb_to_grayscale(img, num_output_channels=1)


def _hw(shape) -> str:
    return f"{shape[0]}x{shape[1]}"


# -- class-per-folder trees ----------------------------------------------------------------------


def find_splits(root: Path) -> dict[str, Path]:
    """``{"train": root}`` for a single tree, or the train/val/test subfolders of a split layout.

    A folder is a split layout when it has a ``train`` folder and no folders other than train,
    val and test (so a single tree whose classes happen to include "train" is still a tree).
    """
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (pass --data-dir)")
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if "train" in subdirs and subdirs <= set(SPLITS):
        return {s: root / s for s in SPLITS if s in subdirs}
    return {"train": root}


def list_tree(
    root: Path, classes: list[str] | None = None
) -> tuple[list[str], list[Path], list[int], int]:
    """Class names, image paths, class indices and the number of skipped non-image files.

    With ``classes`` given (a test tree), every class folder must be one of them.
    """
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        n = sum(1 for p in root.iterdir() if p.is_file() and is_image(p))
        found = f" (found {n} images directly in it)" if n else ""
        raise DataError(f"{root}: no class folders{found}; expected {root}/<class name>/*.png")
    names = [p.name for p in class_dirs]
    if classes is not None:
        unknown = [c for c in names if c not in classes]
        if unknown:
            raise DataError(f"{root}: classes {unknown} are not in the training set ({classes})")
    index = {c: i for i, c in enumerate(classes if classes is not None else names)}
    paths: list[Path] = []
    labels: list[int] = []
    skipped = 0
    for d in class_dirs:
        files = sorted(p for p in d.rglob("*") if p.is_file())
        images = [p for p in files if is_image(p)]
        skipped += len(files) - len(images)
        if not images:
            raise DataError(f"{d}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += images
        labels += [index[d.name]] * len(images)
    return (classes if classes is not None else names), paths, labels, skipped


@register("image_folder")
def image_folder(cfg: DataConfig) -> Dataset:
    """``data_dir/<class>/*.png`` (all training data, ``x_test=None``), or ``data_dir/train``
    and ``data_dir/test`` trees of that shape (an optional ``val`` tree is added to the training
    data: cnnopt draws its own seeded validation split from it, like for every other dataset)."""
    root = data_dir(cfg)
    splits = find_splits(root)
    classes, paths, labels, skipped = list_tree(splits["train"])
    n_val = 0
    if "val" in splits:
        _, vp, vl, vs = list_tree(splits["val"], classes)
        paths, labels, skipped, n_val = paths + vp, labels + vl, skipped + vs, len(vp)
    n_train = len(paths)
    if "test" in splits:
        _, tp, tl, ts = list_tree(splits["test"], classes)
        paths, labels, skipped = paths + tp, labels + tl, skipped + ts
    # Decode train and test together so that both get the same size and channel count.
    x, notes = decode_images(paths, cfg.image_size, cfg.max_cache_gb)
    y = torch.tensor(labels, dtype=torch.int64)
    has_test = len(paths) > n_train
    return Dataset(
        name=cfg.dataset,
        x_train=_part(x, 0, n_train),
        y_train=y[:n_train],
        x_test=_part(x, n_train) if has_test else None,
        y_test=y[n_train:] if has_test else None,
        classes=classes,
        info={"source": str(root), "skipped_files": skipped, "val_merged": n_val, **notes},
    )


# -- multi-label CSV -----------------------------------------------------------------------------


def read_label_csv(path: Path) -> list[tuple[int, str, list[str]]]:
    """Rows of an ``image,labels`` CSV as (line number, image, label names)."""
    if not path.is_file():
        raise DataError(f"{path}: label CSV not found (set label_csv, relative to data_dir)")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if header != ["image", "labels"]:
            raise DataError(
                f"{path}: header is {','.join(header) or '(empty)'}; expected image,labels"
            )
        for row in reader:
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2 or not row[0].strip():
                raise DataError(
                    f"{path}: line {reader.line_num}: expected image,labels, got {row!r}"
                )
            rows.append((reader.line_num, row[0].strip(), row[1].split()))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def resolve_image(csv_path: Path, line: int, name: str) -> Path:
    """An image named in a CSV: relative to the CSV's folder or its ``images/`` subfolder; the
    extension may be left out (Kaggle-style ids)."""
    for folder in (csv_path.parent, csv_path.parent / "images"):
        p = folder / name
        if p.is_file():
            return p
        if not p.suffix:
            for ext in IMAGE_EXTENSIONS:
                if p.with_suffix(ext).is_file():
                    return p.with_suffix(ext)
    raise DataError(
        f"{csv_path}: line {line}: image {name!r} not found in {csv_path.parent} "
        f"or {csv_path.parent / 'images'}"
    )


@register("multilabel_csv")
def multilabel_csv(cfg: DataConfig) -> Dataset:
    """Images listed in ``label_csv`` (default ``labels.csv`` in data_dir) with space-separated
    label names. Targets are multi-hot float32 [N, K] over the sorted label names of that CSV.

    A ``test_labels.csv`` next to it, in the same format, becomes the test set (its labels must
    all occur in the training CSV); without it ``x_test`` is None. Images without labels (an empty
    labels field) are allowed: an all-zero target.
    """
    root = data_dir(cfg)
    train_csv = root / (cfg.label_csv or "labels.csv")
    test_csv = train_csv.with_name("test_labels.csv")
    parts = {"train": (train_csv, read_label_csv(train_csv))}
    if test_csv.is_file() and test_csv != train_csv:
        parts["test"] = (test_csv, read_label_csv(test_csv))
    classes = sorted({lab for _, _, labs in parts["train"][1] for lab in labs})
    if not classes:
        raise DataError(f"{train_csv}: no labels in any row")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    targets: list[torch.Tensor] = []
    for csv_path, rows in parts.values():
        y = torch.zeros(len(rows), len(classes), dtype=torch.float32)
        for i, (line, name, labs) in enumerate(rows):
            unknown = [lab for lab in labs if lab not in index]
            if unknown:
                raise DataError(
                    f"{csv_path}: line {line}: labels {unknown} are not in {train_csv.name}"
                )
            y[i, [index[lab] for lab in labs]] = 1.0
            paths.append(resolve_image(csv_path, line, name))
        targets.append(y)
    x, notes = decode_images(paths, cfg.image_size, cfg.max_cache_gb)
    n_train = len(parts["train"][1])
    return Dataset(
        name=cfg.dataset,
        x_train=_part(x, 0, n_train),
        y_train=targets[0],
        x_test=_part(x, n_train) if "test" in parts else None,
        y_test=targets[1] if "test" in parts else None,
        classes=classes,
        multilabel=True,
        info={"source": [str(p) for p, _ in parts.values()], **notes},
    )
