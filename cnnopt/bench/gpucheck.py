"""`make gpu-check`: on a CUDA machine, run what only a GPU can show, and write ONE JSON summary.

    python -m cnnopt.bench.gpucheck [--data-dir DIR] [--out runs/gpu-check.json]

Steps, each a real `cnnopt` command in a child process (so a crash in one is a failed step with
its last lines of output, and this process never holds a CUDA context of its own):

1. ``bench``: the bench's GPU rows (``cnnopt bench --quick --section gpu --device cuda``).
2. ``study``: a short 2-worker study of ``studies/fashion_cnn_bn.py`` on the GPU, on a fresh
   journal file (``cnnopt run ... --workers 2 --device cuda --n-trials 4 --set epochs=2``).
3. ``export``: ``cnnopt export`` of the study's best trial.
4. ``reproduce``: ``cnnopt train EXPORT --reproduce --device cuda``: retrain it and compare.

With ``--final`` (``make gpu-final``) it runs instead the README's end-to-end path at full size,
which takes hours on a CPU and minutes on a GPU: the shipped study on the full split
(``--n-trials 12``, the study file's own 10 epochs per trial), ``cnnopt export`` of the trial the
study ranks best, and ``cnnopt train EXPORT --epochs 50`` once per training seed; the summary holds
each seed's test accuracy and their mean with Student's t 95% interval.

The summary holds the device (name, compute capability, memory, driver, CUDA, torch) and each
step's status, seconds and figures; ``ok`` is true when every step passed. Without CUDA it stops
at once with one line and exit code 2, before running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STUDY_FILE = REPO / "studies" / "fashion_cnn_bn.py"
STUDY_NAME = "gpu_check"
FINAL_NAME = "gpu_final"


@dataclass
class Settings:
    data_dir: str
    out: Path  # the JSON summary
    workdir: Path  # what the steps write: bench JSON, journal, export, training run
    n_trials: int = 4
    epochs: int = 2
    train_subset: int = 10_000
    workers: int = 2
    # --final: the README's end-to-end path (study, export of its best, final training per seed)
    final_trials: int = 12
    final_epochs: int = 50
    final_seeds: tuple[int, ...] = (0, 1, 2)
    # the study's seed (sampler and split); the CPU figures in the README are study seed 0, so
    # another seed here also measures how much the end result owes to the study's draw
    final_study_seed: int = 0


@dataclass
class Done:
    """What one command did: exit code, seconds and the end of its output."""

    returncode: int
    seconds: float
    output_tail: str


# -- the boundaries: CUDA and the commands that use it -------------------------------------------


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def no_cuda_message() -> str:
    import torch

    return (
        f"cnnopt gpu-check: no CUDA device on this machine (torch {torch.__version__}, built for "
        f"CUDA {torch.version.cuda or 'none'}): run it on a machine with an NVIDIA GPU"
    )


def device_info() -> dict[str, Any]:
    """The GPU, driver, CUDA and torch, read in a child process (no context in this one)."""
    code = (
        "import json, torch; i = torch.cuda.current_device(); p = torch.cuda.get_device_properties(i);"
        "print(json.dumps({'name': p.name, 'compute_capability': f'{p.major}.{p.minor}',"
        "'memory_gib': round(p.total_memory / 2**30, 1), 'count': torch.cuda.device_count(),"
        "'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),"
        "'torch': torch.__version__}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    try:
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        info = {"name": None, "error": f"device query failed: {tail}"}
    info["driver"] = driver_version()
    return info


def driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def run_cnnopt(args: list[str], log: Path) -> Done:
    """``cnnopt ARGS`` in a child process from the repository root; output to ``log``."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "cnnopt.cli", *args], cwd=REPO, stdout=f,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    return Done(proc.returncode, time.perf_counter() - t0, tail)


# -- the steps -----------------------------------------------------------------------------------


def _step(done: Done, **figures: Any) -> dict[str, Any]:
    step = {"ok": done.returncode == 0, "returncode": done.returncode, "seconds": done.seconds}
    step.update(figures)
    if not step["ok"]:
        step["output_tail"] = done.output_tail
    return step


def step_bench(s: Settings) -> dict[str, Any]:
    path = s.workdir / "bench-gpu.json"
    done = run_cnnopt(
        ["bench", "--quick", "--section", "gpu", "--device", "cuda", "--data-dir", s.data_dir,
         "--json", str(path)],
        s.workdir / "bench-gpu.log",
    )  # fmt: skip
    if not path.exists():
        return _step(done, rows=[])
    report = json.loads(path.read_text())
    rows = [
        {k: r[k] for k in ("name", "value", "unit", "baseline", "baseline_value", "ratio", "note")}
        for r in report["rows"]
        if r["section"] == "gpu"
    ]
    step = _step(done, rows=rows, json=str(path))
    failed = [r["note"] for r in rows if r["note"].startswith(("failed", "skipped"))]
    if failed:  # the bench goes on past a failed row; the check does not pass with one
        step["ok"] = False
        step["output_tail"] = failed[0]
    return step


