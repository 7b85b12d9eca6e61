"""Bench section ``gpu`` (CUDA only): k workers sharing one GPU, and worker placement over GPUs.

What each row means:

- **images/s of k workers** is the images all k trained inside ONE common wall-clock window, over
  the window's length. Every worker loads its data and warms up first, then all wait on a barrier,
  the first through it sets a start time slightly ahead, and every worker trains from that start
  until its current step ends after the window's end: so all k train during the whole window. A
  step that straddles an edge counts its share of images pro rata. (Summing per-worker rates over
  unaligned windows overstates the aggregate: a worker alone on the GPU for a while runs faster.)
- **peak memory per worker** is what the process holds on the GPU at its peak: the caching
  allocator's peak reservation (``torch.cuda.max_memory_reserved``, not just the allocated part)
  plus the CUDA context and what else the process holds outside the allocator (cuDNN/cuBLAS
  handles, loaded kernels). That second part is read from NVML's per-process used memory where
  ``nvidia-ml-py`` is installed, else estimated as the growth of the GPU's used memory when one
  more bare context is created (two probe processes, ``torch.cuda.mem_get_info``).
- **placement** compares the runner's placement (``runner.plan_devices``: most free memory first)
  with plain round-robin over the GPUs in index order, by the free memory per worker on the worst
  served GPU. It can only differ with more than one GPU; on one GPU the row says so.

The parent process itself never creates a CUDA context here: free memory and the placement are
read in a short child process, so the figures are the workers' own.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import torch

from cnnopt.bench.common import BenchOptions, Context, Plan, Row, base_cfg, r2_model_flat

STEP_BATCHES = 10  # batches per timed step: each step ends with a synchronize, so keep it short
MIB = 2**20


def run(opts: BenchOptions, ctx: Context) -> list[Row]:
    return bench_gpu(opts, ctx.device)


# -- measured in the workers ---------------------------------------------------------------------


def images_in_window(steps: list[tuple[float, float, int]], start: float, end: float) -> float:
    """Images trained inside [start, end], from (step start, step end, images) of one worker; a
    step partly inside counts the part of its images that its time inside is of its duration."""
    total = 0.0
    for s0, s1, n in steps:
        inside = min(s1, end) - max(s0, start)
        if inside <= 0:
            continue
        total += n * (inside / (s1 - s0) if s1 > s0 else 1.0)
    return total


def nvml_process_used_mib(device: torch.device) -> float | None:
    """GPU memory NVML says this process uses on ``device`` (None where NVML or the per-process
    figure is unavailable: no nvidia-ml-py, or a container that hides the process ids)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda._get_nvml_device_index(device))
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if p.pid == os.getpid() and p.usedGpuMemory:
                    return p.usedGpuMemory / MIB
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - any NVML failure: fall back to the probe's estimate
        return None
    return None


def _gpu_worker(
    plan: Plan, dataset: str, data_dir: str | None, device: str, barrier, start_at, queue,
    profile: bool,
) -> None:  # fmt: skip
    """One of k processes training R2's model on one GPU at once (spawned; CUDA only)."""
    from cnnopt.bench.throughput import CnnoptStep

    opts = BenchOptions(plan=plan, dataset=dataset, data_dir=data_dir)
    try:
        from cnnopt.data import load_split

        dev = torch.device(device)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        base = base_cfg(opts, **r2_model_flat(), batch_size=128, lr=1e-3)
        ds, split = load_split(base.data, dev)
        cfg = base.replace(
            in_channels=ds.in_channels, input_size=ds.image_size, num_classes=ds.num_classes
        )
        step = CnnoptStep("gpu", cfg, split, dev, compile_=False)
        n = split.x_train.shape[0]
        chunk = torch.arange(min(n, STEP_BATCHES * cfg.train.batch_size))
        step.warmup()
        step.train(chunk)  # untimed: cudnn.benchmark picks its algorithms for every batch shape
        torch.cuda.reset_peak_memory_stats(dev)
        # One common window: the first worker through the barrier sets the start a little ahead,
        # the second wait makes every worker see it. CLOCK_MONOTONIC is one clock machine-wide.
        if barrier.wait(timeout=600) == 0:
            start_at.value = time.monotonic() + 0.2
        barrier.wait(timeout=600)
        start = start_at.value
        end = start + plan.gpu_window_s
        time.sleep(max(0.0, start - time.monotonic()))
        steps: list[tuple[float, float, int]] = []
        while True:  # train until this worker's step ends past the window: all k train all of it
            t0 = time.monotonic()
            step.train(chunk)  # ends with a synchronize
            t1 = time.monotonic()
            steps.append((t0, t1, len(chunk)))
            if t1 >= end:
                break
        used = nvml_process_used_mib(dev)
        reserved_now = torch.cuda.memory_reserved(dev) / MIB
        out: dict[str, Any] = {
            "images_in_window": images_in_window(steps, start, end),
            "window_s": plan.gpu_window_s,
            "start": start,
            "first_step_start": steps[0][0],
            "last_step_end": steps[-1][1],
            "steps": len(steps),
            "peak_allocated_mib": torch.cuda.max_memory_allocated(dev) / MIB,
            "peak_reserved_mib": torch.cuda.max_memory_reserved(dev) / MIB,
            # outside the allocator: the context, library handles, loaded kernels
            "context_mib": used - reserved_now if used is not None else None,
            "amp": str(step.amp),
        }
        if profile:
            out["kernel_share"] = _kernel_time_share(step, chunk)
        queue.put(out)
    except Exception as e:  # noqa: BLE001 - report, never hang the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})
        barrier.abort()  # the other workers stop waiting for this one


