"""Per-epoch checkpoints, so that a retried trial resumes from its last epoch instead of epoch 0.

Study setting ``checkpoint = True``. After every epoch ``train.fit`` hands the objective a dict
(model, optimizer, scheduler, GradScaler, epoch, config, history); the store writes it,
atomically, to

    storage/checkpoints/<study>/<key>.pt

where ``key`` is the number of the *original* trial: a trial re-queued after its worker died
(``RetryHeartbeatStaleTrialCallback``, or ``recovery.fail_trial``) or after Ctrl-C carries
``system_attrs['failed_trial']`` = that number, so the retry finds the checkpoint its original wrote
(``load_for``), and goes on writing to the same file.

When a trial completes (``finished``), the best trial so far is copied to ``best.pt`` (with
``trial`` and ``value`` in it), replacing the previous best (under a file lock, as workers finish
at the same time). A trial's own checkpoint is removed by ``discard`` once Optuna has recorded the
trial finished (the runner calls it when a trial ends), not before: a worker killed between its
last epoch and that record leaves a retry that resumes after the last epoch instead of training
every epoch again. An interrupted trial's checkpoint is kept for its re-run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from cnnopt.storage import STORAGE_DIR


def origin_number(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The number of the trial this one retries (itself if it is not a retry)."""
    if isinstance(trial, optuna.trial.FrozenTrial):
        attrs = trial.system_attrs
    else:
        attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    return int(attrs.get("failed_trial", trial.number))


class CheckpointStore:
    def __init__(
        self,
        study_name: str,
        metric: str = "val_accuracy",
        direction: str = "maximize",
        root: str | Path = STORAGE_DIR / "checkpoints",
    ):
        self.folder = Path(root) / study_name
        self.metric = metric
        self.maximize = direction == "maximize"

    def path(self, key: int | str) -> Path:
        return self.folder / f"{key}.pt"

    @property
    def best_path(self) -> Path:
        return self.path("best")

    def load_for(self, trial: optuna.Trial) -> dict[str, Any] | None:
        """The checkpoint to resume ``trial`` from, or None (a fresh trial)."""
        origin = origin_number(trial)
        if origin == trial.number:
            return None
        p = self.path(origin)
        if not p.exists():
            return None
        try:
            # our own file, holding state dicts, the config dict and the history
            ckpt = torch.load(p, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a truncated file (killed mid-write): start over
            return None
        trial.set_user_attr("resumed_from_epoch", int(ckpt["epoch"]))
        return ckpt

    def saver(
        self, trial: optuna.Trial, extra: dict[str, Any] | None = None
    ) -> Callable[[dict[str, Any]], None]:
        """Writes each epoch's checkpoint, with ``extra`` (classes, mean, std: what a checkpoint
        needs to serve predictions) added."""
        p = self.path(origin_number(trial))
        number = trial.number

        def save(ckpt: dict[str, Any]) -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(f".{os.getpid()}.tmp")
            torch.save({**ckpt, **(extra or {}), "trial": number}, tmp)
            os.replace(tmp, p)  # atomic: a kill mid-save leaves the previous epoch's file

        return save

    def finished(self, trial: optuna.Trial, on_best: Callable[[Path], None] | None = None) -> None:
        """The trial completed: copy its checkpoint to best.pt if it is the best so far (then
        ``on_best(best.pt)``, under the lock, before another worker may replace it). Its own
        file stays until ``discard`` (see the module doc)."""
        p = self.path(origin_number(trial))
        if not p.exists():
            return
        value = self._value(p)
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".best.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            best = self.best_info()
            better = value is not None and (
                best is None
                or best.get("value") is None
                or (value > best["value"] if self.maximize else value < best["value"])
            )
            if better:
                import shutil

                tmp = self.best_path.with_suffix(f".{os.getpid()}.tmp")
                shutil.copyfile(p, tmp)
                os.replace(tmp, self.best_path)  # atomic, as in saver
                info = {"trial": trial.number, "value": value}
                (self.folder / "best.json").write_text(json.dumps(info) + "\n")
                if on_best is not None:
                    on_best(self.best_path)

    def discard(self, trial: optuna.trial.FrozenTrial) -> None:
        """Remove a finished trial's checkpoint (it will not be resumed)."""
        self.path(origin_number(trial)).unlink(missing_ok=True)

    def best_info(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / "best.json").read_text())
        except (OSError, ValueError):
            return None

    def _value(self, p: Path) -> float | None:
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=False)
            return float(ckpt["history"][-1]["metrics"][self.metric])
        except Exception:  # noqa: BLE001
            return None