def study_storage(s: Settings, name: str = STUDY_NAME) -> str:
    return str(s.workdir / f"{name}.journal")


def _run_study(s: Settings, name: str, n_trials: int, sets: list[str]) -> dict[str, Any]:
    """The shipped study on the GPU in a fresh journal file, and its figures from the storage."""
    url = study_storage(s, name)
    Path(url).unlink(missing_ok=True)  # a fresh study every check
    done = run_cnnopt(
        ["run", str(STUDY_FILE), "--workers", str(s.workers), "--device", "cuda",
         "--n-trials", str(n_trials), *sets, "--data-dir", s.data_dir,
         "--storage", url, "--study-name", name, "--no-progress"],
        s.workdir / f"{name}.log",
    )  # fmt: skip
    figures = study_figures(url, name) if Path(url).exists() else {}
    step = _step(done, **figures)
    if step["ok"] and not figures.get("complete"):
        step["ok"] = False
        step["output_tail"] = "no trial completed"
    return step


def step_study(s: Settings) -> dict[str, Any]:
    sets = ["--set", f"epochs={s.epochs}", "--set", f"train_subset={s.train_subset}"]
    return _run_study(s, STUDY_NAME, s.n_trials, sets)


def study_figures(url: str, name: str = STUDY_NAME) -> dict[str, Any]:
    """Trial states, the best value, and where and how fast the trials trained, from the storage."""
    import optuna

    from cnnopt.storage import get_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=get_storage(url))
    trials = study.get_trials(deepcopy=False)
    states = dict(Counter(t.state.name for t in trials))
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    ips = [t.user_attrs["images_per_second"] for t in trials if "images_per_second" in t.user_attrs]
    return {
        "trials": len(trials),
        "states": states,
        "complete": len(done),
        "best_value": study.best_value if done else None,
        "best_trial": study.best_trial.number if done else None,
        "devices": sorted({str(t.user_attrs.get("device")) for t in trials}),
        "workers": sorted({str(t.user_attrs.get("worker")) for t in trials}),
        "amp": sorted({str(t.user_attrs.get("amp")) for t in trials if "amp" in t.user_attrs}),
        "images_per_second_per_trial": ips,
        "fail_reasons": [
            t.user_attrs["fail_reason"] for t in trials if "fail_reason" in t.user_attrs
        ],
    }


def _export(s: Settings, name: str, path: Path) -> dict[str, Any]:
    done = run_cnnopt(
        ["export", name, "--storage", study_storage(s, name), "--out", str(path)],
        path.with_suffix(".export.log"),
    )  # fmt: skip
    return _step(done, export=str(path))


def step_export(s: Settings) -> dict[str, Any]:
    return _export(s, STUDY_NAME, s.workdir / "best.json")


def step_reproduce(s: Settings) -> dict[str, Any]:
    out = s.workdir / "train"
    done = run_cnnopt(
        ["train", str(s.workdir / "best.json"), "--reproduce", "--device", "cuda",
         "--data-dir", s.data_dir, "--out", str(out), "--no-progress"],
        s.workdir / "reproduce.log",
    )  # fmt: skip
    results = out / "results.json"
    if not results.exists():
        return _step(done)
    r = json.loads(results.read_text())
    return _step(
        done, reproduce=r.get("reproduce"), device=r.get("device"), amp=r.get("amp"),
        seconds_per_epoch=r.get("seconds_per_epoch"), results=str(results),
    )  # fmt: skip


def step_final_study(s: Settings) -> dict[str, Any]:
    # no --set: the study file's own settings (full split, 10 epochs, its recipe), as a user runs it
    step = _run_study(s, FINAL_NAME, s.final_trials, ["--seed", str(s.final_study_seed)])
    return {**step, "study_seed": s.final_study_seed}


def step_final_export(s: Settings) -> dict[str, Any]:
    return _export(s, FINAL_NAME, s.workdir / "final-best.json")


def step_final_train(s: Settings) -> dict[str, Any]:
    """``cnnopt train EXPORT --epochs N`` once per training seed; the test accuracy of each and
    their mean with Student's t interval (a final model's accuracy varies with its seed by about
    as much as the differences a reader would care about)."""
    from cnnopt.bench.common import t_mean

    runs, failed = [], None
    for seed in s.final_seeds:
        out = s.workdir / f"final-train-seed{seed}"
        done = run_cnnopt(
            ["train", str(s.workdir / "final-best.json"), "--epochs", str(s.final_epochs),
             "--set", f"seed={seed}", "--device", "cuda", "--data-dir", s.data_dir,
             "--out", str(out), "--no-progress"],
            s.workdir / f"final-train-seed{seed}.log",
        )  # fmt: skip
        results = out / "results.json"
        if done.returncode or not results.exists():
            failed = done if done.returncode else Done(1, done.seconds, "no results.json")
            break
        r = json.loads(results.read_text())
        runs.append({"seed": seed, "test_accuracy": r["test"]["test_accuracy"],
                     "seconds": done.seconds, "seconds_per_epoch": r.get("seconds_per_epoch"),
                     "params": r.get("params"), "device": r.get("device"), "amp": r.get("amp")})  # fmt: skip
    accs = [r["test_accuracy"] for r in runs]
    figures: dict[str, Any] = {"epochs": s.final_epochs, "runs": runs}
    if len(accs) >= 2:
        ci = t_mean(accs)
        figures["test_accuracy"] = {"mean": ci.mean, "t_low": ci.low, "t_high": ci.high, "n": ci.n}
    done = failed or Done(0, sum(r["seconds"] for r in runs), "")
    return _step(done, **figures)