def _kernel_time_share(step, chunk: torch.Tensor) -> float | None:
    """Share of wall time the GPU spends in kernels while training: is the GPU kept busy?"""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        seconds = step.train(chunk)
    busy_us = 0.0
    for evt in prof.key_averages():
        if getattr(evt, "device_type", None) is not None and "CUDA" in str(evt.device_type):
            busy_us += getattr(evt, "self_device_time_total", 0.0)
    if not busy_us:  # older event fields
        busy_us = sum(
            getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
            for e in prof.key_averages()
        )
    return busy_us / 1e6 / seconds if seconds else None


# -- measured in short child processes (the parent holds no CUDA context) ------------------------


def _context_probe(device: str, hold, queue) -> None:
    try:
        dev = torch.device(device)
        torch.cuda.set_device(dev)
        torch.zeros(1, device=dev)  # creates the context (and one small allocator segment)
        free, total = torch.cuda.mem_get_info(dev)
        queue.put({"used": (total - free) / MIB, "reserved": torch.cuda.memory_reserved(dev) / MIB})
        hold.wait(120)
    except Exception as e:  # noqa: BLE001
        queue.put({"error": f"{type(e).__name__}: {e}"})


def context_mib_by_probe(device: str) -> float | None:
    """The GPU memory one bare CUDA context takes: the device's used memory with one probe process
    holding a context, then with a second one too; the difference less the second's allocator."""
    ctx = mp.get_context("spawn")
    hold, queue = ctx.Event(), ctx.Queue()
    procs = []
    outs = []
    try:
        for _ in range(2):
            p = ctx.Process(target=_context_probe, args=(device, hold, queue))
            p.start()
            procs.append(p)
            outs.append(
                queue.get(timeout=300)
            )  # the first holds its context while the second starts
            if "error" in outs[-1]:
                return None
    finally:
        hold.set()
        for p in procs:
            p.join(timeout=60)
    return outs[1]["used"] - outs[0]["used"] - outs[1]["reserved"]


def _placement_probe(n_workers: int, queue) -> None:
    try:
        from cnnopt.runner import plan_devices

        free = {i: torch.cuda.mem_get_info(i)[0] / 2**30 for i in range(torch.cuda.device_count())}
        queue.put({"free_gib": free, "planned": plan_devices("cuda", n_workers)})
    except Exception as e:  # noqa: BLE001
        queue.put({"error": f"{type(e).__name__}: {e}"})


def worst_free_per_worker(placement: list[str], free_gib: dict[int, float]) -> float:
    """Free memory per worker on the GPU that serves its workers worst (GiB)."""
    counts: dict[int, int] = {}
    for d in placement:
        i = int(d.split(":", 1)[1])
        counts[i] = counts.get(i, 0) + 1
    return min(free_gib[i] / c for i, c in counts.items())


def placement_row(n_workers: int, free_gib: dict[int, float], planned: list[str]) -> Row:
    """The runner's placement against round-robin in index order, from one free-memory reading."""
    ids = sorted(free_gib)
    robin = [f"cuda:{ids[i % len(ids)]}" for i in range(n_workers)]
    name = f"placement of {n_workers} worker(s): free memory per worker on the worst-served GPU"
    extra = {"free_gib": free_gib, "planned": planned, "round_robin": robin}
    if len(ids) < 2:
        return Row(
            "gpu", name, None, "GiB", "round-robin over GPUs in index order", None, better="higher",
            note=f"one GPU: every placement puts all {n_workers} workers on cuda:{ids[0]}; the "
            "comparison needs more than one GPU", extra=extra,
        )  # fmt: skip
    value = worst_free_per_worker(planned, free_gib)
    note = f"runner.plan_devices: {planned}; round-robin: {robin}"
    if sorted(planned) == sorted(robin):
        note += "; the same GPUs get the same number of workers here"
    return Row("gpu", name, value, "GiB", "round-robin over GPUs in index order",
               worst_free_per_worker(robin, free_gib), note=note, extra=extra)  # fmt: skip


