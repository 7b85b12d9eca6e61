"""The search section of ``cnnopt bench``: replays on R2's tabulated grid, the pruner chosen on
one set of replay seeds and the headline reported on fresh seeds, real Ray Tune ASHA on the same
table, rows, a Markdown table and an anytime-performance figure. Where the random pool of
studies/fashion_cnn_bn.py's space is tabulated (``pool.py``), a second part replays random search
over it with each pruner (``pool_replay.py``): the same choice on some order seeds and report on
fresh ones, cnnopt's default pruner against no pruning and against ASHA-like epoch-1 rungs, and
its own anytime figure (search_pool.html).

Run from the repository root (this folder is not installed with the package):

    python -m benchmarks.search.section --out-dir benchmarks/search/results            # the evidence
    python -m benchmarks.search.section --out-dir benchmarks/search/results --quick    # a smoke run
    cnnopt bench --section search --markdown runs/bench.md     # the same, in the bench report

Rows are plain dicts with the fields of ``cnnopt bench``'s ``Row`` (section, name, value, unit,
baseline, baseline_value, ratio, better, note, extra), so the bench report takes them as they are;
``bench_payload`` is what ``cnnopt bench`` reads back (``--bench-json``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.search import live, ray_asha, stats
from benchmarks.search.live import TABLE as LIVE_TABLE
from benchmarks.search.pool import TABLE as POOL_TABLE
from benchmarks.search.pool_replay import (
    ASHA_LIKE,
    DEFAULT_PRUNER,
    NO_PRUNING,
    PoolTable,
    replay_pool,
    variant_name,
)
from benchmarks.search.replay import PRUNERS, Replay, Table, Variant, replay

TABLE = Path(__file__).with_name("tables") / "r2_grid.json"
SECTION = "search"
SMOKE = "SMOKE RUN (--quick): too few seeds to compare anything; not evidence"
BASELINE_RANDOM = "random search, no pruning (R2)"  # the labels of the paired comparisons
BASELINE_RAY = "Ray Tune random + ASHA"
BASELINE_RAY_TPE = "Ray Tune TPE + ASHA"  # Ray's OptunaSearch(TPESampler): the strongest Ray peer
RAY_BASELINES = {"random": BASELINE_RAY, "tpe": BASELINE_RAY_TPE}
# the pool's paired comparisons: every pruner against these two, on the same permutations
POOL_BASELINES = {
    "no pruning": variant_name(NO_PRUNING),
    "sh1 (ASHA-like, grace period 1)": variant_name(ASHA_LIKE),
}
WITHOUT_WARM = "the default without warm starts"
POOL_TARGET_PERCENTILE = 90.0  # the pool's target: its 90th-percentile final val accuracy

RANDOM = Variant("random", "none", dedup=False)  # R2's method: random search, full trials
TPE = Variant("tpe", "none", dedup=False)
TODAY = Variant("tpe", "sh1", dedup=False)  # cnnopt's default before deduplication
# The candidates for the default: TPE with deduplication and each pruner.
CANDIDATES = [Variant("tpe", p, dedup=True) for p in PRUNERS]
EXTRA = [Variant("random", "none", dedup=True), Variant("random", "sh1", dedup=False)]


def variants() -> list[Variant]:
    seen: dict[str, Variant] = {}
    for v in [RANDOM, TPE, TODAY, *CANDIDATES, *EXTRA]:
        seen.setdefault(v.name, v)
    return list(seen.values())


def _figures(rs: list[Replay], target: float, budget: int, epochs: int) -> dict[str, list[float]]:
    cap = budget + epochs  # 'never within the budget' counts as one more full trial
    return {
        "best": [r.best if math.isfinite(r.best) else 0.0 for r in rs],
        # anytime: the best after half the budget (0 where no trial has completed by then)
        "best_half": [max(r.best_at(budget // 2), 0.0) for r in rs],
        "epochs_to_target": stats.capped([r.epochs_to(target) for r in rs], cap),
        "reached": [float(math.isfinite(r.epochs_to(target))) for r in rs],
        "duplicate_epochs": [float(r.duplicate_epochs) for r in rs],
        "duplicates": [float(r.duplicates) for r in rs],
        "epochs": [float(r.epochs) for r in rs],
        "seconds": [r.seconds for r in rs],
    }


def _ci(a: list[float], b: list[float]) -> dict[str, float]:
    ci = stats.paired(a, b)
    return {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n}


def _shown(path: Path) -> str:
    """The table's path as the output shows it: relative to the working directory where it can be
    (so that results written from a checkout name the same file on every machine)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _fmt_ci(d: dict[str, float], digits: int = 4) -> str:
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def bench_search(
    table_path: Path | str = TABLE,
    *,
    seeds: int = 100,
    budget: int = 120,
    ray_seeds: int = 30,
    quick: bool = False,
    out_dir: Path | str | None = None,
    log: Callable[[str], None] = print,
    pool_path: Path | str | None = POOL_TABLE,
    live_path: Path | str | None = LIVE_TABLE,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Choose the pruner on replay seeds 0..seeds-1, report on seeds..2*seeds-1 (fresh); the same
    on the random pool at ``pool_path`` (order seeds) where that table exists; and the live
    studies of ``live_path`` (``live.py``), where that table exists.

    Returns (rows, details); with ``out_dir`` also writes search.json, search.md, search.html
    (and search_pool.html with the pool, search_live.html with the live studies).
    """
    if quick:
        seeds, ray_seeds = min(seeds, 8), min(ray_seeds, 2)
    data = json.loads(Path(table_path).read_text())
    table = Table(data)
    # Fresh seeds are fresh twice over where the table allows: the pruner is chosen on the first
    # training seed's curves and reported on the others' (a choice fitted to one seed's curve
    # shapes would not carry over), with different replay seeds as well.
    if len(table.seeds) > 1:
        choose_table = Table(data, seeds=table.seeds[:1])
        fresh_table = Table(data, seeds=table.seeds[1:])
    else:
        choose_table = fresh_table = table
    # the target is near the ceiling of the curves replayed (one seed's ceiling can lie below
    # the seed-mean of another set), so each set of seeds gets its own
    target = fresh_table.default_target()
    targets = {"choose": choose_table.default_target(), "fresh": target}
    choose_seeds = list(range(seeds))
    fresh_seeds = list(range(seeds, 2 * seeds))
    t0 = time.perf_counter()
    all_variants = variants()
    on: dict[str, dict[str, list[Replay]]] = {"choose": {}, "fresh": {}}
    timing: dict[str, float] = {}
    for v in all_variants:
        t = time.perf_counter()
        on["choose"][v.name] = [replay(choose_table, v, s, budget) for s in choose_seeds]
        on["fresh"][v.name] = [replay(fresh_table, v, s, budget) for s in fresh_seeds]
        timing[v.name] = (time.perf_counter() - t) / (2 * seeds)
        log(f"{v.name}: {timing[v.name] * 1000:.0f} ms per replay")
    fig = {
        part: {name: _figures(rs, target, budget, table.epochs) for name, rs in by_variant.items()}
        for part, by_variant in on.items()
    }
    cand = {v.name: fig["choose"][v.name]["best"] for v in CANDIDATES}
    tie = {v.name: fig["choose"][v.name]["epochs_to_target"] for v in CANDIDATES}
    chosen = stats.choose(cand, tie)
    log(f"chosen on seeds 0..{seeds - 1}: {chosen}")

    # Real Ray Tune on the first fresh seeds: random search and TPE, each under ASHA
    ray_note = ""
    ray_timing: dict[str, dict[str, float]] = {}
    baselines = {BASELINE_RANDOM: RANDOM.name, "TPE, no pruning": TPE.name}
    if ray_seeds and ray_asha.available():
        for searcher, label in RAY_BASELINES.items():
            name = ray_asha.NAMES[searcher]
            replays, ray_timing[name] = ray_asha.run_asha(
                data, fresh_seeds[:ray_seeds], budget=budget, table_seeds=fresh_table.seeds,
                searcher=searcher, log=log,
            )  # fmt: skip
            fig["fresh"][name] = _figures(replays, target, budget, table.epochs)
            on["fresh"][name] = replays
            baselines[label] = name
    elif ray_seeds:
        ray_note = "Ray Tune is not installed (pip install '.[bench]'): its rows are skipped"
        log(ray_note)

    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    base_best = float(np.mean(fig["fresh"][RANDOM.name]["best"]))
    for name, f in fig["fresh"].items():
        n = len(f["best"])
        entry: dict[str, Any] = {
            "best_mean": float(np.mean(f["best"])),
            "best_ci": _ci(f["best"], [0.0] * n) if n > 1 else None,
            "best_half_mean": float(np.mean(f["best_half"])),
            "epochs_to_target_mean": float(np.mean(f["epochs_to_target"])),
            "reached_fraction": float(np.mean(f["reached"])),
            "duplicate_epochs_mean": float(np.mean(f["duplicate_epochs"])),
            "duplicates_mean": float(np.mean(f["duplicates"])),
            "epochs_mean": float(np.mean(f["epochs"])),
            "seconds_mean": float(np.mean(f["seconds"])),
            "seeds": n,
            "ms_per_replay": 1000 * (ray_timing[name]["seconds_per_replay"] if name in ray_timing else timing[name]),
            "vs": {},
        }  # fmt: skip
        for label, base in baselines.items():
            if base == name or n < 2:
                continue
            b = fig["fresh"][base]
            m = min(n, len(b["best"]))  # Ray ran on the first fresh seeds only: pair those
            entry["vs"][label] = {
                "best": _ci(f["best"][:m], b["best"][:m]),
                "epochs_to_target": _ci(f["epochs_to_target"][:m], b["epochs_to_target"][:m]),
            }
        summary[name] = entry
        vs = entry["vs"].get(BASELINE_RANDOM)
        rows.append(
            {
                "section": SECTION,
                "name": f"best val accuracy in {budget} epochs: {name}"
                + (" (chosen default)" if name == chosen else ""),
                "value": entry["best_mean"],
                "unit": "accuracy",
                "baseline": "random search, no pruning (R2's method), same seeds",
                "baseline_value": base_best,
                "ratio": None,
                "better": "higher",
                "note": (
                    f"paired diff {_fmt_ci(vs['best'])} (95% bootstrap, {vs['best']['n']} fresh seeds)"
                    if vs
                    else ""
                )
                + (f"; {SMOKE}" if quick else ""),
                "extra": entry,
            }
        )
    details = {
        "smoke": quick,
        "table": _shown(Path(table_path)),
        "table_seeds": table.seeds,
        "choose_train_seeds": choose_table.seeds,
        "fresh_train_seeds": fresh_table.seeds,
        "target": target,
        "choose_target": targets["choose"],
        "ceiling": fresh_table.ceiling(),
        "budget": budget,
        "choose_seeds": [choose_seeds[0], choose_seeds[-1]],
        "fresh_seeds": [fresh_seeds[0], fresh_seeds[-1]],
        "chosen": chosen,
        "choice_means": {k: float(np.mean(v)) for k, v in cand.items()},
        "summary": summary,
        "ray": {
            "note": ray_note,
            "seeds": min(ray_seeds, seeds) if ray_timing else 0,
            **ray_timing,
        },  # fmt: skip
        "seconds": time.perf_counter() - t0,
    }
    pool_rows, details["pool"], pool_replays = bench_pool(
        pool_path, seeds=seeds, budget=budget, quick=quick, log=log
    )
    rows += pool_rows
    live_replays: dict[str, list[Replay]] = {}
    if live_path is not None:
        live_replays = _add_live(rows, details, live_path, log)
    details["markdown"] = to_markdown(details)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write(out, rows, details)
        write_figure(on["fresh"], budget, out / "search.html", quick)
        written = [out / "search.md", out / "search.json", out / "search.html"]
        if pool_replays:
            n = details["pool"]["configs"]
            write_figure(
                pool_replays, budget, out / "search_pool.html", quick,
                title=f"Random search over the pool ({n} configurations): best validation "
                "accuracy so far (mean of order seeds, 95% bootstrap band)",
            )  # fmt: skip
            written.append(out / "search_pool.html")
        if live_replays:
            _live_figure(live_replays, budget, out)
            written.append(out / "search_live.html")
        log("wrote " + ", ".join(map(str, written)))
    return rows, details


def _add_live(
    rows: list[dict[str, Any]], details: dict[str, Any], live_path: Path | str, log: Callable
) -> dict[str, list[Replay]]:
    """The live studies' part: ``details["live"]`` and its rows (added to ``rows``)."""
    details["live"], replays = live.summarize(live_path, reference=details["pool"].get("ceiling"))
    log(
        details["live"].get("note")
        or f"live studies: {details['live']['provisional'] or 'complete'}"
    )
    rows += live_rows(details["live"])
    return replays


def _write(out: Path, rows: list[dict[str, Any]], details: dict[str, Any]) -> None:
    (out / "search.json").write_text(json.dumps({"rows": rows, **details}, indent=1) + "\n")
    (out / "search.md").write_text(details["markdown"])


def _live_figure(replays: dict[str, list[Replay]], budget: int, out: Path) -> None:
    write_figure(
        replays, budget, out / "search_live.html", quick=False,
        title="Live studies on the full space: best validation accuracy so far (mean of "
        "seeds, 95% bootstrap band)",
    )  # fmt: skip


def refresh_live(
    out_dir: Path | str, live_path: Path | str = LIVE_TABLE, log: Callable = lambda m: None
) -> dict[str, Any]:
    """Rewrite only the live part of a section already written in ``out_dir`` (search.json,
    search.md, search_live.html) from the live table as it is now: the replays on R2's grid and
    the pool take half an hour and read tables the live studies do not change."""
    out = Path(out_dir)
    try:
        details = json.loads((out / "search.json").read_text())
    except FileNotFoundError:
        raise SystemExit(f"{out / 'search.json'}: no section written there to refresh") from None
    rows = [r for r in details.pop("rows") if not r["name"].startswith("live:")]
    replays = _add_live(rows, details, live_path, log)
    details["markdown"] = to_markdown(details)
    _write(out, rows, details)
    if replays:
        _live_figure(replays, details["budget"], out)
    log(f"refreshed the live part of {out / 'search.md'} and {out / 'search.json'}")
    return details


def bench_pool(
    pool_path: Path | str | None,
    *,
    seeds: int,
    budget: int,
    quick: bool,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, list[Replay]]]:
    """The pool part: every pruner plays random search over the pool on order seeds
    0..seeds-1 (the pruner is chosen there) and seeds..2*seeds-1 (the figures); a given order
    seed is the same permutation for every pruner, so differences are paired per order seed.

    Returns (rows, details, the fresh replays by variant); without a table, no rows, details
    with a one-line ``note`` and no replays."""
    if pool_path is None or not Path(pool_path).is_file():
        note = (
            f"random pool: no table at {_shown(Path(pool_path))} (tabulate it with "
            "`python -m benchmarks.search.pool`); the pool part is skipped"
            if pool_path is not None
            else "random pool: not requested"
        )
        log(note)
        return [], {"note": note}, {}
    try:
        pool = PoolTable.load(pool_path)
    except ValueError as e:  # e.g. no run finished yet: the grid part still stands
        note = f"random pool: {e}; the pool part is skipped"
        log(note)
        return [], {"note": note}, {}
    target = pool.target(POOL_TARGET_PERCENTILE)
    names = [variant_name(p) for p in PRUNERS]
    choose_seeds, fresh_seeds = list(range(seeds)), list(range(seeds, 2 * seeds))
    on: dict[str, dict[str, list[Replay]]] = {"choose": {}, "fresh": {}}
    timing: dict[str, float] = {}
    for p, name in zip(PRUNERS, names, strict=True):
        t = time.perf_counter()
        on["choose"][name] = [replay_pool(pool, p, s, budget) for s in choose_seeds]
        on["fresh"][name] = [replay_pool(pool, p, s, budget) for s in fresh_seeds]
        timing[name] = (time.perf_counter() - t) / (2 * seeds)
        log(f"pool {name}: {timing[name] * 1000:.0f} ms per replay")
    fig = {
        part: {name: _figures(rs, target, budget, pool.epochs) for name, rs in by.items()}
        for part, by in on.items()
    }
    chosen = stats.choose(
        {n: fig["choose"][n]["best"] for n in names},
        {n: fig["choose"][n]["epochs_to_target"] for n in names},
    )
    log(f"pool: chosen on order seeds 0..{seeds - 1}: {chosen}")
    default = variant_name(DEFAULT_PRUNER)
    baselines = dict(POOL_BASELINES)
    if pool.warm:
        # one more row, not a candidate: the default pruner with the study file's warm starts
        # played first, against the same permutations without them
        warm = variant_name(DEFAULT_PRUNER, warm=True)
        t = time.perf_counter()
        for part, ss in (("choose", choose_seeds), ("fresh", fresh_seeds)):
            on[part][warm] = [replay_pool(pool, DEFAULT_PRUNER, s, budget, warm=True) for s in ss]
            fig[part][warm] = _figures(on[part][warm], target, budget, pool.epochs)
        timing[warm] = (time.perf_counter() - t) / (2 * seeds)
        names.append(warm)
        baselines[WITHOUT_WARM] = default
    provisional = (
        f"provisional: the pool has {pool.n_configs} of {pool.size} configurations"
        if not pool.complete
        else ""
    )
    summary: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    base_best = float(np.mean(fig["fresh"][variant_name(NO_PRUNING)]["best"]))
    for name in names:
        f, rs = fig["fresh"][name], on["fresh"][name]
        entry: dict[str, Any] = {
            "best_mean": float(np.mean(f["best"])),
            "best_half_mean": float(np.mean(f["best_half"])),
            "epochs_to_target_mean": float(np.mean(f["epochs_to_target"])),
            "reached_fraction": float(np.mean(f["reached"])),
            "trials_mean": float(np.mean([r.trials for r in rs])),
            "pruned_mean": float(np.mean([r.pruned for r in rs])),
            "exhausted_fraction": float(np.mean([r.exhausted for r in rs])),
            "epochs_mean": float(np.mean(f["epochs"])),
            "seconds_mean": float(np.mean(f["seconds"])),
            "seeds": len(rs),
            "ms_per_replay": 1000 * timing[name],
            "vs": {},
        }
        for label, base in baselines.items():
            if (
                base == name
                or len(rs) < 2
                or (label == WITHOUT_WARM and not name.endswith("+warm"))
            ):
                continue
            b = fig["fresh"][base]
            entry["vs"][label] = {
                "best": _ci(f["best"], b["best"]),
                "epochs_to_target": _ci(f["epochs_to_target"], b["epochs_to_target"]),
            }
        summary[name] = entry
        vs = entry["vs"].get("no pruning")
        tags = [t for t, on_ in (("cnnopt default", name == default),
                                 ("chosen on the pool", name == chosen)) if on_]  # fmt: skip
        rows.append(
            {
                "section": SECTION,
                "name": f"pool: best val accuracy in {budget} epochs: {name}"
                + (f" ({', '.join(tags)})" if tags else ""),
                "value": entry["best_mean"],
                "unit": "accuracy",
                "baseline": "random search over the pool, no pruning, same order seeds",
                "baseline_value": base_best,
                "ratio": None,
                "better": "higher",
                "note": "; ".join(
                    x
                    for x in (
                        f"paired diff {_fmt_ci(vs['best'])} (95% bootstrap, {vs['best']['n']} "
                        "fresh order seeds)" if vs else "",
                        provisional,
                        SMOKE if quick else "",
                    )
                    if x
                ),
                "extra": entry,
            }
        )  # fmt: skip
    details = {
        "table": _shown(Path(pool_path)),
        "study_file": pool.meta.get("study_file", ""),
        "configs": pool.n_configs,
        "size": pool.size,
        "complete": pool.complete,
        "provisional": provisional,
        "train_seed": pool.seed,
        "epochs": pool.epochs,
        "ceiling": pool.ceiling(),
        "target": target,
        "target_percentile": POOL_TARGET_PERCENTILE,
        "reaching_target": sum(x >= target for x in pool.finals()),
        "budget": budget,
        "choose_seeds": [choose_seeds[0], choose_seeds[-1]],
        "fresh_seeds": [fresh_seeds[0], fresh_seeds[-1]],
        "default": default,
        "chosen": chosen,
        "warm": variant_name(DEFAULT_PRUNER, warm=True) if pool.warm else None,
        "warm_starts": len(pool.warm),
        "choice_means": {n: float(np.mean(fig["choose"][n]["best"])) for n in names},
        "summary": summary,
    }
    return rows, details, on["fresh"]


