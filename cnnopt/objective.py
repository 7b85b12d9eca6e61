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
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from cnnopt import dedup
from cnnopt.checkpoint import origin_number
from cnnopt.config import RunConfig
from cnnopt.cost import COST_ATTR, COSTS, Cost, describe_over, violations
from cnnopt.cost import measure as measure_cost
from cnnopt.data import load_split
from cnnopt.errors import CnnoptError, ConfigError, TrialFailed
from cnnopt.study import WARM_START, Study
from cnnopt.train import CudaContextLost, EpochStats, Interrupted, TrainResult, fit, hardware

Event = Callable[[dict[str, Any]], None]
# user attributes: the reasons an over-budget proposal was not trained; a Pareto study's
# per-epoch metric ({"epoch": value}), which Optuna's trial.report refuses to take there
OVER_BUDGET = "over_budget"
INTERMEDIATE = "intermediate"


def rung_points(
    ostudy: optuna.Study, step: int, study: Study, exclude: int | None = None
) -> list[tuple[float, tuple[float, ...]]]:
    """(metric at epoch ``step``, costs) of every trial of a Pareto study that reached it."""
    out = []
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    for t in ostudy.get_trials(deepcopy=False, states=states):
        value = t.user_attrs.get(INTERMEDIATE, {}).get(str(step))
        if t.number == exclude or value is None:
            continue
        costs = [t.user_attrs.get(COST_ATTR[c]) for c in study.cost_objectives]
        if any(c is None for c in costs):
            continue
        out.append((float(value), tuple(float(c) for c in costs)))
    return out


