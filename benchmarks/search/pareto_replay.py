"""Replay accuracy-versus-FLOPs Pareto studies on the committed pool of learning curves.

The pool (``tables/fashion_pool.json``) is a seeded random sample of studies/fashion_cnn_bn.py's
space, each configuration trained for 10 epochs on a 15,000-image FashionMNIST subset with its
FLOPs counted. A replay plays a study against it at an equal epoch budget, and scores each moment
by the hypervolume of the front of its complete trials (a pruned trial's accuracy is not final, so
it adds nothing to the front a user can pick from):

- ``tpe+<rule><first rung>``: a real Optuna multi-objective TPE study (cnnopt's settings: the
  study seed, 5 startup trials) with cnnopt's rung pruner (cnnopt/pareto.py: the same
  ``RungPruner`` the objective runs) at successive halving's rungs;
- ``tpe``: the same study without pruning: what Optuna offers for a multi-objective study;
- ``random``: random search, the pool in a seeded random order, no pruning;
- ``random+<rule><first rung>``: random search with the rung pruner (what pruning alone does).

TPE proposes over the real search space (the study file's ``space()``); the proposal is snapped to
the nearest configuration of the pool not tried yet (categorical mismatch 1, numbers by their
normalised, log where sampled log, distance), and that configuration is then enqueued and played
as the trial, so TPE learns from exactly what was evaluated (the proposal trial is dropped as
FAIL, which no sampler reads). The pool is what a table-based replay can offer: 100 configurations,
so TPE chooses among them, not in the continuous space.

Hypervolume: objectives (validation accuracy, maximised; log10 FLOPs per image, minimised),
reference point (accuracy 0.5, 10^8.3 = 200M FLOPs), Optuna's exact hypervolume. Units: accuracy x
decades of FLOPs.

Settings (rule ``nds`` or ``cheaper``; first rung at epoch 1 or 3) are chosen on selection seeds
by the mean hypervolume at the budget; the comparison is reported on fresh seeds, paired per seed
(every variant plays the same seed), with percentile-bootstrap 95% intervals.

    python -m benchmarks.search.pareto_replay --select 10 --report 20 --budget 150 \\
        --out benchmarks/search/results/pareto_replay.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from benchmarks.search.stats import bootstrap_mean, paired
from benchmarks.search.tabulate import config_key
from cnnopt.pareto import RungPruner, hypervolume, rungs
from cnnopt.study import Study

ROOT = Path(__file__).resolve().parents[2]
POOL = ROOT / "benchmarks/search/tables/fashion_pool.json"
STUDY_FILE = ROOT / "studies/fashion_cnn_bn.py"
REFERENCE = (0.5, (8.3,))  # accuracy 0.5, log10 FLOPs 8.3 (200 MFLOPs; the pool's largest: 162M)
EPOCHS = 10
REDUCTION = 2
CHECKPOINTS = (25, 50, 75, 100, 125, 150, 200, 250, 300)


@dataclass
class Pool:
    keys: list[str]  # pool order (warm starts left out: not part of the random sample)
    params: dict[str, dict[str, Any]]
    curves: dict[str, list[float]]
    flops: dict[str, int]
    params_count: dict[str, int]

    @classmethod
    def load(cls, path: Path = POOL) -> Pool:
        data = json.loads(path.read_text())
        runs = {config_key(r["config"]): r for r in data["runs"].values() if r["seed"] == 0}
        keys = [k for k in data["meta"]["pool"] if k in runs and len(runs[k]["epochs"]) >= EPOCHS]
        return cls(
            keys,
            {k: runs[k]["config"] for k in keys},
            {k: [e["val_accuracy"] for e in runs[k]["epochs"][:EPOCHS]] for k in keys},
            {k: int(runs[k]["flops"]) for k in keys},
            {k: int(runs[k]["params"]) for k in keys},
        )


@dataclass
class Replay:
    variant: str
    seed: int
    budget: int
    epochs: int = 0
    trials: int = 0
    pruned: int = 0
    # after each complete trial: (epochs used so far, hypervolume of the complete front)
    curve: list[tuple[int, float]] = field(default_factory=list)
    front: list[tuple[float, float]] = field(default_factory=list)  # (accuracy, flops)

    def hv_at(self, epochs: int) -> float:
        return max([0.0, *(hv for e, hv in self.curve if e <= epochs)])


def _point(acc: float, flops: int) -> tuple[float, tuple[float]]:
    return (acc, (math.log10(flops),))


def _distance(a: dict[str, Any], b: dict[str, Any], dists: dict[str, Any]) -> float:
    d = 0.0
    for name in set(a) | set(b):
        if name not in a or name not in b:
            d += 1.0
            continue
        x, y, dist = a[name], b[name], dists.get(name)
        if isinstance(dist, FloatDistribution | IntDistribution):
            lo, hi = dist.low, dist.high
            if dist.log:
                x, y, lo, hi = (math.log(v) for v in (x, y, lo, hi))
            d += abs(x - y) / (hi - lo) if hi > lo else 0.0
        else:
            d += float(x != y)
    return d


def replay(
    pool: Pool,
    variant: str,
    seed: int,
    budget: int,
    study_file: Study,
) -> Replay:
    """One study on the pool until ``budget`` epochs are spent (or the pool is exhausted)."""
    sampler_name, _, pruning = variant.partition("+")
    pruner = None
    if pruning:
        rule, first = pruning[:-1], int(pruning[-1])
        pruner = RungPruner(rungs(first, REDUCTION, EPOCHS), REDUCTION, True, rule)
    out = Replay(variant, seed, budget)
    rung_points: dict[int, list[tuple[float, tuple[float]]]] = {}
    complete: list[tuple[float, tuple[float]]] = []
    raw: list[tuple[float, int]] = []
    tried: set[str] = set()
    order = [pool.keys[i] for i in np.random.default_rng(seed).permutation(len(pool.keys))]
    study = None
    if sampler_name == "tpe":
        study = optuna.create_study(
            directions=["maximize", "minimize"],
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        )
    while out.epochs < budget and len(tried) < len(pool.keys):
        if study is None:
            key = order[len(tried)]
            trial = None
        else:
            proposal = study.ask()
            study_file.sample(proposal)
            wanted, dists = proposal.params, proposal.distributions
            study.tell(proposal, state=TrialState.FAIL)  # no sampler reads a failed trial
            key = min(
                (k for k in pool.keys if k not in tried),
                key=lambda k: _distance(wanted, pool.params[k], dists),
            )
            study.enqueue_trial(pool.params[key])
            trial = study.ask()
            study_file.sample(trial)  # the enqueued values, with their distributions
        tried.add(key)
        out.trials += 1
        curve, flops = pool.curves[key], pool.flops[key]
        stopped = False
        for epoch in range(1, EPOCHS + 1):
            if out.epochs >= budget:  # the budget cuts this trial: it never completes
                stopped = True
                break
            out.epochs += 1
            if pruner is not None and pruner.decides_at(epoch):
                own = _point(curve[epoch - 1], flops)
                others = rung_points.setdefault(epoch, [])
                stop = pruner.should_stop(own, others)
                others.append(own)
                if stop:
                    stopped = True
                    out.pruned += 1
                    break
        if study is not None and trial is not None:
            if stopped:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, [curve[-1], flops])
        if not stopped:
            complete.append(_point(curve[-1], flops))
            raw.append((curve[-1], flops))
            out.curve.append((out.epochs, hypervolume(complete, REFERENCE)))
    from cnnopt.pareto import front_mask

    out.front = [p for p, on in zip(raw, front_mask(complete), strict=True) if on]
    return out


def budget_replay(
    pool: Pool,
    variant: str,
    seed: int,
    n_trials: int,
    max_params: int,
    study_file: Study,
) -> list[bool]:
    """Does the sampler learn a budget? A single-objective study (final accuracy) on the pool in
    which a proposal over ``max_params`` is recorded as the objective records it (PRUNED, no
    epoch, constraint ``params / max_params - 1``); returns, per trial, whether it was over.
    Variants: ``tpe`` (constraints set, as cnnopt does), ``tpe-blind`` (the same pruned trials
    without constraints), ``random`` (random proposals, snapped alike)."""
    sampler = (
        optuna.samplers.RandomSampler(seed=seed)
        if variant == "random"
        else optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    tried: set[str] = set()
    over: list[bool] = []
    for _ in range(n_trials):
        proposal = study.ask()
        study_file.sample(proposal)
        wanted, dists = proposal.params, proposal.distributions
        study.tell(proposal, state=TrialState.FAIL)
        key = min(
            (k for k in pool.keys if k not in tried),
            key=lambda k: _distance(wanted, pool.params[k], dists),
        )
        tried.add(key)
        study.enqueue_trial(pool.params[key])
        trial = study.ask()
        study_file.sample(trial)
        violation = pool.params_count[key] / max_params - 1
        if variant != "tpe-blind":
            trial.set_constraint("params", violation)
        over.append(violation > 0)
        if violation > 0:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, pool.curves[key][-1])
    return over


def run(variants: list[str], seeds: list[int], budget: int, log=print) -> dict[str, list[Replay]]:
    pool = Pool.load()
    study_file = Study.load(STUDY_FILE)
    out: dict[str, list[Replay]] = {}
    for v in variants:
        t0 = time.perf_counter()
        out[v] = [replay(pool, v, s, budget, study_file) for s in seeds]
        log(f"{v}: {len(seeds)} seeds in {time.perf_counter() - t0:.0f} s")
    return out


def summarize(results: dict[str, list[Replay]], budget: int, base: str) -> dict[str, Any]:
    """Mean hypervolume per variant at each checkpoint, and each variant minus ``base``, paired
    per seed, with 95% bootstrap intervals."""
    points = [c for c in CHECKPOINTS if c <= budget]
    table: dict[str, Any] = {}
    for v, reps in results.items():
        row: dict[str, Any] = {
            "trials": float(np.mean([r.trials for r in reps])),
            "pruned": float(np.mean([r.pruned for r in reps])),
            "complete": float(np.mean([len(r.curve) for r in reps])),
        }
        for c in points:
            hv = [r.hv_at(c) for r in reps]
            row[f"hv@{c}"] = bootstrap_mean(hv).__dict__
            if v != base:
                ref = [r.hv_at(c) for r in results[base]]
                row[f"diff@{c}"] = paired(hv, ref).__dict__
        table[v] = row
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--select", type=int, default=10, help="selection seeds (0..N-1)")
    ap.add_argument("--report", type=int, default=20, help="report seeds (1000..1000+N-1)")
    ap.add_argument("--budget", type=int, default=150, help="epochs per replay")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/search/results/pareto_replay.json"
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    candidates = ["tpe+nds1", "tpe+nds3", "tpe+cheaper1", "tpe+cheaper3"]
    select_seeds = list(range(args.select))
    sel = run(candidates, select_seeds, args.budget)
    sel_hv = {v: float(np.mean([r.hv_at(args.budget) for r in reps])) for v, reps in sel.items()}
    chosen = max(candidates, key=lambda v: sel_hv[v])
    print(f"selection ({args.select} seeds, hypervolume at {args.budget} epochs): {sel_hv}")
    print(f"chosen: {chosen}")
    pruning = chosen.partition("+")[2]
    variants = [chosen, "tpe", "random", f"random+{pruning}"]
    report_seeds = list(range(1000, 1000 + args.report))
    rep = run(variants, report_seeds, args.budget)
    table = summarize(rep, args.budget, base="tpe")
    data = {
        "command": "python -m benchmarks.search.pareto_replay "
        f"--select {args.select} --report {args.report} --budget {args.budget}",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "optuna": optuna.__version__,
        "pool": str(POOL.relative_to(ROOT)),
        "reference": {"val_accuracy": REFERENCE[0], "log10_flops": REFERENCE[1][0]},
        "budget": args.budget,
        "selection": {"seeds": select_seeds, "hv_at_budget": sel_hv, "chosen": chosen},
        "report_seeds": report_seeds,
        "table": table,
        "curves": {
            v: [{"seed": r.seed, "curve": r.curve, "front": r.front} for r in reps]
            for v, reps in rep.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    figure(data).write_html(args.out.with_suffix(".html"), include_plotlyjs="cdn")
    print(markdown(data))


def markdown(data: dict[str, Any]) -> str:
    budget = data["budget"]
    points = [c for c in CHECKPOINTS if c <= budget]
    lines = [
        "| variant | trials | pruned | complete | "
        + " | ".join(f"HV @{c} ep" for c in points)
        + f" | vs tpe @{budget} ep (95% CI) |",
        "|---" * (5 + len(points)) + "|",
    ]
    for v, row in data["table"].items():
        cells = [f"{row[f'hv@{c}']['mean']:.4f}" for c in points]
        d = row.get(f"diff@{budget}")
        diff = f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d else "(baseline)"
        lines.append(
            f"| {v} | {row['trials']:.1f} | {row['pruned']:.1f} | {row['complete']:.1f} | "
            + " | ".join(cells)
            + f" | {diff} |"
        )
    return "\n".join(lines)


def figure(data: dict[str, Any]):
    """Mean hypervolume against epochs per variant, with pointwise 95% bootstrap bands over the
    report seeds; and the front each variant found on one seed."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from benchmarks.search.stats import band

    budget = data["budget"]
    xs = np.arange(1, budget + 1)
    colors = ["#d62728", "#1f77b4", "#7f7f7f", "#2ca02c"]
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.6, 0.4],
        subplot_titles=(
            f"hypervolume of the complete front, mean of {len(data['report_seeds'])} seeds (95%)",
            f"fronts at {budget} epochs, seed {data['report_seeds'][0]}",
        ),
    )
    for (v, reps), color in zip(data["curves"].items(), colors, strict=False):
        rows = np.array(
            [[max([0.0, *(h for e, h in r["curve"] if e <= x)]) for x in xs] for r in reps]
        )
        mean, low, high = band(rows)
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([xs, xs[::-1]]),
                y=np.concatenate([high, low[::-1]]),
                fill="toself",
                fillcolor=color,
                opacity=0.15,
                line={"width": 0},
                showlegend=False,
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(x=xs, y=mean, name=v, line={"color": color}, legendgroup=v),
            row=1,
            col=1,
        )
        front = sorted(reps[0]["front"], key=lambda p: p[1])
        fig.add_trace(
            go.Scatter(
                x=[p[1] for p in front],
                y=[p[0] for p in front],
                mode="lines+markers",
                line={"shape": "hv", "color": color},
                name=v,
                legendgroup=v,
                showlegend=False,
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="epochs trained", row=1, col=1)
    fig.update_yaxes(title_text="hypervolume (accuracy x decades of FLOPs)", row=1, col=1)
    fig.update_xaxes(title_text="FLOPs per image (log)", type="log", row=1, col=2)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=2)
    fig.update_layout(width=1100, height=450, margin={"t": 40})
    return fig


