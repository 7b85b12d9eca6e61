"""Live Pareto studies: the replay's pruned-against-unpruned comparison, with real training.

``benchmarks/search/pareto_replay.py`` replays accuracy-versus-FLOPs studies on the committed pool
of learning curves. This runs the real command instead, ``cnnopt run studies/fashion_pareto.py``
with one worker on a FashionMNIST subset, in two variants per seed:

- ``pruned``: the study file as shipped: multi-objective TPE, cnnopt's rung pruner
  (``successive_halving``, MO-ASHA's ``nds`` order, first rung at epoch 1, factor 2);
- ``unpruned``: ``--set pruner=none``, every trial trained to the end: what Optuna alone offers
  for a multi-objective study.

A seed is the study's seed: the sampler's and the training seed; the data split is the search
benchmark's (``split_seed`` 0, validation 20%), so the two variants of a seed see the same data
and draw the same startup configurations. Both get the same budget of trained epochs, counted over
the trials in order (one worker: the order is the completion order); the trial the budget cuts
counts as never completed; a deduplicated copy costs nothing. The running and stopping are
``benchmarks.search.live``'s (``run_cnnopt``: the real command, stopped with SIGTERM once its
journal shows the budget trained), as are the budget rule (``to_replay``) and the hardware record.

Score: the hypervolume of the (validation accuracy, FLOPs) front of the trials completed within
the budget, with the replay's objectives, reference point and function (``pareto_replay``:
accuracy against log10 FLOPs, reference (0.5, 10^8.3 FLOPs), Optuna's exact hypervolume), so live
and replayed figures are in the same units. The difference pruned minus unpruned is paired per
seed, over clean pairs only: both studies record the same hardware (CPU model, torch threads) and
their first trials (the same random draw, never pruned: alone at every rung) have the same curve
to the last digit. With a handful of seeds the claim rests on Student's t interval
(``stats.t_mean``); the bootstrap interval is shown beside it.

The table is written after every study, so an interrupted run resumes with the next study (and
``cnnopt run`` resumes the interrupted one from its journal).

    python -m benchmarks.search.pareto_live --out benchmarks/search/tables/pareto_live.json \\
        --data-dir ../shared/data/fashion-mnist --seeds 211 212 213
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks.search import live
from benchmarks.search.pareto_replay import REFERENCE, _point
from benchmarks.search.stats import bootstrap_mean, t_mean
from benchmarks.search.tabulate import command_line, load_table, save_table
from cnnopt.pareto import hypervolume

TABLE = Path(__file__).with_name("tables") / "pareto_live.json"
STUDY_FILE = "studies/fashion_pareto.py"
# each variant's `cnnopt run` settings on top of the study file's own
VARIANTS: dict[str, list[str]] = {"pruned": [], "unpruned": ["pruner=none"]}
LABELS = {
    "pruned": "TPE + rung pruner (as shipped)",
    "unpruned": "TPE, no pruning (pruner=none)",
}
# The study file's own epochs and rungs (10; 1, 2, 4, 8) on 3,000 images (2,400 train / 600
# validation), 50 trained epochs (5 full trainings, the replay's 50-epoch checkpoint) per study:
# 5 to 16 minutes a study on the shared 2-core CPU beside other sessions' work (load 4 to 10),
# so three seeds fitted the time given (docs/budgets-pareto.md).
EPOCHS = 10
BUDGET = 50
TRAIN_SUBSET = 3000
SEEDS = [211, 212, 213]


def completed(record: dict[str, Any], budget: int, epochs: int) -> list[tuple[float, int]]:
    """(final validation accuracy, FLOPs) of the trials completed within ``budget`` epochs, in
    order: live.to_replay's rule (the trial the budget cuts never completes; a copy costs none)."""
    r = live.to_replay(record, budget, epochs)
    return [
        (float(t["values"][-1]), int(t["flops"]))
        for t, (_key, state, _take) in zip(record["trials"], r.log, strict=False)
        if state == "COMPLETE"
    ]


def hv(points: Iterable[tuple[float, int]]) -> float:
    """The replay's hypervolume: accuracy against log10 FLOPs, reference (0.5, 10^8.3)."""
    return hypervolume([_point(acc, flops) for acc, flops in points], REFERENCE)


