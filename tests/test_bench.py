"""Smoke test of `cnnopt bench`: the whole suite on tiny synthetic data. No timing assertions."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cnnopt.cli import cli

KEYS = ("machine", "throughput_ratio", "epochs_to_target_ratio", "epochs_to_target_ratio_vs_asha")


@pytest.mark.slow  # spawns worker processes: ~30 s on a busy 2-core CPU
def test_bench_runs_on_tiny_data_and_writes_every_row_with_a_baseline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    result = CliRunner().invoke(
        cli,
        ["bench", "--plan", "tiny", "--dataset", "synthetic", "--seeds", "1", "--threads", "1",
         "--json", str(out), "--markdown", str(md)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in (*KEYS, "rows"):
        assert key in report
    machine = report["machine"]
    for key in ("cpu", "cores", "torch", "bf16", "gpu"):
        assert key in machine
    rows = report["rows"]
    assert {r["section"] for r in rows} == {"throughput", "study", "scaling", "gpu"}
    for r in rows:
        assert r["baseline"], r  # every measurement names its baseline
        assert "baseline_value" in r
        assert not r["note"].startswith("failed"), r
    # the three measured sections produced numbers, not just skip rows
    for section in ("throughput", "study", "scaling"):
        assert any(r["value"] is not None for r in rows if r["section"] == section), section
    assert isinstance(report["throughput_ratio"], float)
    assert isinstance(report["epochs_to_target_ratio"], float)
    assert isinstance(report["epochs_to_target_ratio_vs_asha"], float)
    assert "| section |" in md.read_text()


def test_study_epochs_are_counted_until_the_cap_when_the_target_is_out_of_reach():
    import dataclasses

    import torch

    from cnnopt.bench import STUDY_VARIANTS, TINY, BenchOptions, run_study_to_target

    plan = dataclasses.replace(TINY, study_target=1.01, study_cap=3)
    opts = BenchOptions(plan=plan, dataset="synthetic")
    variant = STUDY_VARIANTS["random search, no pruning"]
    r = run_study_to_target(opts, variant, seed=0, device=torch.device("cpu"))
    assert not r["reached"]
    assert r["epochs"] == r["counted_by_callback"] == 3  # 2 epochs of trial 0, 1 of trial 1
    assert r["trials"] == 2