def _hold_after_epoch_for_tests(epoch: int, stopping: Callable[[], bool]) -> None:
    """Fault-test hook: while the file named by $CNNOPT_TEST_HOLD_AFTER_EPOCH exists and the run
    is not stopping, wait after an epoch is reported (and checkpointed) -- from epoch
    $CNNOPT_TEST_HOLD_FROM_EPOCH on, 1 if unset -- so a test finds a trial mid-way however fast
    or loaded the machine is."""
    path = os.environ.get("CNNOPT_TEST_HOLD_AFTER_EPOCH")
    if path and epoch >= int(os.environ.get("CNNOPT_TEST_HOLD_FROM_EPOCH") or 1):
        while os.path.exists(path) and not stopping():
            time.sleep(0.05)


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
        device_name: str | None = None,
        artifacts: Any = None,
    ):
        self.study = study
        self.device = torch.device(device)
        # the GPU as the runner numbers it: a worker sees only its own GPU, as cuda:0
        self.device_name = device_name or str(self.device)
        self.should_stop = should_stop or (lambda: False)
        self.emit = emit or (lambda event: None)
        self.metric = study.settings.metric
        self.checkpoints = checkpoints  # cnnopt.checkpoint.CheckpointStore or None
        self.artifacts = artifacts  # cnnopt.artifacts.TrialArtifacts or None
        self.cost: Cost | None = None  # the running trial's, when the study measures costs

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_tag())
        trial.set_user_attr("device", self.device_name)
        cfg = None
        self.cost = None
        # what the trial was doing and how large its model is, for an out-of-memory message
        where: dict[str, Any] = {"stage": "starting CUDA", "params": None}
        try:
            # CPU/GPU model and torch threads: a rebuild matches the stored curve to the last
            # digit only on the same kind of hardware with the same thread count (see
            # train.hardware). On a GPU this is the worker's first CUDA call, which creates its
            # context (hundreds of MiB): out of memory there fails this trial, not the worker.
            trial.set_user_attr("hardware", hardware(self.device))
            where["stage"] = "preparing the data"
            cfg = self.study.resolve(trial)
            trial.set_user_attr("seed", cfg.train.seed)
            if self.study.needs_cost:  # before deduplication: an over-budget twin is not waited on
                where["stage"] = "measuring the model's cost"
                self.cost = self._measure_cost(trial, cfg)
            plan = self._plan(trial, cfg)
            if plan.source is not None:
                return self._copy(trial, plan)
            if plan.seed != cfg.train.seed:  # a repeat with deduplicate = False: a new sample
                cfg = cfg.replace(seed=plan.seed)
                trial.set_user_attr("seed", plan.seed)
            ds, split, cfg = prepare(self.study, cfg, self.device)
        except ConfigError as e:  # this sampled combination is inconsistent: fail this trial only
            trial.set_user_attr("fail_reason", str(e))
            raise TrialFailed(str(e)) from None
        except CnnoptError as e:  # every trial would hit it (missing data, an unknown key): stop
            trial.set_user_attr("fail_reason", str(e))
            raise
        except RuntimeError as e:
            raise self._runtime_error(trial, e, cfg, where) from None
        where["stage"] = "building the model"
        trial.set_user_attr("config", cfg.to_dict())
        self.emit({"event": "start", "trial": trial.number})
        history: list[dict[str, Any]] = []
        # A warm start (the study file's `enqueue`) is trained to the end: the user wrote it down
        # because its full result is the evidence, and at an early rung a net built for a long
        # schedule (high-lr SGD) can trail one that fits fast and then levels off. It still
        # reports every epoch and enters every rung, so later trials are compared with it.
        warm_start = bool(trial.user_attrs.get(WARM_START))

        def on_epoch(stats: EpochStats) -> None:
            value = stats.metrics[self.metric]
            history.append(_epoch_record(stats))
            trial.set_user_attr("history", history)
            # sent before the value is judged: a diverged epoch was trained too (epoch budgets
            # count these events)
            self.emit(
                {
                    "event": "epoch",
                    "trial": trial.number,
                    "epoch": stats.epoch,
                    "epochs": cfg.train.epochs,
                    "value": value,
                }
            )
            if not math.isfinite(value):
                raise TrialFailed(f"{self.metric} became {value} at epoch {stats.epoch}")
            self._report(trial, value, stats.epoch)
            _hold_after_epoch_for_tests(stats.epoch, self.should_stop)
            if self.should_stop():
                raise Interrupted()
            # the last epoch is never pruned: the work is done, and a complete value teaches the
            # sampler more than a pruned one
            # asked for a warm start too, and its answer ignored: successive halving and
            # Hyperband record a trial's rung value inside should_prune(), and a trial that
            # never asks is no competitor at any rung
            if (
                stats.epoch < cfg.train.epochs
                and self._should_prune(trial, value, stats.epoch)
                and not warm_start
            ):
                raise optuna.TrialPruned(
                    f"pruned at epoch {stats.epoch} ({self.metric}={value:.4f})"
                )

        def on_start(result: TrainResult) -> None:
            where.update(stage="training", params=result.params)
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
                self._report(trial, stats.metrics[self.metric], stats.epoch)
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
        except RuntimeError as e:  # torch.OutOfMemoryError, cuDNN / cuBLAS, CUDA errors
            raise self._runtime_error(trial, e, cfg, where) from None
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
        return self._values(result.last(self.metric))

    # -- costs, budgets and Pareto studies (cnnopt/cost.py, cnnopt/pareto.py) -------------------
    def _measure_cost(self, trial: optuna.Trial, cfg: RunConfig) -> Cost:
        """Measure the configuration's cost before training; store it, set the sampler's
        constraints, and stop here (pruned at epoch 0, nothing trained) when it is over budget.

        PRUNED rather than FAIL or COMPLETE: a FAIL is invisible to every sampler, and a COMPLETE
        needs a value the trial never earned (and would stand in plots and counts as a result).
        A pruned trial has no value, so it is never the study's best, and its constraint
        violation makes TPE rank it below every feasible trial whatever its state."""
        _ds, _split, sized = prepare(self.study, cfg, self.device)
        cost = measure_cost(
            sized, self.device, self.study.needs_latency, self.study.settings.latency_batch
        )
        for name in COSTS:
            if cost.get(name) is not None:
                trial.set_user_attr(COST_ATTR[name], cost.get(name))
        if cost.latency_ms is not None:
            trial.set_user_attr(
                "latency", {"batch": cost.latency_batch, "device": self.device_name}
            )
        limits = self.study.limits
        for name, v in violations(cost, limits).items():
            trial.set_constraint(name, v)
        over = describe_over(cost, limits)
        if over:
            trial.set_user_attr(OVER_BUDGET, over)
            trial.set_user_attr("config", sized.to_dict())  # export and status show what it was
            self.emit({"event": "start", "trial": trial.number, "over_budget": over})
            raise optuna.TrialPruned(f"over budget, not trained: {'; '.join(over)}")
        return cost

    def _report(self, trial: optuna.Trial, value: float, step: int) -> None:
        """One epoch's metric to the storage: trial.report, or in a Pareto study (where Optuna's
        report raises) the ``intermediate`` user attribute that cnnopt's rung pruner reads."""
        if not self.study.multi_objective:
            trial.report(value, step)
            return
        values = dict(trial.user_attrs.get(INTERMEDIATE, {}))
        values[str(step)] = float(value)
        trial.set_user_attr(INTERMEDIATE, values)

    def _should_prune(self, trial: optuna.Trial, value: float, step: int) -> bool:
        if not self.study.multi_objective:
            return trial.should_prune()
        pruner = self.study.make_rung_pruner()
        if pruner is None or not pruner.decides_at(step) or not isinstance(trial, optuna.Trial):
            return False
        return pruner.should_stop(
            (value, self._costs()), rung_points(trial.study, step, self.study, trial.number)
        )

    def _costs(self) -> tuple[float, ...]:
        return tuple(float(self.cost.get(c)) for c in self.study.cost_objectives)  # type: ignore[arg-type]

    def _values(self, value: float) -> float | tuple[float, ...]:
        """What the trial returns: the metric, or in a Pareto study the metric and its costs."""
        if not self.study.multi_objective:
            return value
        return (value, *self._costs())

    # -- deduplication (cnnopt/dedup.py decides, this carries it out on the trial) --------------
    def _plan(self, trial: optuna.Trial, cfg: RunConfig) -> dedup.Plan:
        if not isinstance(trial, optuna.Trial):  # a FixedTrial (a warm-up run): no study to ask
            return dedup.Plan(dedup.config_hash(cfg), cfg.train.seed)
        return dedup.plan(
            trial.study,
            trial.number,
            cfg,
            deduplicate=self.study.settings.deduplicate,
            publish=trial.set_user_attr,
            origin=origin_number(trial),
            should_stop=self.should_stop,
            on_wait=lambda n: self.emit(
                {"event": "start", "trial": trial.number, "waiting_for": n}
            ),
        )

    def _copy(self, trial: optuna.Trial, plan: dedup.Plan) -> float:
        """Give the trial its trained twin's result: same intermediate values, and the same value
        or the same pruning step. No epoch is trained, so no ``history`` is stored."""
        src = plan.source
        assert src is not None
        trial.set_user_attr("duplicate_of", plan.duplicate_of)
        # what the model is, not what it cost to train
        for key in ("config", "params_count", "flops", "latency_ms", "latency"):
            if key in src.user_attrs:
                trial.set_user_attr(key, src.user_attrs[key])
        self.emit({"event": "start", "trial": trial.number, "duplicate_of": plan.duplicate_of})
        if self.study.multi_objective:
            trial.set_user_attr(INTERMEDIATE, dict(src.user_attrs.get(INTERMEDIATE, {})))
        for step, value in sorted(src.intermediate_values.items()):
            trial.report(value, step)
        if src.state == optuna.trial.TrialState.PRUNED:
            raise optuna.TrialPruned(
                f"duplicate of #{plan.duplicate_of}, pruned at epoch {src.last_step}"
            )
        assert src.values
        return src.values[0] if len(src.values) == 1 else tuple(src.values)

    def _runtime_error(
        self, trial: optuna.Trial, err: RuntimeError, cfg: RunConfig | None, where: dict
    ) -> BaseException:
        """What a RuntimeError out of torch means for the trial: out of memory fails the trial
        (the worker goes on); a sticky CUDA error fails it with its reason and ends the worker
        (CudaContextLost); anything else is raised as it is."""
        if is_out_of_memory(err):
            return self._out_of_memory(trial, err, cfg, where)
        if is_cuda_context_lost(err):
            err.with_traceback(None)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            reason = (
                f"CUDA error on {self.device_name} while {where['stage']}: {first[:160]} "
                "(the worker's CUDA context is lost: the worker restarts, the params are re-queued)"
            )
            trial.set_user_attr("fail_reason", reason)
            return CudaContextLost(reason, getattr(trial, "_trial_id", None))
        return err

    def _out_of_memory(
        self, trial: optuna.Trial, err: BaseException, cfg: RunConfig | None, where: dict
    ) -> TrialFailed:
        """The trial's failure for an out-of-memory error, naming its batch size and model size."""
        # The error's traceback holds the frames of the loop (activations, model): drop them now
        # (the worker's release_memory hands the cached blocks back after the trial).
        err.with_traceback(None)
        params = where["params"]
        if params is None and where["stage"] == "building the model" and cfg is not None:
            params = _params_on_meta(cfg)
        size = f"{params:,} params" if params is not None else "model not built yet"
        batch = cfg.train.batch_size if cfg is not None else "?"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        reason = (
            f"out of memory on {self.device_name} while {where['stage']} "
            f"(batch_size={batch}, {size}): {first[:160]}"
        )
        trial.set_user_attr("fail_reason", reason)
        return TrialFailed(reason)