# -- the section ---------------------------------------------------------------------------------


def _run_workers(opts: BenchOptions, dev: str, k: int) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    queue, barrier, start_at = ctx.Queue(), ctx.Barrier(k), ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=_gpu_worker,
            args=(
                opts.plan,
                opts.dataset,
                opts.data_dir,
                dev,
                barrier,
                start_at,
                queue,
                k == 1 and i == 0,
            ),
        )  # fmt: skip
        for i in range(k)
    ]
    for p in procs:
        p.start()
    outs = [queue.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    return outs


def summarise(k: int, dev: str, outs: list[dict[str, Any]], baseline: float | None,
              context_probe_mib: float | None) -> Row:  # fmt: skip
    """The row of k workers from what each reported: aggregate images/s over the common window,
    peak memory per worker with the allocator's reservation and the context."""
    window = outs[0]["window_s"]
    total = sum(o["images_in_window"] for o in outs) / window
    skew = max(o["first_step_start"] for o in outs) - min(o["start"] for o in outs)
    peaks = []
    for o in outs:
        context = o["context_mib"] if o["context_mib"] is not None else context_probe_mib
        o["context_source"] = "nvml" if o["context_mib"] is not None else "probe"
        o["peak_total_mib"] = o["peak_reserved_mib"] + (context or 0.0)
        peaks.append(
            (o["peak_total_mib"], o["peak_reserved_mib"], o["peak_allocated_mib"], context)
        )
    peak, reserved, allocated, context = max(peaks)
    how = "NVML" if outs[0]["context_source"] == "nvml" else "probe of a bare context"
    note = (
        f"{window:g} s window in which all {k} train (start skew {skew * 1000:.0f} ms); peak "
        f"memory per worker {peak:.0f} MiB = allocator reserved {reserved:.0f} "
        + (f"+ CUDA context and libraries {context:.0f} ({how})" if context is not None
           else "+ CUDA context (not measured)")
        + f"; allocated peak {allocated:.0f} MiB; amp {outs[0]['amp']}"
    )  # fmt: skip
    if outs[0].get("kernel_share") is not None:
        note += f"; GPU kernel time {outs[0]['kernel_share']:.0%} of wall (1 worker)"
    return Row(
        "gpu", f"{k} worker(s) sharing {dev}", total, "images/s",
        "1 worker" if k > 1 else "itself (baseline)", baseline, note=note,
        extra={"workers": outs, "peak_mib_per_worker": peak, "window_s": window},
    )  # fmt: skip


def bench_gpu(opts: BenchOptions, device: torch.device) -> list[Row]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return [
            Row("gpu", "GPU packing: workers sharing one GPU", None, "images/s",
                "1 worker on the GPU", None, note="skipped: no CUDA device")
        ]  # fmt: skip
    dev = f"cuda:{device.index or 0}"
    context_probe = context_mib_by_probe(dev)
    rows: list[Row] = []
    totals: dict[int, float] = {}
    k = 1
    while k <= opts.plan.gpu_max_workers:
        opts.log(f"gpu: {k} worker(s) on {dev}, {opts.plan.gpu_window_s:g} s window")
        outs = _run_workers(opts, dev, k)
        # the worker that failed first, not the others it released from the barrier
        errors = sorted((o["error"] for o in outs if "error" in o), key=lambda e: "Barrier" in e)
        if errors:
            rows.append(Row("gpu", f"{k} workers on {dev}", None, "images/s", "1 worker",
                            totals.get(1), note=f"failed: {errors[0]}"))  # fmt: skip
            break
        row = summarise(k, dev, outs, totals.get(1), context_probe)
        totals[k] = row.value  # type: ignore[assignment]
        rows.append(row)
        if k > 1 and totals[k] < 1.05 * totals[k // 2]:
            row.note += f"; throughput stopped rising: {k // 2} workers fill this GPU"
            break
        k *= 2
    n_workers = max(totals) if totals else 1
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_placement_probe, args=(n_workers, queue))
    p.start()
    probe = queue.get(timeout=300)
    p.join()
    if "error" in probe:
        rows.append(Row("gpu", "placement", None, "GiB", "round-robin over GPUs in index order",
                        None, note=f"failed: {probe['error']}"))  # fmt: skip
    else:
        rows.append(placement_row(n_workers, probe["free_gib"], probe["planned"]))
    return rows
