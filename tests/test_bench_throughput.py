"""The bench's throughput section: precision follows training's own rule (train.amp_dtype)."""

from __future__ import annotations

import torch

import cnnopt.train
from cnnopt.bench.common import TINY, BenchOptions
from cnnopt.bench.throughput import bench_throughput, no_bf16_reason


def test_without_native_bf16_the_bench_times_no_bf16_variant_as_training_uses_none(
    monkeypatch, tmp_path
):
    # The one thing that cannot be had here is a CPU without native bf16: that is mocked, and the
    # bench and training must both conclude the same from it.
    monkeypatch.setattr(cnnopt.train, "cpu_has_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert cnnopt.train.amp_dtype(cnnopt.train.TrainConfig(amp="auto"), cpu) is None
    opts = BenchOptions(plan=TINY, dataset="synthetic", threads=1)
    rows = {r.name: r for r in bench_throughput(opts, tmp_path, cpu)}
    bf16 = rows["cnnopt: + bf16 autocast"]
    assert bf16.value is None and bf16.note == f"skipped: {no_bf16_reason(cpu)}"
    assert rows["val accuracy, bf16 autocast"].value is None
    # the default marker lands on what amp=auto picks here: fp32 with channels_last
    assert "cnnopt: + channels_last  [cnnopt default]" in rows
    assert rows["cnnopt: + channels_last  [cnnopt default]"].extra["amp"] == "None"


def test_the_skip_reason_names_the_device_kind():
    assert "compute capability < 8.0" in no_bf16_reason(torch.device("cuda"))
    assert "AVX512-BF16" in no_bf16_reason(torch.device("cpu"))
