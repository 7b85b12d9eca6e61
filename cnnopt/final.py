"""`cnnopt train` (final training of an exported trial), `cnnopt predict`, and ``load_checkpoint``.

Final training (the default):
    the exported RunConfig, with ``--epochs``, ``--schedule`` and ``--set key=value`` on top, is
    trained on the *full* training set (the study's train + validation parts; the study's
    ``train_subset`` is dropped unless given again with ``--set train_subset=N``). With
    ``--holdout F`` a seeded fraction F is held out instead and early stopping (``patience``,
    default 3 when a holdout is given) watches its loss. Then the test set is evaluated: accuracy,
    loss, per-class precision/recall/F1, confusion matrix (``confusion_matrix.html``). Everything
    goes to ``--out`` (default ``runs/<study>-trial<N>``): ``checkpoint.pt``, ``results.json``.

Reproduction (``--reproduce``):
    the trial's own run, unchanged: its train/validation split (split_seed, val_fraction,
    train_subset), epochs, seed, schedule. Reports the validation value beside the stored one; a
    difference over 0.5 points is an error (exit code 1).

Checkpoints are torchvision-reference style dicts: ``{model, optimizer, scheduler, epoch, config,
classes, mean, std, args, results}`` where ``config`` is ``RunConfig.to_dict()``. Load one with
``load_checkpoint(path) -> (model, RunConfig, meta)``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from cnnopt.config import RunConfig
from cnnopt.errors import CnnoptError, DataError
from cnnopt.export import load_export, versions

log = logging.getLogger("cnnopt")

REPRODUCE_TOLERANCE = 0.005  # 0.5 accuracy points


class ReproduceMismatch(CnnoptError):
    exit_code = 1


# -- checkpoints ---------------------------------------------------------------------------------


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, RunConfig, dict[str, Any]]:
    """Load a `cnnopt train` checkpoint: the model (in eval mode, on ``device``), its RunConfig,
    and ``meta`` = everything else of the checkpoint dict (classes, mean, std, epoch, args,
    results, optimizer/scheduler states).

        model, cfg, meta = load_checkpoint("runs/best/checkpoint.pt")
        probs = model(x_normalised).softmax(1)  # x normalised with meta["mean"], meta["std"]
    """
    from cnnopt.models import build_model

    p = Path(path)
    if not p.is_file():
        raise CnnoptError(f"checkpoint not found: {p}")
    ckpt = torch.load(p, map_location=device, weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CnnoptError(f"{p}: not a cnnopt checkpoint (expected a dict with model and config)")
    cfg = RunConfig.from_dict(ckpt["config"])
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "config")}
    return model, cfg, meta


# -- training ------------------------------------------------------------------------------------


def final_config(
    export: dict,
    *,
    epochs: int | None = None,
    schedule: str | None = None,
    data_dir: str | None = None,
    sets: dict[str, Any] | None = None,
    reproduce: bool = False,
) -> RunConfig:
    """The RunConfig to train: the exported one, plus the command line's changes."""
    cfg = RunConfig.from_dict(export["config"])
    changes: dict[str, Any] = {}
    if data_dir:
        changes["data_dir"] = str(Path(data_dir).resolve())
    if not reproduce:
        changes["train_subset"] = None  # final training: the full training set
        if epochs is not None:
            changes["epochs"] = epochs
        if schedule is not None:
            changes["schedule"] = schedule
        changes.update(sets or {})
    elif epochs is not None or schedule is not None or sets:
        raise CnnoptError("--reproduce retrains the trial exactly: no --epochs/--schedule/--set")
    try:
        return cfg.replace(**changes)
    except CnnoptError as e:
        raise CnnoptError(f"--set: {e}") from None


def _progress(enabled: bool, total: int, title: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
    )
    task = progress.add_task(title, total=total, info="")
    return progress, task