def budget_main() -> None:
    """Over-budget proposals per sampler (python -m benchmarks.search.pareto_replay budget)."""
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pool, study_file = Pool.load(), Study.load(STUDY_FILE)
    seeds, n = list(range(2000, 2010)), 30
    share = float(np.mean([pool.params_count[k] > 100_000 for k in pool.keys]))
    print(f"pool: {100 * share:.0f}% of the configurations have more than 100,000 parameters")
    print("| sampler | over budget, trials 1-5 | over budget, trials 6-30 (95% CI) |")
    print("|---|---|---|")
    for v in ("random", "tpe-blind", "tpe"):
        rows = [budget_replay(pool, v, s, n, 100_000, study_file) for s in seeds]
        early = float(np.mean([np.mean(r[:5]) for r in rows]))
        late = bootstrap_mean([float(np.mean(r[5:])) for r in rows])
        print(
            f"| {v} | {100 * early:.0f}% | {100 * late.mean:.0f}% "
            f"[{100 * late.low:.0f}, {100 * late.high:.0f}] (n={late.n} seeds) |",
            flush=True,
        )


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["budget"]:
        budget_main()
    elif sys.argv[1:2] == ["figure"]:  # redraw from a results file: figure RESULTS.json
        path = Path(sys.argv[2])
        figure(json.loads(path.read_text())).write_html(
            path.with_suffix(".html"), include_plotlyjs="cdn"
        )
    else:
        main()