OOM_MARKERS = (
    "out of memory",  # CUDA's caching allocator and "CUDA error: out of memory"
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "not enough memory",  # the CPU allocator
)


def is_out_of_memory(err: BaseException) -> bool:
    """torch.OutOfMemoryError, and the allocation failures that cuDNN and cuBLAS (a workspace or
    a handle they could not allocate) and the CPU allocator report as a plain RuntimeError."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and any(m in msg for m in OOM_MARKERS)


# CUDA's sticky errors: after one of these the process's context is corrupt and every later CUDA
# call fails with the same error, so only a new process can use the GPU again.
STICKY_CUDA_MARKERS = (
    "illegal memory access",  # cudaErrorIllegalAddress
    "device-side assert",  # cudaErrorAssert
    "unspecified launch failure",  # cudaErrorLaunchFailure
    "misaligned address",  # cudaErrorMisalignedAddress
    "illegal instruction",  # cudaErrorIllegalInstruction
    "invalid program counter",  # cudaErrorInvalidPc
    "hardware stack error",  # cudaErrorHardwareStackError
    "launch timed out",  # cudaErrorLaunchTimeout
    "uncorrectable ecc error",  # cudaErrorECCUncorrectable
    "uncorrectable nvlink error",  # cudaErrorNvlinkUncorrectable
    "operation not supported on global/shared address space",  # cudaErrorInvalidAddressSpace
)


def is_cuda_context_lost(err: BaseException) -> bool:
    """A CUDA error that leaves the process's CUDA context unusable (not out of memory)."""
    if not isinstance(err, RuntimeError) or is_out_of_memory(err):
        return False
    msg = str(err).lower()
    return any(m in msg for m in STICKY_CUDA_MARKERS)


def _params_on_meta(cfg: RunConfig) -> int | None:
    """The model's parameter count, built on the meta device (no memory), for an OOM message
    about a model too large to build."""
    from cnnopt.models import build_model, count_params

    try:
        with torch.device("meta"):  # the count does not depend on the weights: none are loaded
            return count_params(build_model(cfg.replace(pretrained=False).model))
    except Exception:  # noqa: BLE001 - a message detail: never the reason the trial fails
        return None


def _epoch_record(stats: EpochStats) -> dict[str, Any]:
    """One epoch as stored in the trial's ``history`` user attribute (flat, JSON-friendly)."""
    return {
        "epoch": stats.epoch,
        "train_loss": stats.train_loss,
        **stats.metrics,
        "seconds": stats.seconds,
        "images_per_second": stats.images_per_second,
    }
