"""`cnnopt bench`: measure cnnopt against the way the reports' authors worked, side by side.

Each section is one module with ``run(opts, ctx) -> list[Row]``; every row is one measurement next
to its baseline:

- ``throughput`` (throughput.py): cnnopt's training step against report R2's training loop.
- ``search`` (search.py; the research itself is ``benchmarks/search/`` of a checkout, run as a
  subprocess): replays of Optuna samplers x pruners x deduplication, and real Ray Tune ASHA, on a
  committed table of R2's grid's learning curves; the best validation accuracy within a 120-epoch
  budget, paired per seed against random search (R2's method) and Ray Tune,
  with 95% bootstrap intervals, plus an anytime-performance figure (search.html).
- ``scaling`` (scaling.py): trials/hour with 1, 2 (and 4) workers; per-trial overhead.
- ``gpu`` (gpu.py): with CUDA only, images/s and memory of k workers sharing one GPU over one
  common time window, and worker placement over several GPUs.

``common.py`` holds what they share (plans, options, rows, the report and its output); ``gpucheck.py``
is ``make gpu-check``. Benchmarks are not tests: nothing here asserts a speed.

This module imports no torch at import time: the CLI reads ``SECTIONS`` for its ``--section``
choices without paying for it.
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnopt.bench.common import BenchOptions, Context, Report, Row

# The sections, in the order a full run measures them: name -> "module:function", a function
# ``(opts: BenchOptions, ctx: Context) -> list[Row]``. To add a section, write its module in this
# package and add ONE line here; `cnnopt bench --section NAME` and the default run pick it up.
SECTIONS: dict[str, str] = {
    "throughput": "cnnopt.bench.throughput:run",
    "search": "cnnopt.bench.search:run",
    "scaling": "cnnopt.bench.scaling:run",
    "gpu": "cnnopt.bench.gpu:run",
}


def section_function(name: str) -> Callable[[BenchOptions, Context], list[Row]]:
    """The registered function of section ``name`` (imported on first use)."""
    try:
        target = SECTIONS[name]
    except KeyError:
        raise ValueError(f"unknown section {name!r} (known: {', '.join(SECTIONS)})") from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def run_bench(opts: BenchOptions) -> Report:
    """Run ``opts.sections`` (default: every registered section) and return the report."""
    import optuna
    import torch

    from cnnopt.bench.common import Context, Report, Row, loadavg, machine_info, n_cores
    from cnnopt.train import resolve_device

    warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if opts.data_dir:
        opts = replace(opts, data_dir=str(Path(opts.data_dir).expanduser().resolve()))
    threads = opts.threads or n_cores()
    # The thread count is process-wide state: restored on return, so a caller that runs the bench
    # in-process (a notebook, a test) keeps its own (bf16 sums on CPU depend on it, so a study run
    # afterwards would no longer reproduce its trials to the digit).
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    device = resolve_device(opts.device)
    t0 = time.perf_counter()
    report = Report(machine=machine_info(), plan={**asdict(opts.plan), "seeds": opts.seeds})
    report.machine["threads"] = threads
    report.machine["device"] = str(device)
    tmp = None
    if opts.workdir is None:
        import tempfile

        tmp = tempfile.TemporaryDirectory(prefix="cnnopt-bench-")
    workdir = Path(opts.workdir or tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(workdir=workdir, device=device, report=report)
    try:
        for section in opts.sections or tuple(SECTIONS):
            opts.log(f"section {section} ...")
            try:
                rows = section_function(section)(opts, ctx)
            except Exception as e:  # noqa: BLE001 - one failing section must not hide the others
                rows = [Row(section, f"{section} section", None, "", "n/a", None,
                            note=f"failed: {type(e).__name__}: {e}")]  # fmt: skip
            report.rows.extend(rows)
    finally:
        torch.set_num_threads(threads_before)
        if tmp is not None:
            tmp.cleanup()
    report.seconds = time.perf_counter() - t0
    report.machine["load_average_end"] = loadavg()
    loads = [x[0] for x in (report.machine["load_average_start"], loadavg()) if x]
    if loads and max(loads) > 0.75 * report.machine["cores"] + threads:
        report.notes.append(
            f"the machine was busy (1-minute load average up to {max(loads):.1f} on "
            f"{report.machine['cores']} cores): wall-clock figures are noisy; compare the "
            "CPU-time figures in the notes, or re-run on a quiet machine"
        )
    return report
