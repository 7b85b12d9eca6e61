"""Plain, typed configuration of one training run.

A trial is fully described by a RunConfig: four small dataclasses (model, data, augmentation,
training). Study files and search spaces speak in *flat* keys (``lr=1e-3``, ``batchnorm="before"``);
every flat key belongs to exactly one of the four dataclasses, so ``RunConfig.from_flat`` can route
it and reject anything unknown with a message that names the key. Nothing here imports Optuna: a
stored trial is rebuilt from its resolved config (stored as a user attribute) or by replaying the
study's search space on its params (see ``study.Study.resolve``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from cnnopt.errors import ConfigError, StudyFileError

# Allowed values of the string-valued settings. Kept in one place so that the study-file validator,
# the model builder and the error messages agree.
CHOICES: dict[str, tuple[str, ...]] = {
    "batchnorm": ("none", "before", "after"),
    "activation": ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid"),
    "init": ("default", "he", "glorot", "zero"),
    "pool": ("max", "avg"),
    "optimizer": (
        "sgd",
        "sgd_momentum",
        "sgd_nesterov",
        "adam",
        "adamw",
        "rmsprop",
        "adamax",
        "adagrad",
        "adadelta",
        "nadam",
    ),
    "schedule": ("none", "step", "step_decay", "cosine", "onecycle"),
    "amp": ("auto", "bf16", "fp16", "off"),
    "channels_last": ("auto", "on", "off"),
    "bad_rows": ("drop", "error"),
}

TORCHVISION_FAMILIES = (
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "shufflenet_v2_x1_0",
    "vgg16",
)
FAMILIES = ("mlp", "cnn", *TORCHVISION_FAMILIES)
CHOICES["family"] = FAMILIES


@dataclass
class ModelConfig:
    """Architecture. ``in_channels``, ``input_size`` and ``num_classes`` come from the dataset."""

    family: str = "cnn"
    conv_blocks: int = 2  # number of conv blocks, each ended by a pooling layer
    filters: tuple[int, ...] = (32, 64)  # output channels of each block (len == conv_blocks)
    convs_per_block: int = 1  # conv layers inside a block (VGG-style blocks use 2)
    kernel_size: int = 3
    batchnorm: str = "none"  # BatchNorm before or after the activation, or none
    activation: str = "relu"
    dropout: float | tuple[float, ...] = 0.0  # after each conv block: constant, or one per block
    hidden: tuple[int, ...] = (128,)  # dense layers after the convolutions (R2's "l1")
    dense_dropout: float = 0.0  # dropout before each dense layer
    pool: str = "max"
    global_pool: bool = False  # global average pooling instead of flatten (far fewer params)
    init: str = "default"  # weight init: PyTorch default, He (kaiming), Glorot (xavier), zero
    pretrained: bool = False  # torchvision families: ImageNet weights
    freeze: str = "none"  # torchvision families: none | backbone | last:K (train last K blocks)
    in_channels: int = 1
    input_size: int = 28
    num_classes: int = 10

    def block_dropouts(self) -> tuple[float, ...]:
        """Dropout after each conv block, expanding a constant to all blocks."""
        if isinstance(self.dropout, tuple):
            if len(self.dropout) != self.conv_blocks:
                raise ConfigError(
                    f"dropout has {len(self.dropout)} values but conv_blocks={self.conv_blocks}"
                )
            return self.dropout
        return (float(self.dropout),) * self.conv_blocks


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    data_dir: str | None = None  # None: $CNNOPT_DATA_DIR, else ./data (downloads where possible)
    val_fraction: float = 0.2  # fixed, seeded split of the training set (R1 and R2 used 20%)
    split_seed: int = 0  # seed of that split; the same for every trial of a study
    train_subset: int | None = None  # use only this many training images (before the split)
    image_size: int | None = None  # resize to this size; None keeps the native size
    bad_rows: str = "drop"  # CSV datasets: drop (and report) malformed rows, or stop
    label_csv: str | None = None  # multilabel_csv: the CSV of image,labels (relative to data_dir)
    max_cache_gb: float = 4.0  # image folders larger than this once decoded are streamed
    stream_workers: int | None = None  # DataLoader workers when streamed; None: half the cores


@dataclass
class AugmentConfig:
    """Batched, on-device augmentation of training batches (never of validation batches)."""

    hflip: bool = False
    crop_padding: int = 0  # random crop after zero padding: shifts of up to N pixels
    translate: float = 0.0  # random affine translation, fraction of the image size
    scale: float = 0.0  # random zoom in [1 - s, 1 + s]
    rotation: float = 0.0  # degrees
    brightness: float = 0.0
    contrast: float = 0.0
    cutout: int = 0  # side of the square erased from each image (0: off)
    mixup: float = 0.0  # Beta(alpha, alpha) mixup; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) cutmix; 0: off


@dataclass
class TrainConfig:
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD variants and RMSprop
    batch_size: int = 128
    epochs: int = 10
    weight_decay: float = 0.0  # L2 (decoupled for AdamW)
    l1: float = 0.0  # L1 penalty on weights, added to the loss
    label_smoothing: float = 0.0
    schedule: str = "none"
    step_size: int = 10  # StepLR period in epochs (R2: x0.1 every 10 epochs)
    gamma: float = 0.1
    patience: int | None = None  # early stopping on validation loss (R3 used 3)
    # auto: bf16 on CPUs that have it and on GPUs that do it natively (compute capability 8.0+),
    # fp16 with a GradScaler on older GPUs (V100, T4); off elsewhere (see train.amp_dtype)
    amp: str = "auto"
    channels_last: str = "auto"
    tta_flip: bool = False  # average predictions over the image and its mirror at evaluation
    threshold: float = 0.5  # multi-label: a label is predicted when its sigmoid exceeds this
    seed: int = 0


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "augment": AugmentConfig,
    "train": TrainConfig,
}

# Flat key -> section. Built once; a duplicate field name across sections is a programming error.
KEY_SECTION: dict[str, str] = {}
for _section, _cls in SECTIONS.items():
    for _f in dataclasses.fields(_cls):
        assert _f.name not in KEY_SECTION, f"duplicate config key {_f.name}"
        KEY_SECTION[_f.name] = _section
FIELD_TYPES: dict[str, Any] = {
    f.name: typing.get_type_hints(cls)[f.name]
    for cls in SECTIONS.values()
    for f in dataclasses.fields(cls)
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any, where: str = "") -> Any:
    """Check ``value`` against the annotated type ``tp`` and return it in canonical form.

    Lists become tuples, ints are accepted for floats, strings are checked against CHOICES.
    Raises StudyFileError naming the key, the value and ``where`` (a file or '--set').
    """
    loc = f"{where}: " if where else ""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in typing.get_args(tp):
            if alt is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(key, value, alt, where)
            except StudyFileError as e:
                errors.append(e)
        raise StudyFileError(f"{loc}{key}={value!r} must be {_type_name(tp)}")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and item_tp in (int, float)
        ):
            raise StudyFileError(f"{loc}{key}={value!r} must be a list of {item_tp.__name__}")
        if not isinstance(value, list | tuple):
            raise StudyFileError(f"{loc}{key}={value!r} must be a list of {item_tp.__name__}")
        return tuple(coerce(key, v, item_tp, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise StudyFileError(f"{loc}{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise StudyFileError(f"{loc}{key}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise StudyFileError(f"{loc}{key}={value!r} must be a number")
    if tp is str:
        if not isinstance(value, str):
            raise StudyFileError(f"{loc}{key}={value!r} must be a string")
        allowed = CHOICES.get(key)
        if allowed and value not in allowed and not (key == "freeze"):
            raise StudyFileError(f"{loc}{key}={value!r} is not one of {', '.join(allowed)}")
        return value
    return value


@dataclass
class RunConfig:
    """Everything needed to train one model: what a trial's params resolve to."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_flat(cls, values: dict[str, Any], where: str = "") -> RunConfig:
        """Build from flat keys; unknown keys and bad types raise StudyFileError."""
        parts: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for key, value in values.items():
            section = KEY_SECTION.get(key)
            if section is None:
                loc = f"{where}: " if where else ""
                raise StudyFileError(f"{loc}unknown setting {key!r}")
            parts[section][key] = coerce(key, value, FIELD_TYPES[key], where)
        cfg = cls(**{s: SECTIONS[s](**kw) for s, kw in parts.items()})
        cfg.validate()
        return cfg

    def to_flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested, JSON-friendly (tuples become lists)."""
        return {s: _jsonable(dataclasses.asdict(getattr(self, s))) for s in SECTIONS}

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, Any]]) -> RunConfig:
        flat: dict[str, Any] = {}
        for section in SECTIONS:
            flat.update(d.get(section, {}))
        return cls.from_flat(flat)

    def replace(self, **flat: Any) -> RunConfig:
        """A copy with some flat keys changed (validated like everything else)."""
        values = self.to_flat()
        values.update(flat)
        return RunConfig.from_flat(values)

    def validate(self) -> None:
        m, t, d = self.model, self.train, self.data
        if m.family == "cnn":
            if m.conv_blocks < 1:
                raise ConfigError(f"conv_blocks={m.conv_blocks} must be at least 1")
            if len(m.filters) != m.conv_blocks:
                raise ConfigError(
                    f"filters={list(m.filters)} has {len(m.filters)} values but conv_blocks={m.conv_blocks}"
                )
            m.block_dropouts()
        if not 0.0 <= d.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={d.val_fraction} must be in [0, 1)")
        if t.lr <= 0:
            raise ConfigError(f"lr={t.lr} must be positive")
        if t.batch_size < 1 or t.epochs < 1:
            raise ConfigError(f"batch_size={t.batch_size} and epochs={t.epochs} must be >= 1")
        if m.freeze != "none" and m.freeze != "backbone" and not m.freeze.startswith("last:"):
            raise ConfigError(f"freeze={m.freeze!r} is not none, backbone or last:K")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v