DEFAULT_OUT = Path("runs/bench-search")


def bench_payload(
    *,
    seeds: int,
    ray_seeds: int,
    smoke: bool,
    out_dir: Path | str = DEFAULT_OUT,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """The section as ``cnnopt bench --section search`` takes it: the rows (plain dicts with the
    fields of the bench's ``Row``), the report's headline fields, its plan entry and notes. The
    package never imports this folder: ``cnnopt bench`` runs ``python -m benchmarks.search.section
    --bench-json FILE`` in the checkout and reads this back. It always replays the committed tables
    (R2's grid and, where tabulated, the random pool and the live studies, all on FashionMNIST):
    the bench's ``--dataset``/``--data-dir`` do not apply."""
    out_dir = Path(out_dir)
    if smoke:
        log(SMOKE)
    rows, details = bench_search(
        TABLE, seeds=seeds, ray_seeds=ray_seeds, quick=smoke, out_dir=out_dir, log=log,
        pool_path=POOL_TABLE,
    )  # fmt: skip
    chosen = details["chosen"]
    vs = details["summary"][chosen]["vs"]
    plan = {k: v for k, v in details.items() if k not in ("markdown", "summary", "pool", "live")}
    plan["pool"] = {k: v for k, v in details["pool"].items() if k != "summary"}
    plan["out_dir"] = str(out_dir)
    notes = [
        f"search: the anytime-performance figure is {out_dir / 'search.html'}, every variant's "
        f"figures and intervals in {out_dir / 'search.md'}" + (f" ({SMOKE})" if smoke else "")
    ]
    if details["ray"]["note"]:
        notes.append(f"search: {details['ray']['note']}")
    pool = details["pool"]
    if "summary" in pool:
        notes.append(
            f"search: random search over the pool ({pool['configs']} configurations"
            + (f", {pool['provisional']}" if pool["provisional"] else "")
            + f"): the anytime figure is {out_dir / 'search_pool.html'}"
        )
    else:
        notes.append(f"search: {pool['note']}")
    lv = details.get("live", {})
    if "summary" in lv:
        notes.append(
            "search: live studies on the full space"
            + (f" ({lv['provisional']})" if lv["provisional"] else "")
            + f": the anytime figure is {out_dir / 'search_live.html'}"
        )
    elif lv:
        notes.append(f"search: {lv['note']}")
    plan["live"] = {k: v for k, v in lv.items() if k != "summary"}
    return {
        "rows": rows,
        "search_default": chosen,
        "search_best_val_diff_vs_random": (vs.get(BASELINE_RANDOM) or {}).get("best"),
        "search_best_val_diff_vs_ray_asha": (vs.get(BASELINE_RAY) or {}).get("best"),
        "search_best_val_diff_vs_ray_tpe_asha": (vs.get(BASELINE_RAY_TPE) or {}).get("best"),
        "plan": plan,
        "notes": notes,
    }


def to_markdown(d: dict[str, Any]) -> str:
    lines = []
    if d["smoke"]:
        lines += [f"**{SMOKE}**", ""]
    lines += [
        f"Replays on R2's tabulated grid ({d['table']}, training seeds {d['table_seeds']}), "
        f"budget {d['budget']} epochs, target {d['target']:.4f} (the third-best configuration; "
        f"grid ceiling {d['ceiling']:.4f}; on the choice seeds {d['choose_target']:.4f}). "
        f"Default chosen on replay seeds {d['choose_seeds'][0]}..{d['choose_seeds'][1]} "
        f"(training seeds {d['choose_train_seeds']}): **{d['chosen']}**; figures below on fresh "
        f"replay seeds {d['fresh_seeds'][0]}..{d['fresh_seeds'][1]} (training seeds "
        f"{d['fresh_train_seeds']}). Intervals: paired per-seed differences, 95% bootstrap. "
        "Best 0 = no trial completed within the budget.",
        "",
        "| variant | best val acc | at half budget | vs random (R2) | vs TPE no pruning | vs Ray random+ASHA "
        "| vs Ray TPE+ASHA | epochs to target (never = budget + 10) | reached | repeat epochs trained "
        "| ms / replay |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in d["summary"].items():

        def vs(label: str, e=e) -> str:
            v = e["vs"].get(label)
            return _fmt_ci(v["best"]) if v else "-"

        lines.append(
            f"| {name}{' **(chosen)**' if name == d['chosen'] else ''} | {e['best_mean']:.4f} "
            f"| {e['best_half_mean']:.4f} | {vs('random search, no pruning (R2)')} | {vs('TPE, no pruning')} "
            f"| {vs(BASELINE_RAY)} | {vs(BASELINE_RAY_TPE)} | {e['epochs_to_target_mean']:.1f} "
            f"| {e['reached_fraction']:.0%} | {e['duplicate_epochs_mean']:.1f} "
            f"| {e['ms_per_replay']:.0f} ({e['seeds']} seeds) |"
        )
    if d["ray"]["note"]:
        lines += ["", d["ray"]["note"]]
    if "pool" in d:
        lines += ["", *pool_markdown(d["pool"], d["smoke"])]
    if "live" in d:
        lines += ["", *live.live_markdown(d["live"])]
    return "\n".join(lines) + "\n"


def live_rows(d: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant compared with cnnopt's default in the live studies."""
    if "summary" not in d or "default" not in d["summary"]:
        return []
    default = d["summary"]["default"]
    rows = []
    for e in d["summary"].values():
        vs = e["vs_default"]
        if vs is None:
            continue
        rows.append(
            {
                "section": SECTION,
                "name": f"live: best val accuracy in {d['budget']} epochs: cnnopt default vs "
                f"{e['label']}",
                "value": default["best_mean"],
                "unit": "accuracy",
                "baseline": f"{e['label']}, same seeds",
                "baseline_value": e["best_mean"],
                "ratio": None,
                "better": "higher",
                "note": "; ".join(
                    x
                    for x in (
                        f"paired diff {live._fmt_diff(vs, len(e['unpaired']))}, live seeds, "
                        "clean pairs",
                        d["provisional"],
                    )
                    if x
                ),
                "extra": {"default": default, "variant": e},
            }
        )
    return rows


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def pool_markdown(p: dict[str, Any], smoke: bool) -> list[str]:
    """The pool part's lines: one line when there is no table."""
    if "summary" not in p:
        return [p["note"]]
    lines = ["### Random pool", ""]
    if p["provisional"]:
        lines += [
            f"**Incomplete pool: {p['configs']} of {p['size']} configurations tabulated so far; "
            "the pool figures below are provisional.**",
            "",
        ]
    if smoke:
        lines += [f"**{SMOKE}**", ""]
    default = p["summary"][p["default"]]
    head = []
    for label in POOL_BASELINES:
        v = default["vs"].get(label)
        if v:
            head.append(
                f"vs {label} {_fmt_ci(v['best'])} best val acc, "
                f"{_fmt_ci(v['epochs_to_target'], 1)} epochs to target"
            )
    if p.get("warm"):
        w = p["summary"][p["warm"]]["vs"].get(WITHOUT_WARM)
        if w:
            head.append(
                f"with the study file's {_count(p['warm_starts'], 'warm start')} played first "
                f"({p['warm']}, never pruned) vs without {_fmt_ci(w['best'])} best val acc, "
                f"{_fmt_ci(w['epochs_to_target'], 1)} epochs to target"
            )
    lines += [
        f"Random search over a seeded random pool of {p['study_file'] or 'the study'}'s space "
        f"({p['table']}: {_count(p['configs'], 'configuration')}, training seed {p['train_seed']}, "
        f"{p['epochs']} epochs each): an order seed plays a random permutation of the pool as a "
        "study with the real pruner, every pruner the same permutation. Budget "
        f"{p['budget']} epochs. Pool ceiling (best final val accuracy) {p['ceiling']:.4f}; "
        f"target {p['target']:.4f}, the pool's {p['target_percentile']:.0f}th-percentile final "
        f"val accuracy ({_count(p['reaching_target'], 'configuration')} "
        f"{'reaches' if p['reaching_target'] == 1 else 'reach'} it). Pruner chosen "
        f"on order "
        f"seeds {p['choose_seeds'][0]}..{p['choose_seeds'][1]}: **{p['chosen']}**; figures "
        f"below on fresh order seeds {p['fresh_seeds'][0]}..{p['fresh_seeds'][1]}, intervals: "
        "paired per order seed, 95% bootstrap. Best 0 = no trial completed within the budget.",
        "",
        f"cnnopt's default pruner ({p['default']}): "
        + ("; ".join(head) if head else "too few order seeds to pair")
        + ".",
        "",
        "| variant | best val acc | at half budget | vs no pruning | vs sh1 (ASHA-like) "
        f"| epochs to target (never = budget + {p['epochs']}) | reached | trials | pruned "
        "| tabulated s | ms / replay |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in p["summary"].items():

        def vs(label: str, e=e) -> str:
            v = e["vs"].get(label)
            return _fmt_ci(v["best"]) if v else "-"

        tags = [t for t, on in (("default", name == p["default"]),
                                ("chosen", name == p["chosen"])) if on]  # fmt: skip
        labels = list(POOL_BASELINES)
        lines.append(
            f"| {name}{' **(' + ', '.join(tags) + ')**' if tags else ''} | {e['best_mean']:.4f} "
            f"| {e['best_half_mean']:.4f} | {vs(labels[0])} | {vs(labels[1])} "
            f"| {e['epochs_to_target_mean']:.1f} | {e['reached_fraction']:.0%} "
            f"| {e['trials_mean']:.1f} | {e['pruned_mean']:.1f} | {e['seconds_mean']:.0f} "
            f"| {e['ms_per_replay']:.0f} ({e['seeds']} seeds) |"
        )
    return lines


def _anytime(rs: list[Replay], xs: np.ndarray, seconds: bool) -> np.ndarray:
    # before a study's first complete trial its best counts as chance (0.1, ten classes)
    f = (lambda r, x: r.best_at_seconds(x)) if seconds else (lambda r, x: r.best_at(x))
    return np.array([[max(f(r, x), 0.1) for x in xs] for r in rs])


def write_figure(
    by_variant: dict[str, list[Replay]], budget: int, path: Path, quick: bool,
    title: str = "Best validation accuracy so far (mean of replays, 95% bootstrap band)",
) -> None:  # fmt: skip
    """Best-so-far against epochs and against seconds: the mean of the replays with a 95%
    bootstrap band, one line per variant."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("vs epochs trained", "vs seconds"))
    max_s = max(r.seconds for rs in by_variant.values() for r in rs)
    axes = [(np.arange(1, budget + 1, dtype=float), False), (np.linspace(0, max_s, 120), True)]
    palette = qualitative.Dark24
    for i, (name, rs) in enumerate(by_variant.items()):
        color = palette[i % len(palette)]
        for col, (xs, secs) in enumerate(axes, 1):
            mean, low, high = stats.band(_anytime(rs, xs, secs))
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([xs, xs[::-1]]), y=np.concatenate([high, low[::-1]]),
                    fill="toself", line={"width": 0}, fillcolor=color, opacity=0.15,
                    legendgroup=name, showlegend=False, hoverinfo="skip",
                ),
                row=1, col=col,
            )  # fmt: skip
            fig.add_trace(
                go.Scatter(
                    x=xs, y=mean, name=name, legendgroup=name, showlegend=col == 1,
                    line={"color": color},
                ),
                row=1, col=col,
            )  # fmt: skip
    if quick:
        title += f" - {SMOKE}"
    fig.update_layout(title=title, height=550, yaxis={"range": [0.85, None]})
    fig.update_xaxes(title_text="epochs trained", row=1, col=1)
    fig.update_xaxes(title_text="tabulated seconds", row=1, col=2)
    fig.write_html(path, include_plotlyjs="cdn")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search.section", description=__doc__)
    p.add_argument("--table", default=str(TABLE))
    p.add_argument(
        "--seeds",
        type=int,
        default=100,
        help="replay seeds per set (choose, fresh); the pool's order seeds too",
    )
    p.add_argument("--ray-seeds", type=int, default=30, help="fresh seeds replayed by Ray Tune")
    p.add_argument("--budget", type=int, default=120)
    p.add_argument("--out-dir", default="runs/bench-search")
    p.add_argument("--pool", default=str(POOL_TABLE), help="the random pool's table (pool.py)")
    p.add_argument("--live", default=str(LIVE_TABLE), help="the live studies' table (live.py)")
    p.add_argument("--quick", action="store_true", help=SMOKE)
    p.add_argument(
        "--bench-json",
        metavar="FILE",
        help="write what `cnnopt bench --section search` reports (rows, headline, notes) to FILE",
    )
    p.add_argument(
        "--live-only", action="store_true",
        help="rewrite only the live part of the section already in --out-dir from --live's table "
        "(seconds; the rest is kept as written)",
    )  # fmt: skip
    a = p.parse_args(argv)
    if a.live_only:
        print(refresh_live(a.out_dir, a.live, log=print)["markdown"])
        return
    if a.bench_json:
        payload = bench_payload(
            seeds=a.seeds, ray_seeds=a.ray_seeds, smoke=a.quick, out_dir=a.out_dir,
            log=lambda m: print(m, flush=True),
        )  # fmt: skip
        Path(a.bench_json).write_text(json.dumps(payload, default=str))
        return
    _rows, details = bench_search(
        a.table, seeds=a.seeds, budget=a.budget, ray_seeds=a.ray_seeds, quick=a.quick,
        out_dir=a.out_dir, pool_path=a.pool, live_path=a.live,
    )  # fmt: skip
    print(details["markdown"])


if __name__ == "__main__":
    main()