def _confusion_html(report: dict, classes: list[str], path: Path, title: str):
    import plotly.graph_objects as go

    cm = report["confusion_matrix"]
    fig = go.Figure(
        go.Heatmap(
            z=cm,
            x=classes,
            y=classes,
            colorscale="Blues",
            text=cm,
            texttemplate="%{text}",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
        width=700,
        height=650,
    )
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return fig


def evaluate_test(model, cfg: RunConfig, ds, split, device: torch.device) -> dict[str, Any]:
    """Test-set loss/accuracy (with the config's TTA), per-class report and predictions."""
    from cnnopt.data.tensors import is_lazy, make_loader
    from cnnopt.metrics import per_class_report
    from cnnopt.train import _loss_fn, amp_dtype, evaluate, predict, use_channels_last

    t = cfg.train
    loader = make_loader(  # streamed test images stay on disk
        ds.x_test if is_lazy(ds.x_test) else ds.x_test.to(device),
        ds.y_test.to(device),
        split.mean,
        split.std,
        max(t.batch_size, 512),
        cfg.data.stream_workers,
        channels_last=use_channels_last(cfg),
        image_size=cfg.data.image_size,
    )
    amp = amp_dtype(t, device)
    loss = _loss_fn(ds.multilabel, 0.0)
    metrics = evaluate(model, loader, loss, amp, ds.multilabel, t.tta_flip, t.threshold, "test_")
    out: dict[str, Any] = {"metrics": metrics, "n_images": loader.n_images}
    if not ds.multilabel:
        pred = predict(model, loader, amp, t.tta_flip).argmax(1)
        out["per_class"] = per_class_report(pred.cpu(), ds.y_test.cpu(), ds.classes)
    return out


def train_final(
    export_path: str | Path,
    *,
    epochs: int | None = None,
    schedule: str | None = None,
    out: str | Path | None = None,
    data_dir: str | None = None,
    sets: dict[str, Any] | None = None,
    holdout: float = 0.0,
    patience: int | None = None,
    device: str = "auto",
    reproduce: bool = False,
    progress: bool = True,
    console: Any = None,
    storage: str | None = None,
    artifacts: str | None = None,
    attach: bool = True,
) -> dict[str, Any]:
    """Final training (or ``reproduce``) of an exported trial; returns the results dict."""
    from rich.console import Console

    from cnnopt.data import load_split
    from cnnopt.data.registry import load_dataset
    from cnnopt.data.tensors import split as make_split
    from cnnopt.train import fit, hardware, use_device

    console = console or Console(stderr=True)
    export = load_export(export_path)
    cfg = final_config(
        export,
        epochs=epochs,
        schedule=schedule,
        data_dir=data_dir,
        sets=sets,
        reproduce=reproduce,
    )
    if not 0.0 <= holdout < 1.0:
        raise CnnoptError(f"--holdout {holdout}: must be in [0, 1)")
    if reproduce and (holdout or patience is not None):
        raise CnnoptError("--reproduce retrains the trial exactly: no --holdout/--patience")
    if holdout and patience is None and cfg.train.patience is None:
        patience = 3
    if patience is not None:
        cfg = cfg.replace(patience=patience)
    if not holdout and not reproduce and cfg.train.patience is not None:
        log.info("patience=%s ignored: no --holdout split to watch", cfg.train.patience)
    dev = use_device(device)  # current from here on: nothing lands on another GPU
    trial = export.get("trial", {})
    study_name = export.get("study", {}).get("name", "study")
    out_dir = Path(
        out
        or f"runs/{study_name}-trial{trial.get('number', 'x')}{'-reproduce' if reproduce else ''}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    ds = load_dataset(cfg.data)
    if reproduce:
        ds, split = load_split(cfg.data, dev)
    else:
        split = make_split(ds, holdout, cfg.data.split_seed, cfg.data.train_subset).to(dev)
    # sizes from the data, as the objective does (an old export may lack them)
    cfg = cfg.replace(
        in_channels=ds.in_channels,
        input_size=cfg.data.image_size or ds.image_size,
        num_classes=ds.num_classes,
    )
    what = "reproduce" if reproduce else "train"
    console.print(
        f"[bold]{what}[/] {study_name} trial #{trial.get('number')} on {dev}: "
        f"{split.x_train.shape[0]} training images, {split.x_val.shape[0]} "
        f"{'validation' if reproduce else 'held out'}, {cfg.train.epochs} epochs, "
        f"schedule {cfg.train.schedule}"
    )
    bar, task = _progress(progress, cfg.train.epochs, what)
    last_ckpt: dict[str, Any] = {}
    sizes: dict[str, Any] = {}

    def on_start(result) -> None:
        sizes.update(params=result.params, flops=result.flops, amp=result.amp)

    def on_epoch(stats) -> None:
        info = f"loss {stats.train_loss:.4f}  {stats.seconds:.1f}s/epoch"
        for k in ("val_loss", "val_accuracy"):
            if k in stats.metrics:
                info += f"  {k.replace('val_', 'val ' if reproduce else 'holdout ')} {stats.metrics[k]:.4f}"
        bar.update(task, advance=1, info=info)
        if progress and not bar.console.is_terminal:
            # off a terminal (nohup, a CI log, a pipe) rich draws no bar: a line per epoch
            # instead, so a half-hour training shows where it is
            bar.console.print(f"epoch {stats.epoch}/{cfg.train.epochs}  {info}", highlight=False)

    t0 = time.perf_counter()
    with bar:
        result = fit(
            cfg,
            split,
            multilabel=ds.multilabel,
            device=dev,
            on_start=on_start,
            on_epoch=on_epoch,
            on_checkpoint=last_ckpt.update,
        )
    wall = time.perf_counter() - t0
    model = result.model
    secs = [h.seconds for h in result.history]
    results: dict[str, Any] = {
        "mode": what,
        "export": str(export_path),
        "study": study_name,
        "trial": trial.get("number"),
        # where the configuration came from (an export older than the field: unknown)
        "source": trial.get("source"),
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "params": sizes.get("params"),
        "flops": sizes.get("flops"),
        "amp": sizes.get("amp"),
        "seconds_per_epoch": sum(secs) / len(secs) if secs else None,
        "seconds_total": wall,
        "device": str(dev),
        "hardware": hardware(dev),
        "train_images": int(split.x_train.shape[0]),
        "heldout_images": int(split.x_val.shape[0]),
        "history": [h.to_dict() for h in result.history],
        "config": cfg.to_dict(),
        "versions": versions(),
    }
    confusion_fig = None
    if reproduce:
        metric = trial.get("metric") or export.get("study", {}).get("metric", "val_accuracy")
        stored = trial.get("value")
        k = len(trial.get("history") or []) or len(result.history)
        k = min(k, len(result.history))
        got = result.history[k - 1].metrics.get(metric)
        results["reproduce"] = {
            "metric": metric,
            "epoch": k,
            "stored": stored,
            "reproduced": got,
            "difference": None if stored is None or got is None else got - stored,
            "tolerance": REPRODUCE_TOLERANCE,
            "stored_hardware": trial.get("hardware"),
            "hardware": results["hardware"],
        }
    elif ds.x_test is not None and ds.y_test is not None and len(ds.y_test):
        test = evaluate_test(model, cfg, ds, split, dev)
        results["test"] = test["metrics"]
        if "per_class" in test:
            results["per_class"] = test["per_class"]["classes"]
            results["confusion_matrix"] = test["per_class"]["confusion_matrix"]
            confusion_fig = _confusion_html(
                test["per_class"],
                ds.classes,
                out_dir / "confusion_matrix.html",
                f"{study_name} trial #{trial.get('number')}: test accuracy "
                f"{100 * test['metrics']['test_accuracy']:.2f}%",
            )
    else:
        log.warning("%s has no test set: nothing evaluated", cfg.data.dataset)
    args = {
        "export": str(export_path),
        "epochs": epochs,
        "schedule": schedule,
        "data_dir": data_dir,
        "sets": {k: v for k, v in (sets or {}).items()},
        "holdout": holdout,
        "patience": patience,
        "device": device,
        "reproduce": reproduce,
    }
    ckpt = {
        "model": model.state_dict(),
        "optimizer": last_ckpt.get("optimizer"),
        "scheduler": last_ckpt.get("scheduler"),
        "scaler": last_ckpt.get("scaler"),  # fp16 GradScaler state (None without fp16)
        "epoch": len(result.history),
        "config": cfg.to_dict(),
        "classes": list(ds.classes),
        "multilabel": bool(ds.multilabel),
        "mean": [float(v) for v in split.mean.cpu()],
        "std": [float(v) for v in split.std.cpu()],
        "args": json.loads(json.dumps(args, default=str)),
        "results": {
            k: results[k]
            for k in ("test", "params", "flops", "seconds_per_epoch", "epochs_run")
            if k in results
        },
    }
    torch.save(ckpt, out_dir / "checkpoint.pt")
    results["checkpoint"] = str(out_dir / "checkpoint.pt")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["results_file"] = str(out_dir / "results.json")
    files = [out_dir / "checkpoint.pt", out_dir / "results.json"]
    if confusion_fig is not None:
        from cnnopt.artifacts import write_png

        files.append(out_dir / "confusion_matrix.html")
        if write_png(confusion_fig, out_dir / "confusion_matrix.png", width=700, height=650):
            files.append(out_dir / "confusion_matrix.png")
    if attach:
        from cnnopt.artifacts import attach_final_run

        attached = attach_final_run(export, files, what, storage, artifacts)
        if attached:
            results["artifacts"] = attached
            console.print(
                f"attached {', '.join(attached)} to {study_name} trial #{trial.get('number')}"
            )
    return results


def check_reproduced(results: dict) -> None:
    r = results["reproduce"]
    if r["difference"] is None:
        raise ReproduceMismatch(f"no stored {r['metric']} to compare with")
    if abs(r["difference"]) > r["tolerance"]:
        raise ReproduceMismatch(
            f"reproduced {r['metric']} {r['reproduced']:.4f} differs from the stored "
            f"{r['stored']:.4f} by {100 * abs(r['difference']):.2f} points (> 0.5)"
            + _hardware_change(r.get("stored_hardware"), r.get("hardware"))
        )


def _hardware_change(stored: dict | None, now: dict | None) -> str:
    """Where the trial ran and where the rebuild did, when they differ: other kernels and thread
    counts sum in another order, and a long training can drift apart from there."""
    if not stored or not now:
        return ""

    def where(h: dict) -> str:
        return f"{h.get('gpu') or h.get('cpu')}, {h.get('torch_threads')} thread(s)"

    if where(stored) == where(now):
        return ""
    return f"; the trial ran on {where(stored)}, this run on {where(now)}"


def print_results(results: dict, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=f"{results['mode']}: {results['study']} trial #{results['trial']}",
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column()
    if results.get("source"):
        table.add_row("configuration", f"trial #{results['trial']}, {results['source']}")
    if "reproduce" in results:
        r = results["reproduce"]
        table.add_row(
            f"stored {r['metric']}", f"{r['stored']:.4f}" if r["stored"] is not None else "-"
        )
        table.add_row(
            f"reproduced {r['metric']}",
            f"{r['reproduced']:.4f} (difference {100 * (r['difference'] or 0):+.2f} points, epoch {r['epoch']})",
        )
    if "test" in results:
        t = results["test"]
        table.add_row("test accuracy", f"{100 * t['test_accuracy']:.2f}%")
        table.add_row("test loss", f"{t['test_loss']:.4f}")
    table.add_row("params", f"{results['params']:,}")
    table.add_row("FLOPs / image", f"{results['flops']:,}")
    table.add_row(
        "epochs",
        f"{results['epochs_run']}" + (" (stopped early)" if results["stopped_early"] else ""),
    )
    if results["seconds_per_epoch"]:
        table.add_row("seconds / epoch", f"{results['seconds_per_epoch']:.1f}")
    table.add_row(
        "time",
        f"{results['seconds_total']:.0f}s on {results['hardware']['cpu']} ({results['device']})",
    )
    table.add_row("checkpoint", results["checkpoint"])
    table.add_row("results", results["results_file"])
    console.print(table)
    if "per_class" in results:
        pc = Table(title="test set per class", title_justify="left")
        for col in ("class", "precision", "recall", "F1", "support"):
            pc.add_column(col, justify="right" if col != "class" else "left")
        for c, m in results["per_class"].items():
            pc.add_row(
                c,
                f"{m['precision']:.3f}",
                f"{m['recall']:.3f}",
                f"{m['f1']:.3f}",
                str(m["support"]),
            )
        console.print(pc)


# -- predicting ----------------------------------------------------------------------------------


def load_image(path: str | Path, channels: int, size: int, invert: bool = False) -> torch.Tensor:
    """An image file as uint8 [C, size, size] for a model of ``channels`` input channels."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    p = Path(path)
    if not p.is_file():
        raise DataError(f"image not found: {p}")
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        img = decode_image(read_file(str(p)), mode=mode)
    except RuntimeError as e:
        raise DataError(f"{p}: cannot decode image: {str(e).splitlines()[0]}") from None
    if img.shape[-2:] != (size, size):
        img = (
            torch.nn.functional.interpolate(
                img[None].float(), size=(size, size), mode="bilinear", antialias=True
            )[0]
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
    if invert:
        img = 255 - img
    return img


@torch.no_grad()
def predict_images(
    checkpoint: str | Path, images: list[str | Path], top: int = 3, invert: bool = False
) -> list[dict[str, Any]]:
    """Top-``top`` classes with probabilities for each image file."""
    model, cfg, meta = load_checkpoint(checkpoint)
    size = cfg.data.image_size or cfg.model.input_size
    x = torch.stack([load_image(p, cfg.model.in_channels, size, invert) for p in images])
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    x = (x.float() / 255 - mean) / std
    logits = model(x).float()
    if cfg.train.tta_flip:
        logits = (logits + model(x.flip(-1)).float()) / 2
    # multi-label models score each label independently (sigmoid), single-label ones share softmax
    probs = logits.sigmoid() if meta.get("multilabel") else logits.softmax(1)
    k = min(top, probs.shape[1])
    values, idx = probs.topk(k, dim=1)
    classes = meta["classes"]
    return [
        {
            "image": str(p),
            "top": [{"class": classes[int(i)], "probability": float(v)} for v, i in zip(vs, ix)],
        }
        for p, vs, ix in zip(images, values, idx)
    ]
