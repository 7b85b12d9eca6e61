"""Trial artifacts: files attached to trials through Optuna's artifact API, shown by optuna-dashboard.

Where they go (the *location*): the study setting ``artifacts`` (or ``--artifacts`` / $CNNOPT_ARTIFACTS):
a folder (``FileSystemArtifactStore``; default ``storage/artifacts/<study>/``) or
``s3://bucket[/prefix]`` (``Boto3ArtifactStore``, the choice when workers run on several machines;
boto3 is imported only then). ``none`` turns artifacts off. `cnnopt run` records the resolved
location in the study's ``artifacts`` user attribute, so `dashboard`, `export` and `train` find the
store from the storage alone.

What is attached:
- every trial that ran at least one epoch (complete, pruned, failed): its learning curve
  (train/val loss and the metric per epoch, the pruned or failed epoch marked) as plotly HTML, and
  as PNG when kaleido can start a Chromium (without one, HTML only: `cnnopt run` says so once);
- with ``checkpoint = True``: the checkpoint of each trial that was the best so far when it ended
  (so the best trial always has one), ready for ``cnnopt export --checkpoint`` and ``cnnopt predict``;
- `cnnopt train`: its final checkpoint, results.json and confusion matrix.

A running trial gets its files with ``optuna.artifacts.upload_artifact`` (the ``artifacts:<id>``
trial system attribute). A *finished* trial's attributes are frozen (Optuna raises
UpdateFinishedTrialError), so `cnnopt train` records its files the way optuna-dashboard lists
trial artifacts kept on the study: the study system attribute ``dashboard:artifacts:<trial_id>:<id>``.
``trial_artifacts`` reads both. A failed upload never fails a trial: it is logged and skipped.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import (
    ArtifactMeta,
    FileSystemArtifactStore,
    download_artifact,
    get_all_artifact_meta,
    upload_artifact,
)
from optuna.artifacts.exceptions import ArtifactNotFound

from cnnopt.errors import ArtifactError
from cnnopt.storage import STORAGE_DIR, mask_url

log = logging.getLogger("cnnopt")

ARTIFACTS_DIR = STORAGE_DIR / "artifacts"
OFF = "none"
USER_ATTR = "artifacts"  # the study user attribute holding the resolved location
# optuna-dashboard's key for a trial's artifact kept on the study (see the module docstring)
DASHBOARD_PREFIX = "dashboard:artifacts:"
DEFAULT_MIME = "application/octet-stream"


# -- locations and stores ------------------------------------------------------------------------


def is_s3(location: str) -> bool:
    return location.startswith("s3://")


def resolve_location(setting: str | None, study_name: str) -> str | None:
    """The location a study's artifacts go to: the setting, else storage/artifacts/<study>
    (absolute, so a dashboard started elsewhere finds it); None when turned off."""
    loc = setting or str(ARTIFACTS_DIR / study_name)
    if loc.strip().lower() == OFF:
        return None
    return loc if is_s3(loc) else str(Path(loc).expanduser().resolve())


class _Folder(FileSystemArtifactStore):
    """FileSystemArtifactStore that creates its folder on the first write (opening a store has no
    side effect, so reading a study never litters the disk)."""

    def __init__(self, base_path: str | Path) -> None:
        super().__init__(base_path)
        self.location = str(base_path)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._base_path.mkdir(parents=True, exist_ok=True)
        super().write(artifact_id, content_body)


class _Prefixed:
    """An artifact store whose ids live under ``prefix`` (Boto3ArtifactStore has no prefix)."""

    def __init__(self, store: Any, prefix: str, location: str) -> None:
        self._store, self._prefix, self.location = store, prefix, location

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._store.open_reader(self._prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._store.write(self._prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._store.remove(self._prefix + artifact_id)


class Chain:
    """Several studies' stores as one (optuna-dashboard takes a single store for a storage that
    may hold many studies): reads try each store in turn; writes go to the first."""

    def __init__(self, stores: list[Any]) -> None:
        self.stores = stores
        self.location = ", ".join(getattr(s, "location", "?") for s in stores)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        for s in self.stores:
            try:
                return s.open_reader(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of {self.location}")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        for s in self.stores:
            try:
                s.remove(artifact_id)
            except ArtifactNotFound:
                continue


def open_store(location: str) -> Any:
    """An Optuna artifact store for ``location`` (a folder or s3://bucket[/prefix])."""
    if not is_s3(location):
        return _Folder(location)
    bucket, _, prefix = location[len("s3://") :].partition("/")
    if not bucket:
        raise ArtifactError(f"artifact location {location!r}: expected s3://bucket[/prefix]")
    try:
        import boto3  # noqa: F401 - Boto3ArtifactStore needs it; only S3 users install it
    except ImportError:
        raise ArtifactError(
            f"artifact location {location}: S3 needs boto3 (pip install 'cnnopt[s3]')"
        ) from None
    from optuna.artifacts import Boto3ArtifactStore

    store = Boto3ArtifactStore(bucket)
    prefix = prefix.strip("/")
    return _Prefixed(store, prefix + "/", location) if prefix else _Prefixed(store, "", location)


def study_location(ostudy: optuna.Study) -> str | None:
    """Where a stored study's artifacts are: as `cnnopt run` recorded it, else the default
    folder if it exists."""
    loc = ostudy.user_attrs.get(USER_ATTR)
    if loc:
        return loc
    default = resolve_location(None, ostudy.study_name)
    return default if default and Path(default).is_dir() else None


def storage_store(storage: optuna.storages.BaseStorage, location: str | None = None) -> Any:
    """The store optuna-dashboard serves for a storage: ``location`` if given, else every
    study's recorded location (a Chain when there are several); None when there is none."""
    if location:
        loc = resolve_location(location, "")
        return open_store(loc) if loc else None
    locations: list[str] = []
    for s in storage.get_all_studies():
        loc = s.user_attrs.get(USER_ATTR)
        if not loc:
            default = resolve_location(None, s.study_name)
            loc = default if default and Path(default).is_dir() else None
        if loc and loc not in locations:
            locations.append(loc)
    if not locations:
        return None
    stores = [open_store(loc) for loc in locations]
    return stores[0] if len(stores) == 1 else Chain(stores)


# -- upload and download -------------------------------------------------------------------------


def _named(path: Path, name: str | None, tmp: str) -> Path:
    """``path`` under the file name ``name`` (upload_artifact names the artifact after the file):
    a symlink in ``tmp``, no copy."""
    if not name or name == path.name:
        return path
    link = Path(tmp) / name
    link.symlink_to(path.resolve())
    return link


def upload_to_trial(store: Any, trial: optuna.Trial, path: str | Path, name: str | None = None):
    """Attach a file to a *running* trial (Optuna's own API). Returns the artifact id."""
    with tempfile.TemporaryDirectory() as tmp:
        p = _named(Path(path), name, tmp)
        return upload_artifact(artifact_store=store, file_path=str(p), study_or_trial=trial)


def attach_to_finished(
    store: Any, ostudy: optuna.Study, trial_id: int, path: str | Path, name: str | None = None
) -> str:
    """Attach a file to a *finished* trial: the store, plus the study system attribute that
    optuna-dashboard lists under the trial (a finished trial's own attributes are frozen)."""
    filename = name or Path(path).name
    mimetype, encoding = mimetypes.guess_type(filename)
    meta = ArtifactMeta(str(uuid.uuid4()), filename, mimetype or DEFAULT_MIME, encoding)
    with open(path, "rb") as f:
        store.write(meta.artifact_id, f)  # the file first: a listed artifact is always there
    ostudy._storage.set_study_system_attr(
        ostudy._study_id,
        f"{DASHBOARD_PREFIX}{trial_id}:{meta.artifact_id}",
        json.dumps(asdict(meta)),
    )
    return meta.artifact_id


def trial_artifacts(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial) -> list[ArtifactMeta]:
    """Every artifact of a trial, uploaded while it ran or attached later, oldest first."""
    metas = get_all_artifact_meta(trial, storage=ostudy._storage)
    prefix = f"{DASHBOARD_PREFIX}{trial._trial_id}:"
    for key, value in ostudy._storage.get_study_system_attrs(ostudy._study_id).items():
        if key.startswith(prefix):
            metas.append(ArtifactMeta(**json.loads(value)))
    return metas


def find_checkpoint(ostudy: optuna.Study, trial: optuna.trial.FrozenTrial) -> ArtifactMeta:
    """The trial's checkpoint artifact: the `cnnopt train` one if it was retrained (trained on
    the full training set), else the one the study kept."""
    metas = [m for m in trial_artifacts(ostudy, trial) if m.filename.endswith(".pt")]
    for prefix in ("final-", "trial-"):
        found = [m for m in metas if m.filename.startswith(prefix)]
        if found:
            return found[-1]
    if metas:
        return metas[-1]
    raise ArtifactError(
        f"trial #{trial.number} of {ostudy.study_name!r} has no checkpoint artifact (the study "
        "keeps checkpoints with `checkpoint = True`; `cnnopt train` attaches its own)"
    )


def fetch_checkpoint(
    ostudy: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    out: str | Path,
    location: str | None = None,
) -> tuple[Path, ArtifactMeta]:
    """Download the trial's checkpoint artifact to ``out`` (replacing it)."""
    loc = resolve_location(location, ostudy.study_name) if location else study_location(ostudy)
    if loc is None:
        raise ArtifactError(f"study {ostudy.study_name!r} has no artifact store: pass --artifacts")
    meta = find_checkpoint(ostudy, trial)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    tmp.unlink(missing_ok=True)
    try:
        download_artifact(
            artifact_store=open_store(loc), file_path=str(tmp), artifact_id=meta.artifact_id
        )
    except ArtifactNotFound:
        raise ArtifactError(
            f"checkpoint {meta.filename} ({meta.artifact_id}) of trial #{trial.number} is "
            f"listed but not in {loc}"
        ) from None
    os.replace(tmp, out)
    return out, meta


# -- figures -------------------------------------------------------------------------------------

_png = {"ok": None}  # None: not tried yet in this process; False: kaleido cannot run here


def write_figure(fig: Any, stem: Path, png: bool = True) -> list[Path]:
    """``stem``.html (plotly.js from its CDN: one 4 MB copy per trial would dwarf the data), and
    ``stem``.png when kaleido can run; its first failure is said once, then HTML only."""
    html = stem.with_suffix(".html")
    fig.write_html(html, include_plotlyjs="cdn", full_html=True)
    out = [html]
    if png and write_png(fig, stem.with_suffix(".png")):
        out.append(stem.with_suffix(".png"))
    return out


def png_unavailable() -> str | None:
    """Why PNG export cannot run here (no kaleido, or no Chromium for it to drive), or None when
    it may: a lookup on PATH and $BROWSER_PATH, no browser started. `cnnopt run` asks once and
    says it once, so N workers do not each start a browser to find out and each warn."""
    try:
        import kaleido  # noqa: F401
        from choreographer.browsers.chromium import Chromium
    except ImportError as e:
        return f"kaleido is not installed ({e.name})"
    try:
        path = Chromium.find_browser(skip_local=False)
    except Exception as e:  # noqa: BLE001 - a best-effort lookup
        return f"no Chromium found ({type(e).__name__}: {e})"
    if not path or not Path(path).is_file():
        return "no Chromium found on PATH or $BROWSER_PATH (kaleido drives one)"
    return None


def write_png(fig: Any, path: Path, width: int = 900, height: int = 500) -> bool:
    """PNG through plotly's kaleido (which drives a Chromium: $BROWSER_PATH or one on PATH).
    False when it cannot run here; the first failure is logged once per process.

    Each call starts its own Chromium (about 2.5 s on a loaded 2-core machine). kaleido's
    persistent server would take 0.15 s a figure, but it waits forever when its browser cannot
    start or dies (kaleido 1.5), and a worker must never hang on a figure."""
    if _png["ok"] is False:
        return False
    try:
        fig.write_image(path, width=width, height=height, scale=1)
    except Exception as e:  # noqa: BLE001 - no kaleido, or no Chromium for it
        _png["ok"] = False
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log.warning(
            "figures are kept as HTML only: PNG export (plotly's kaleido with Chromium) failed: %s",
            first[:200],
        )
        return False
    _png["ok"] = True
    return True


def learning_curve_figure(
    history: list[dict[str, Any]], metric: str, outcome: str, title: str
) -> Any:
    """Train/val loss (left axis) and the metric or val accuracy (right axis) per epoch; the last
    epoch of a pruned or failed trial is marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    epochs = [h["epoch"] for h in history]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for key, dash in (("train_loss", "dot"), ("val_loss", "solid")):
        if any(key in h for h in history):
            ys = [h.get(key) for h in history]
            fig.add_trace(
                go.Scatter(x=epochs, y=ys, name=key, mode="lines+markers", line_dash=dash),
                secondary_y=False,
            )
    right = metric if "loss" not in metric else "val_accuracy"
    if any(right in h for h in history):
        fig.add_trace(
            go.Scatter(
                x=epochs, y=[h.get(right) for h in history], name=right, mode="lines+markers"
            ),
            secondary_y=True,
        )
    if outcome in ("pruned", "failed") and history and metric in history[-1]:
        last = history[-1]
        fig.add_trace(
            go.Scatter(
                x=[last["epoch"]],
                y=[last[metric]],
                name=f"{outcome} at epoch {last['epoch']}",
                mode="markers+text",
                marker={"symbol": "x", "size": 16, "color": "crimson"},
                text=[outcome],
                textposition="top center",
            ),
            secondary_y="loss" not in metric,
        )
    fig.update_layout(title=title, xaxis_title="epoch", width=900, height=500)
    fig.update_xaxes(dtick=1 if len(epochs) <= 20 else None)
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text=right, secondary_y=True)
    values = [h[right] for h in history if isinstance(h.get(right), int | float)]
    if values and "accuracy" in right:
        # accuracy stays in [0, 1]: clamp the axis to the data instead of plotly's symmetric
        # padding (which spans 0.1 to 1.9 when the values are all 1.0)
        lo, hi = min(values), max(values)
        pad = max(0.02, 0.1 * (hi - lo))
        fig.update_yaxes(
            range=[max(0.0, lo - pad), min(1.0, hi + pad)], tickformat=".3~f", secondary_y=True
        )
    return fig


# -- what the objective and `cnnopt train` call ----------------------------------------------


class TrialArtifacts:
    """The objective's uploader (one per worker process)."""

    def __init__(self, location: str, metric: str, png: bool = True) -> None:
        self.location = location
        self.store = open_store(location)
        self.metric = metric
        self.png = png

    def learning_curve(self, trial: optuna.Trial, history: list[dict], outcome: str) -> None:
        title = f"trial #{trial.number}: {outcome} after {len(history)} epoch(s)"
        self._guarded(trial, "learning curve", self._curve, trial, history, outcome, title)

    def _curve(self, trial, history, outcome, title) -> None:
        fig = learning_curve_figure(history, self.metric, outcome, title)
        with tempfile.TemporaryDirectory() as tmp:
            for p in write_figure(
                fig, Path(tmp) / f"trial-{trial.number}-learning-curve", self.png
            ):
                upload_to_trial(self.store, trial, p)

    def checkpoint(self, trial: optuna.Trial, path: Path) -> None:
        name = f"trial-{trial.number}-checkpoint.pt"
        self._guarded(trial, "checkpoint", upload_to_trial, self.store, trial, path, name)

    def _guarded(self, trial, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - evidence is optional, the trial's value is not
            log.warning(
                "trial #%d: %s not uploaded to %s: %s", trial.number, what, self.location, e
            )


def attach_final_run(
    export: dict[str, Any],
    files: list[Path],
    mode: str,
    storage: str | None = None,
    location: str | None = None,
) -> list[str]:
    """Attach `cnnopt train`'s files to the trial it retrained; returns the attached names. The
    export names the study, trial and storage (its password masked: then --storage or
    $CNNOPT_STORAGE gives it). Failing to attach is a warning: the files are on disk anyway."""
    from cnnopt.status import load_study

    study = export.get("study") or {}
    name, number = study.get("name"), (export.get("trial") or {}).get("number")
    url = storage or os.environ.get("CNNOPT_STORAGE") or study.get("storage")
    if not name or number is None or not url:
        log.warning("results not attached to a trial: the export names no study/trial/storage")
        return []
    if "***" in url:
        log.warning(
            "results not attached to %s trial #%s: the export's storage %s has its password "
            "masked; pass --storage URL (or set CNNOPT_STORAGE)",
            name,
            number,
            url,
        )
        return []
    try:
        ostudy, _ = load_study(name, url)
        loc = resolve_location(location, name) if location else study_location(ostudy)
        if loc is None:
            log.warning("results not attached: study %r has no artifact store", name)
            return []
        store = open_store(loc)
        trial = ostudy._storage.get_trial(
            ostudy._storage.get_trial_id_from_study_id_trial_number(ostudy._study_id, number)
        )
        prefix = "final-" if mode == "train" else f"{mode}-"
        names = []
        for f in files:
            attach_to_finished(store, ostudy, trial._trial_id, f, prefix + f.name)
            names.append(prefix + f.name)
        return names
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log.warning("results not attached to %s trial #%s: %s", name, number, mask_url(first))
        return []