STEPS = {
    "bench": step_bench,
    "study": step_study,
    "export": step_export,
    "reproduce": step_reproduce,
}
FINAL_STEPS = {
    "final_study": step_final_study,
    "final_export": step_final_export,
    "final_train": step_final_train,
}
# a step runs only when this one passed
NEEDS = {"export": "study", "reproduce": "export",
         "final_export": "final_study", "final_train": "final_export"}  # fmt: skip


# -- the check -----------------------------------------------------------------------------------


def gpu_check(s: Settings, log=print, steps: dict = STEPS) -> dict[str, Any]:
    """Run every step (``STEPS``, or ``FINAL_STEPS`` for --final), then write and return the
    summary (the caller has checked for CUDA)."""
    s.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_info(),
        "data_dir": s.data_dir,
        "settings": {k: v for k, v in vars(s).items() if k not in ("data_dir", "out", "workdir")},
        "steps": {},
    }  # fmt: skip
    for name, step in steps.items():
        need = NEEDS.get(name)
        if need and not summary["steps"][need]["ok"]:
            summary["steps"][name] = {"ok": False, "skipped": f"{need} failed"}
            continue
        log(f"cnnopt gpu-check: {name} ...")
        summary["steps"][name] = step(s)
        log(f"cnnopt gpu-check: {name} {'ok' if summary['steps'][name]['ok'] else 'FAILED'}")
    summary["seconds"] = time.perf_counter() - t0
    summary["ok"] = all(st["ok"] for st in summary["steps"].values())
    s.out.parent.mkdir(parents=True, exist_ok=True)
    s.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cnnopt.bench.gpucheck", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--data-dir", default=os.environ.get("CNNOPT_DATA_DIR", "../shared/data/fashion-mnist")
    )
    p.add_argument(
        "--out", default=None,
        help="the JSON summary [runs/gpu-check.json; with --final runs/gpu-final.json]",
    )  # fmt: skip
    p.add_argument("--workdir", default=None, help="step outputs [default: beside --out]")
    p.add_argument("--n-trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=10_000)
    p.add_argument(
        "--final", action="store_true",
        help="run the README's end-to-end path instead: full-split study, export, final training",
    )  # fmt: skip
    p.add_argument("--final-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--final-epochs", type=int, default=50, help="epochs of each final training")
    p.add_argument(
        "--study-seed", type=int, default=0,
        help="with --final: the study's seed (its sampler and its train/val split) [0]",
    )  # fmt: skip
    a = p.parse_args(argv)
    if not cuda_available():
        print(no_cuda_message(), file=sys.stderr)
        return 2
    data_dir = Path(a.data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        print(
            f"cnnopt gpu-check: data dir {a.data_dir} not found (give DATA_DIR=...)",
            file=sys.stderr,
        )
        return 2
    out = Path(a.out or ("runs/gpu-final.json" if a.final else "runs/gpu-check.json")).resolve()
    s = Settings(
        data_dir=str(data_dir), out=out,
        workdir=Path(a.workdir).resolve() if a.workdir else out.with_suffix(""),
        n_trials=a.n_trials, epochs=a.epochs, train_subset=a.train_subset,
        final_seeds=tuple(a.final_seeds), final_epochs=a.final_epochs,
        final_study_seed=a.study_seed,
    )  # fmt: skip
    steps = FINAL_STEPS if a.final else STEPS
    summary = gpu_check(s, log=lambda m: print(m, file=sys.stderr), steps=steps)
    failed = [n for n, st in summary["steps"].items() if not st["ok"]]
    print(
        f"cnnopt gpu-check: {'ok' if not failed else 'FAILED: ' + ', '.join(failed)} on "
        f"{summary['device'].get('name')} in {summary['seconds']:.0f} s; wrote {out}",
        file=sys.stderr,
    )
    acc = summary["steps"].get("final_train", {}).get("test_accuracy")
    if acc:
        print(
            f"cnnopt gpu-check: final test accuracy {100 * acc['mean']:.2f}% "
            f"[{100 * acc['t_low']:.2f}, {100 * acc['t_high']:.2f}] (t 95%, {acc['n']} seeds)",
            file=sys.stderr,
        )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
