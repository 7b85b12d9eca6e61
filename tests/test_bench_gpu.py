"""The bench's GPU rows, through the functions that decide what they mean (no CUDA here: the
workers' measurements are given as they would report them; device lists and free memory are
mocked for the runner's real placement function)."""

from __future__ import annotations

import pytest
import torch

from cnnopt.bench.common import TINY, BenchOptions
from cnnopt.bench.gpu import bench_gpu, images_in_window, placement_row, summarise


def test_images_are_counted_inside_the_common_window_only_with_edge_steps_pro_rata():
    steps = [(0.0, 1.0, 100), (1.0, 2.0, 100), (2.0, 3.0, 100), (3.0, 4.0, 100)]
    assert images_in_window(steps, 0.5, 2.5) == pytest.approx(50 + 100 + 50)
    assert images_in_window(steps, 4.0, 5.0) == 0.0  # nothing trained in that window


def _worker(images: float, context: float | None, reserved: float = 500.0) -> dict:
    return {
        "images_in_window": images, "window_s": 2.0, "start": 10.0, "first_step_start": 10.001,
        "last_step_end": 12.1, "steps": 5, "peak_allocated_mib": 300.0,
        "peak_reserved_mib": reserved, "context_mib": context, "amp": "torch.bfloat16",
    }  # fmt: skip


def test_aggregate_is_all_workers_images_over_one_window_and_peak_adds_reserved_and_context():
    outs = [_worker(200.0, 350.0), _worker(100.0, 340.0, reserved=520.0)]
    row = summarise(2, "cuda:0", outs, baseline=120.0, context_probe_mib=None)
    assert row.value == pytest.approx((200 + 100) / 2.0)  # 150 images/s, not a sum of rates
    assert row.ratio == pytest.approx(150 / 120)
    assert row.extra["peak_mib_per_worker"] == pytest.approx(520 + 340)  # reserved + context
    assert "860 MiB = allocator reserved 520 + CUDA context and libraries 340 (NVML)" in row.note
    assert "start skew 1 ms" in row.note


def test_without_nvml_the_context_comes_from_the_probe_and_says_so():
    row = summarise(1, "cuda:0", [_worker(200.0, None)], baseline=None, context_probe_mib=500.0)
    assert row.extra["peak_mib_per_worker"] == pytest.approx(500 + 500)
    assert "(probe of a bare context)" in row.note
    unmeasured = summarise(1, "cuda:0", [_worker(200.0, None)], None, context_probe_mib=None)
    assert "CUDA context (not measured)" in unmeasured.note


def _fake_gpus(monkeypatch, free_gib: dict[int, float]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free_gib))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free_gib[i] * 2**30, 80 * 2**30))
    # the runner reads free memory through NVML (no CUDA context in the parent): fake it there too
    from cnnopt import devices

    free_bytes = [int(free_gib[i] * 2**30) for i in sorted(free_gib)]
    monkeypatch.setattr(devices, "_nvml_free", lambda environ=None: free_bytes)


def test_placement_row_compares_the_runners_placement_with_round_robin(monkeypatch):
    from cnnopt.runner import plan_devices

    free = {0: 10.0, 1: 70.0}  # GPU 0 is mostly taken by something else
    _fake_gpus(monkeypatch, free)
    planned = plan_devices("cuda", 3)
    row = placement_row(3, free, planned)
    # free-memory-aware: two workers on GPU 1 (35 GiB each), one on GPU 0 (10 GiB);
    # round-robin in index order: two on GPU 0 (5 GiB each)
    assert row.value == pytest.approx(10.0)
    assert row.baseline_value == pytest.approx(5.0)
    assert row.ratio == pytest.approx(2.0)
    assert row.extra["round_robin"] == ["cuda:0", "cuda:1", "cuda:0"]


def test_placement_row_on_one_gpu_says_the_comparison_needs_more_than_one():
    row = placement_row(4, {0: 70.0}, ["cuda:0"] * 4)
    assert row.value is None and row.baseline_value is None
    assert row.note.startswith("one GPU: every placement puts all 4 workers on cuda:0")


def test_without_cuda_the_section_is_one_skip_row():
    rows = bench_gpu(BenchOptions(plan=TINY, dataset="synthetic"), torch.device("cpu"))
    assert [(r.section, r.value, r.note) for r in rows] == [
        ("gpu", None, "skipped: no CUDA device")
    ]


def test_workers_meet_then_all_train_through_one_common_window(monkeypatch):
    """The window protocol for real, with two workers as threads on the CPU: only CUDA's own
    calls (set_device, the memory statistics) are stubbed."""
    import dataclasses
    import queue as queue_mod
    import threading
    import types

    from cnnopt.bench import gpu

    for name in ("set_device", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    for name, mib in (("max_memory_allocated", 100), ("max_memory_reserved", 200),
                      ("memory_reserved", 150)):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, lambda *a, _m=mib, **k: _m * 2**20)
    monkeypatch.setattr(gpu, "nvml_process_used_mib", lambda dev: 450.0)
    plan = dataclasses.replace(TINY, gpu_window_s=1.0)
    barrier, start_at, q = threading.Barrier(2), types.SimpleNamespace(value=0.0), queue_mod.Queue()
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    threads = [
        threading.Thread(target=gpu._gpu_worker,
                         args=(plan, "synthetic", None, "cpu", barrier, start_at, q, False))
        for _ in range(2)
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    outs = [q.get_nowait() for _ in threads]
    assert all("error" not in o for o in outs), outs
    for o in outs:
        assert o["start"] == start_at.value  # one start for both
        assert o["first_step_start"] >= o["start"] - 1e-6
        assert o["last_step_end"] >= o["start"] + plan.gpu_window_s  # trained past the end
        assert 0 < o["images_in_window"] <= o["steps"] * gpu.STEP_BATCHES * 128
        assert o["context_mib"] == 450.0 - 150.0  # NVML's figure less the allocator's
    row = summarise(2, "cuda:0", outs, baseline=None, context_probe_mib=None)
    assert row.value == pytest.approx(sum(o["images_in_window"] for o in outs) / 1.0)
    assert row.extra["peak_mib_per_worker"] == 200.0 + 300.0
