"""`cnnopt export`: one trial, as a file that rebuilds its run without the storage.

The file holds the trial's params, its resolved RunConfig (the ``config`` user attribute, or, for
trials stored before that attribute existed, the study file replayed on the params), the study
file's path and hash, the study settings, seed, the validation value and metric, the per-epoch
history, and the versions of cnnopt, torch and optuna. ``cnnopt train`` reads it back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import platform
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnopt.config import RunConfig
from cnnopt.errors import CnnoptError, StorageError
from cnnopt.status import load_study
from cnnopt.storage import mask_url
from cnnopt.study import trial_source

log = logging.getLogger("cnnopt")
FORMAT = "cnnopt-export/1"


def versions() -> dict[str, str]:
    import torch

    from cnnopt import __version__

    return {
        "cnnopt": __version__,
        "torch": str(torch.__version__),
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }


def file_sha256(path: str | Path) -> str | None:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def pick_trial(ostudy: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    if number is None:
        if len(ostudy.directions) > 1:
            raise StorageError(
                f"study {ostudy.study_name!r} is a Pareto study: it has a front, not one best "
                "trial; pass --trial N (--pareto lists the front)"
            )
        try:
            return ostudy.best_trial
        except ValueError:
            raise StorageError(
                f"study {ostudy.study_name!r} has no complete trial yet; pass --trial N"
            ) from None
    for t in ostudy.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise StorageError(f"study {ostudy.study_name!r} has no trial #{number}")


def study_file_path(study_file: dict[str, Any]) -> str | None:
    """The study file as recorded (relative to where `cnnopt run` ran), else its absolute path."""
    path = study_file.get("path")
    if path and not Path(path).is_file() and study_file.get("abs_path"):
        return study_file["abs_path"]
    return path


def trial_config(
    trial: optuna.trial.FrozenTrial, study_file: dict[str, Any] | None
) -> tuple[RunConfig, str]:
    """The trial's RunConfig and where it came from ('config attr' or 'study file replay')."""
    if "config" in trial.user_attrs:
        return RunConfig.from_dict(trial.user_attrs["config"]), "config user attribute"
    path = study_file_path(study_file or {})
    if not path or not Path(path).is_file():
        raise CnnoptError(
            f"trial #{trial.number} has no stored config and the study file "
            f"{(study_file or {}).get('path')!r} is not available to replay its params"
        )
    from cnnopt.study import Study

    overrides = study_file.get("overrides", study_file.get("fixed")) or {}
    study = Study.load(path, overrides)
    return study.config_from_params(trial.params), "study file replayed on the params"


def build_export(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial, url: str) -> dict:
    study_file = ostudy.user_attrs.get("study_file") or {}
    cfg, source = trial_config(trial, study_file)
    path = study_file_path(study_file)
    stored_hash = study_file.get("sha256")
    current = file_sha256(path) if path else None
    warnings: list[str] = []
    if path and current is None:
        warnings.append(f"study file {path} is not found here")
    elif current is not None and stored_hash and current != stored_hash:
        warnings.append(
            f"study file {path} changed since the study ran (sha256 {current[:12]} != "
            f"stored {stored_hash[:12]}); the exported config is the stored one"
        )
    metric = ostudy.user_attrs.get("metric", "value")
    return {
        "format": FORMAT,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "study": {
            "name": ostudy.study_name,
            "storage": mask_url(url),
            "direction": ",".join(d.name.lower() for d in ostudy.directions),
            "metric": metric,
            "file": {"path": path, "sha256": stored_hash, "current_sha256": current},
            "settings": study_file.get("settings", {}),
            "fixed": study_file.get("fixed", {}),
        },
        "trial": {
            "number": trial.number,
            "state": trial.state.name,
            # the metric (a Pareto study's trials have the metric first, then their costs)
            "value": trial.values[0] if trial.values else None,
            "values": trial.values,
            "metric": metric,
            "params": trial.params,
            # found by the search, or written down by a person (study.trial_source)
            "source": trial_source(trial),
            "seed": trial.user_attrs.get("seed", cfg.train.seed),
            "params_count": trial.user_attrs.get("params_count"),
            "flops": trial.user_attrs.get("flops"),
            "latency_ms": trial.user_attrs.get("latency_ms"),
            "over_budget": trial.user_attrs.get("over_budget"),
            "seconds_per_epoch": trial.user_attrs.get("seconds_per_epoch"),
            "images_per_second": trial.user_attrs.get("images_per_second"),
            "device": trial.user_attrs.get("device"),
            "hardware": trial.user_attrs.get("hardware"),
            "amp": trial.user_attrs.get("amp"),
            "history": trial.user_attrs.get("history", []),
            "intermediate_values": {str(k): v for k, v in trial.intermediate_values.items()},
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "datetime_complete": trial.datetime_complete.isoformat()
            if trial.datetime_complete
            else None,
        },
        "config": cfg.to_dict(),
        "config_source": source,
        "versions": versions(),
        "warnings": warnings,
    }


