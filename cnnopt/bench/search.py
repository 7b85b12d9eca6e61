"""The search section of ``cnnopt bench``, from a checkout of the repository.

The search research (tabulated learning curves, replays, live studies, real Ray Tune, their
statistics and committed tables) lives in ``benchmarks/search/`` at the repository root, beside
the package and not installed with it: a worker does not need 2 MB of result tables. The package
never imports it; this section runs ``python -m benchmarks.search.section --bench-json FILE`` as a
subprocess in the checkout (which imports cnnopt, never the other way round) and turns what it
writes back into the bench's rows, headline fields and notes. From an installed wheel there is
no checkout: the section says so in one row and the other sections run as usual.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnopt.bench.common import BenchOptions, Context, Row

SECTION = "search"
DEFAULT_OUT = Path("runs/bench-search")
NEEDS_CHECKOUT = (
    "the search section needs a checkout of the repository (benchmarks/ beside cnnopt/); "
    "an installed cnnopt has no benchmarks"
)


def checkout_root() -> Path | None:
    """The repository root when cnnopt runs from a checkout that has ``benchmarks/search``
    next to the ``cnnopt`` package, else None (an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "benchmarks" / "search" / "section.py").is_file() else None


def command(opts: BenchOptions, bench_json: Path, out_dir: Path) -> list[str]:
    plan = opts.plan
    cmd = [sys.executable, "-m", "benchmarks.search.section", "--bench-json", str(bench_json),
           "--seeds", str(opts.seeds or plan.search_seeds),
           "--ray-seeds", str(plan.search_ray_seeds), "--out-dir", str(out_dir)]  # fmt: skip
    return cmd + (["--quick"] if plan.search_smoke else [])


def run(opts: BenchOptions, ctx: Context) -> list[Row]:
    """The section as ``cnnopt bench`` calls it. The plan sets the seeds (full: 100 replay seeds
    per set and 30 Ray Tune seeds; --quick and tiny: a smoke run that says so everywhere) and
    ``--seeds`` overrides the replay seeds. search.md, search.json and the anytime figures go to
    ``opts.out_dir`` (the folder of --markdown/--json), resolved against the caller's directory."""
    from cnnopt.bench.common import Row

    root = checkout_root()
    if root is None:
        opts.log(f"search: {NEEDS_CHECKOUT}")
        return [Row(SECTION, "search section", None, "", "n/a", None, note=NEEDS_CHECKOUT)]
    out_dir = Path(opts.out_dir).resolve() if opts.out_dir else DEFAULT_OUT.resolve()
    with tempfile.TemporaryDirectory(prefix="cnnopt-bench-search-") as tmp:
        bench_json = Path(tmp) / "search.json"
        # stdout carries the research's progress lines: passed on as they come
        proc = subprocess.Popen(
            command(opts, bench_json, out_dir), cwd=root, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            opts.log(f"search: {line}")
            tail = (tail + [line])[-5:]
        if proc.wait() or not bench_json.exists():
            last = next((t for t in reversed(tail) if t.strip()), "no output")
            raise RuntimeError(
                f"python -m benchmarks.search.section exited {proc.returncode}: {last}"
            )
        payload = json.loads(bench_json.read_text())
    report = ctx.report
    report.search_default = payload["search_default"]
    report.search_best_val_diff_vs_random = payload["search_best_val_diff_vs_random"]
    report.search_best_val_diff_vs_ray_asha = payload["search_best_val_diff_vs_ray_asha"]
    report.plan["search"] = payload["plan"]
    report.notes.extend(payload["notes"])
    return [Row(**r) for r in payload["rows"]]
