"""The objective: the only code that holds an ``optuna.Trial``.

sample (study.resolve) -> data (cached split on the device) -> fit (train.py, no Optuna) with an
``on_epoch`` callback that reports to the trial and prunes -> value. Everything a later reader of the
storage needs is stored on the trial as user attributes: the resolved config (so export never needs
the study file), per-epoch curves, parameter count, FLOPs, speed, device, seed, worker, and on
failure the reason.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from typing import Any

import optuna
import torch

from cnnopt.config import RunConfig
from cnnopt.data import load_split
from cnnopt.errors import CnnoptError, ConfigError, TrialFailed
from cnnopt.study import Study
from cnnopt.train import EpochStats, Interrupted, TrainResult, fit

Event = Callable[[dict[str, Any]], None]


def worker_tag() -> str:
    """Identifies the process running a trial, so the runner can find a dead worker's trial."""
    return f"{socket.gethostname()}:{os.getpid()}"


def prepare(study: Study, cfg: RunConfig, device: torch.device | str):
    """Load (once per process) the data a config needs, and fill in the data-dependent sizes."""
    ds, split = load_split(cfg.data, device)
    cfg = cfg.replace(
        in_channels=ds.in_channels,
        input_size=cfg.data.image_size or ds.image_size,
        num_classes=ds.num_classes,
    )
    return ds, split, cfg


class Objective:
    def __init__(
        self,
        study: Study,
        device: torch.device | str = "cpu",
        should_stop: Callable[[], bool] | None = None,
        emit: Event | None = None,
        checkpoints: Any = None,
        artifacts: Any = None,
    ):
        self.study = study
        self.device = torch.device(device)
        self.should_stop = should_stop or (lambda: False)
        self.emit = emit or (lambda event: None)
        self.metric = study.settings.metric
        self.checkpoints = checkpoints  # cnnopt.checkpoint.CheckpointStore or None
        self.artifacts = artifacts  # cnnopt.artifacts.TrialArtifacts or None

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_tag())
        trial.set_user_attr("device", str(self.device))
        try:
            cfg = self.study.resolve(trial)
            trial.set_user_attr("seed", cfg.train.seed)
            ds, split, cfg = prepare(self.study, cfg, self.device)
        except ConfigError as e:  # this sampled combination is inconsistent: fail this trial only
            trial.set_user_attr("fail_reason", str(e))
            raise TrialFailed(str(e)) from None
        except CnnoptError as e:  # every trial would hit it (missing data, an unknown key): stop
            trial.set_user_attr("fail_reason", str(e))
            raise
        trial.set_user_attr("config", cfg.to_dict())
        self.emit({"event": "start", "trial": trial.number})
        history: list[dict[str, Any]] = []

        def on_epoch(stats: EpochStats) -> None:
            value = stats.metrics[self.metric]
            history.append(_epoch_record(stats))
            trial.set_user_attr("history", history)
            if not math.isfinite(value):
                raise TrialFailed(f"{self.metric} became {value} at epoch {stats.epoch}")
            trial.report(value, stats.epoch)
            self.emit(
                {"event": "epoch", "trial": trial.number, "epoch": stats.epoch, "value": value}
            )
            if self.should_stop():
                raise Interrupted()
            # the last epoch is never pruned: the work is done, and a complete value teaches the
            # sampler more than a pruned one
            if stats.epoch < cfg.train.epochs and trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at epoch {stats.epoch} ({self.metric}={value:.4f})"
                )

        def on_start(result: TrainResult) -> None:
            trial.set_user_attr("params_count", result.params)
            trial.set_user_attr("flops", result.flops)
            trial.set_user_attr("amp", result.amp)
            trial.set_user_attr("channels_last", result.channels_last)

        resume, on_checkpoint = None, None
        if self.checkpoints is not None:
            resume = self.checkpoints.load_for(trial)
            # what `cnnopt predict` needs besides the weights, should this become the best
            extra = {
                "classes": list(ds.classes),
                "multilabel": bool(ds.multilabel),
                "mean": [float(v) for v in split.mean.cpu()],
                "std": [float(v) for v in split.std.cpu()],
            }
            on_checkpoint = self.checkpoints.saver(trial, extra)
        if resume is not None:
            # a retried trial goes on from its original's last epoch: carry its curve over, so the
            # stored history and intermediate values are whole
            for h in resume.get("history", []):
                stats = EpochStats(**h)
                history.append(_epoch_record(stats))
                trial.report(stats.metrics[self.metric], stats.epoch)
            trial.set_user_attr("history", history)
            trial.set_user_attr("resumed_from_epoch", int(resume["epoch"]))
        outcome = "failed"  # for the learning-curve artifact
        try:
            result = fit(
                cfg,
                split,
                multilabel=ds.multilabel,
                device=self.device,
                on_start=on_start,
                on_epoch=on_epoch,
                should_stop=self.should_stop,
                resume=resume,
                on_checkpoint=on_checkpoint,
            )
            outcome = "complete"
        except optuna.TrialPruned:
            outcome = "pruned"
            raise
        except TrialFailed as e:
            trial.set_user_attr("fail_reason", str(e))
            raise
        except Interrupted:
            trial.set_user_attr(
                "fail_reason", "interrupted (the run was stopped); params re-queued"
            )
            raise
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            reason = f"out of memory on {self.device} (batch_size={cfg.train.batch_size})"
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason) from None
        finally:
            # written whatever the outcome, so pruned and failed trials show their cost too
            if history:
                secs = [h["seconds"] for h in history]
                trial.set_user_attr("seconds_per_epoch", sum(secs) / len(secs))
                trial.set_user_attr(
                    "images_per_second", sum(h["images_per_second"] for h in history) / len(history)
                )
            # still RUNNING here (Optuna sets the state after we return or raise): the last
            # moment the trial's own attributes take an artifact
            if history and self.artifacts is not None:
                self.artifacts.learning_curve(trial, history, outcome)
        if self.checkpoints is not None:
            on_best = None
            if self.artifacts is not None:
                on_best = lambda path: self.artifacts.checkpoint(trial, path)  # noqa: E731
            self.checkpoints.finished(trial, on_best)
        return result.last(self.metric)


def _epoch_record(stats: EpochStats) -> dict[str, Any]:
    """One epoch as stored in the trial's ``history`` user attribute (flat, JSON-friendly)."""
    return {
        "epoch": stats.epoch,
        "train_loss": stats.train_loss,
        **stats.metrics,
        "seconds": stats.seconds,
        "images_per_second": stats.images_per_second,
    }