def dump(data: dict, out: str | Path, fmt: str | None = None) -> Path:
    out = Path(out)
    fmt = fmt or ("yaml" if out.suffix in (".yaml", ".yml") else "json")
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(data, default=str))  # plain types only, for YAML too
    if fmt == "yaml":
        import yaml

        out.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        out.write_text(json.dumps(data, indent=2) + "\n")
    return out


def load_export(path: str | Path) -> dict:
    """Read an export file (JSON or YAML, by content)."""
    p = Path(path)
    if not p.is_file():
        raise CnnoptError(f"export file not found: {p}")
    text = p.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CnnoptError(f"{p}: neither JSON nor YAML: {e}") from None
    if not isinstance(data, dict) or "config" not in data:
        raise CnnoptError(f"{p}: not a cnnopt export file (no 'config')")
    return data


def export(
    study_name: str,
    out: str | Path,
    trial: int | None = None,
    fmt: str | None = None,
    storage: str | None = None,
    checkpoint: str | Path | None = None,
    artifacts: str | None = None,
) -> tuple[Path, dict]:
    """Write the export file; with ``checkpoint``, also download the trial's checkpoint artifact
    there (its path goes into the file as ``checkpoint``)."""
    ostudy, url = load_study(study_name, storage)
    t = pick_trial(ostudy, trial)
    if t.state != TrialState.COMPLETE:
        log.warning("trial #%d is %s, not COMPLETE", t.number, t.state.name)
    data = build_export(ostudy, t, url)
    if checkpoint is not None:
        from cnnopt.artifacts import fetch_checkpoint

        path, meta = fetch_checkpoint(ostudy, t, checkpoint, artifacts)
        data["checkpoint"] = {"path": str(path), "artifact": meta.filename}
    for w in data["warnings"]:
        log.warning(w)
    return dump(data, out, fmt), data


def export_pareto(
    study_name: str, out: str | Path, fmt: str | None = None, storage: str | None = None
) -> tuple[Path, dict]:
    """Write a Pareto study's front (status.pareto_rows: complete front trials, and pruned
    trials no complete front point dominates, marked) with each point's params; any one of them
    is then exported for ``cnnopt train`` with ``--trial N``."""
    from cnnopt.status import objective_names, pareto_rows

    ostudy, url = load_study(study_name, storage)
    if len(ostudy.directions) < 2:
        raise StorageError(
            f"study {study_name!r} has one objective, so no Pareto front; export its best "
            "trial without --pareto"
        )
    data = {
        "format": "cnnopt-pareto/1",
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "study": {"name": ostudy.study_name, "storage": mask_url(url)},
        "objectives": objective_names(ostudy),
        "directions": [d.name.lower() for d in ostudy.directions],
        "front": pareto_rows(ostudy),
    }
    return dump(data, out, fmt), data