def score(record: dict[str, Any], budget: int, epochs: int) -> dict[str, Any]:
    """One study's figures at the budget (and at half of it)."""
    r = live.to_replay(record, budget, epochs)
    points = completed(record, budget, epochs)
    return {
        "hv": hv(points),
        "hv_half": hv(completed(record, budget // 2, epochs)),
        "trials": r.trials,
        "pruned": r.pruned,
        "complete": len(points),
        "copies": r.duplicates,
        "epochs": r.epochs,
        "points": points,
    }


def pair_fault(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Why two studies of one seed are not a clean pair, or "": each records one hardware, the
    same, and their first trials (the same startup draw) have the same curve to the last digit."""
    faults = []
    if live.first_curve(a) != live.first_curve(b):
        faults.append("first trials differ")
    (fa, ha), (fb, hb) = live.study_hardware(a), live.study_hardware(b)
    faults += [f"{f} ({rec['variant']})" for f, rec in ((fa, a), (fb, b)) if f]
    if not (fa or fb) and ha != hb:
        faults.append(f"hardware differs ({ha} vs {hb})")
    return "; ".join(faults)


def summarize(table: dict[str, Any]) -> dict[str, Any]:
    """Per seed, both variants' scores and the paired difference pruned minus unpruned; over the
    clean pairs, the mean difference with its t and bootstrap 95% intervals and a verdict."""
    meta = table["meta"]
    budget, epochs = int(meta["budget"]), int(meta["epochs"])
    studies = table.get("studies", {})
    seeds = sorted({int(r["seed"]) for r in studies.values()})
    per_seed: dict[str, Any] = {}
    diffs: list[float] = []
    for s in seeds:
        a, b = studies.get(f"pruned/{s}"), studies.get(f"unpruned/{s}")
        row: dict[str, Any] = {v: score(r, budget, epochs) for v, r in (("pruned", a), ("unpruned", b)) if r}  # fmt: skip
        if a and b:
            row["diff"] = row["pruned"]["hv"] - row["unpruned"]["hv"]
            row["fault"] = pair_fault(a, b)
            if not row["fault"]:
                diffs.append(row["diff"])
        per_seed[str(s)] = row
    out: dict[str, Any] = {"per_seed": per_seed, "clean_pairs": len(diffs)}
    for v in VARIANTS:
        rows = [r[v] for r in per_seed.values() if v in r]
        if rows:
            out[v] = {k: sum(r[k] for r in rows) / len(rows)
                      for k in ("hv", "hv_half", "trials", "pruned", "complete", "epochs")}  # fmt: skip
    if len(diffs) >= 2:
        t, boot = t_mean(diffs), bootstrap_mean(diffs)
        out["diff"] = {"mean": t.mean, "t_low": t.low, "t_high": t.high, "boot_low": boot.low,
                       "boot_high": boot.high, "n": t.n, "ahead": sum(d > 0 for d in diffs),
                       "behind": sum(d < 0 for d in diffs)}  # fmt: skip
        out["verdict"] = (
            "no measurable difference (the t interval includes zero)"
            if t.low <= 0 <= t.high
            else f"pruned {'ahead' if t.mean > 0 else 'behind'} (the t interval excludes zero)"
        )
    else:
        out["diff"] = None
        out["verdict"] = f"{len(diffs)} clean pair(s): no interval"
    return out


def markdown(table: dict[str, Any]) -> str:
    meta, s = table["meta"], table["summary"]
    lines = [
        f"Live: `{meta['study_file']}`, {meta['epochs']}-epoch trials, {meta['budget']} trained "
        f"epochs per study, train_subset {meta['train_subset']}; hypervolume of the complete "
        "front (accuracy x decades of FLOPs, reference 0.5 / 10^8.3).",
        "",
        "| seed | HV pruned | HV unpruned | pruned minus unpruned | trials (pruned) | "
        "complete (pruned / unpruned) | pair |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, row in s["per_seed"].items():
        a, b = row.get("pruned"), row.get("unpruned")
        cell = lambda r, k, f="{:.4f}": f.format(r[k]) if r else "-"  # noqa: E731
        lines.append(
            f"| {seed} | {cell(a, 'hv')} | {cell(b, 'hv')} | "
            + (f"{row['diff']:+.4f}" if "diff" in row else "-")
            + f" | {cell(a, 'trials', '{}')} ({cell(a, 'pruned', '{}')}) | "
            f"{cell(a, 'complete', '{}')} / {cell(b, 'complete', '{}')} | "
            + (row.get("fault") or ("clean" if "diff" in row else "-"))
            + " |"
        )
    d = s["diff"]
    if d:
        lines += [
            "",
            f"Mean difference {d['mean']:+.4f}, t 95% [{d['t_low']:+.4f}, {d['t_high']:+.4f}], "
            f"bootstrap [{d['boot_low']:+.4f}, {d['boot_high']:+.4f}]; of {d['n']} clean pairs "
            f"pruned ahead in {d['ahead']}, level in {d['n'] - d['ahead'] - d['behind']}, behind "
            f"in {d['behind']}: {s['verdict']}.",
        ]
    else:
        lines += ["", s["verdict"]]
    return "\n".join(lines)


def cnnopt_command(variant: str, seed: str | int, epochs: int, train_subset: int) -> str:
    """The `cnnopt run` a study of ``variant`` runs (live.run_cnnopt adds its storage and name)."""
    sets = [*live._benchmark_sets(epochs, train_subset), *VARIANTS[variant]]
    return f"cnnopt run {STUDY_FILE} --workers 1 --seed {seed} " + " ".join(
        f"--set {s}" for s in sets
    )


def run(
    out: Path,
    *,
    seeds: Iterable[int],
    budget: int = BUDGET,
    epochs: int = EPOCHS,
    train_subset: int = TRAIN_SUBSET,
    data_dir: str | None = None,
    workdir: Path | str | None = None,
    command: str = "",
    log: Callable[[str], None] = lambda msg: None,
    runner: Callable[..., list[dict[str, Any]]] = live.run_cnnopt,
) -> dict[str, Any]:
    """Every (seed, variant) study the table at ``out`` lacks, seeds outer (a finished seed is a
    pair), the table saved after each study with its summary."""
    table = load_table(out)
    table.pop("runs", None)
    studies = table.setdefault("studies", {})
    sizes = {"budget": budget, "epochs": epochs, "train_subset": train_subset}
    held = {k: table.get("meta", {}).get(k) for k in sizes}
    if studies and held != sizes:
        raise SystemExit(f"{out} holds studies of {held}, not {sizes}: use another --out")
    import torch

    from cnnopt.train import cpu_model

    table["meta"] = {
        "what": "live Pareto studies: pruned against unpruned, equal trained epochs",
        "kind": "pareto_live",
        "command": command or table.get("meta", {}).get("command", ""),
        "study_file": STUDY_FILE,
        **sizes,
        "val_fraction": live.VAL_FRACTION,
        "split_seed": live.SPLIT_SEED,
        "reference": {"val_accuracy": REFERENCE[0], "log10_flops": REFERENCE[1][0]},
        "cnnopt_commands": {v: cnnopt_command(v, "SEED", epochs, train_subset) for v in VARIANTS},
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.machine()}",
        "torch": torch.__version__,
    }
    workdir = Path(workdir) if workdir else Path("runs") / "pareto-live-journals"
    workdir.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for v, sets in VARIANTS.items():
            key = f"{v}/{seed}"
            if key in studies:
                continue
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            trials = runner(
                v, seed, study_file=STUDY_FILE, budget=budget, epochs=epochs,
                train_subset=train_subset, data_dir=data_dir, workdir=workdir, log=log,
                variant_sets=sets,
            )  # fmt: skip
            rec = {"variant": v, "seed": seed, "trials": trials,
                   "wall_s": round(time.perf_counter() - t0, 1),
                   "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}  # fmt: skip
            fault, hw = live.study_hardware(rec)
            rec["hardware"] = fault or {"cpu": hw[0], "torch_threads": hw[1]}
            studies[key] = rec
            table["summary"] = summarize(table)
            save_table(table, out)
            sc = score(rec, budget, epochs)
            log(f"{key}: hypervolume {sc['hv']:.4f}, {sc['complete']} complete of "
                f"{sc['trials']} trials, {rec['wall_s']:.0f} s")  # fmt: skip
    table["summary"] = summarize(table)
    save_table(table, out)
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search.pareto_live", description=__doc__)
    p.add_argument("--out", default=str(TABLE))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    p.add_argument("--budget", type=int, default=BUDGET, help="trained epochs per study")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="epochs of a full trial")
    p.add_argument("--train-subset", type=int, default=TRAIN_SUBSET)
    p.add_argument(
        "--workdir", default=None, help="the studies' journals [runs/pareto-live-journals]"
    )
    p.add_argument("--summary", action="store_true", help="print the table's figures; run nothing")
    a = p.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if a.summary:
        print(markdown(load_table(Path(a.out))))
        return
    command = command_line(
        "python -m benchmarks.search.pareto_live",
        argparse.Namespace(**{k: v for k, v in vars(a).items() if k not in ("workdir", "summary")}),
    )
    table = run(
        Path(a.out), seeds=a.seeds, budget=a.budget, epochs=a.epochs,
        train_subset=a.train_subset, data_dir=a.data_dir, workdir=a.workdir, command=command,
        log=lambda msg: print(msg, flush=True, file=sys.stdout),
    )  # fmt: skip
    print(markdown(table))


if __name__ == "__main__":
    main()
