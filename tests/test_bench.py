"""`cnnopt bench` as a whole: the section registry and a smoke run of every section on tiny
synthetic data (no timing assertions)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from cnnopt.bench import SECTIONS, section_function
from cnnopt.bench.common import TINY, BenchOptions, Row
from cnnopt.cli import cli

KEYS = ("machine", "throughput_ratio", "search_default", "search_best_val_diff_vs_random",
        "search_best_val_diff_vs_ray_asha", "search_best_val_diff_vs_ray_tpe_asha")  # fmt: skip


@pytest.mark.slow  # spawns worker processes: ~30 s on a busy 2-core CPU
def test_bench_runs_on_tiny_data_and_writes_every_row_with_a_baseline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    result = CliRunner().invoke(
        cli,
        ["bench", "--plan", "tiny", "--dataset", "synthetic", "--threads", "1",
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
    assert {r["section"] for r in rows} == {"throughput", "search", "scaling", "gpu"}
    for r in rows:
        assert r["baseline"], r  # every measurement names its baseline
        assert "baseline_value" in r
        assert not r["note"].startswith("failed"), r
    # the three measured sections produced numbers, not just skip rows
    for section in ("throughput", "search", "scaling"):
        assert any(r["value"] is not None for r in rows if r["section"] == section), section
    assert isinstance(report["throughput_ratio"], float)
    # the scaling section times identical trials that really train: with deduplication on they
    # would be copies of the first, milliseconds each, and storage calls nearly all of "one
    # trial" (the bound is loose: on a loaded machine storage calls slow down more than training)
    journal = next(r for r in rows if r["name"] == "storage calls per trial, journal")
    assert journal["value"] < 0.9 * journal["baseline_value"], journal
    # the search section replays the committed table with the tiny plan's 2 seeds, no Ray: a
    # smoke run that says so in its rows, the console and the report notes
    # (the live studies' rows read the committed live table, which --quick does not change)
    # (the search section runs this checkout's benchmarks/search as a subprocess: its rows come
    # back; test_search_section_says_when_there_is_no_checkout covers an installed cnnopt)
    search = [r for r in rows if r["section"] == "search" and not r["name"].startswith("live:")]
    assert search and all("SMOKE RUN" in r["note"] for r in search)
    assert "SMOKE RUN" in result.output
    assert report["plan"]["search"]["fresh_seeds"] == [2, 3]
    diff = report["search_best_val_diff_vs_random"]
    assert report["search_default"] == report["plan"]["search"]["chosen"]
    assert diff["n"] == 2 and diff["low"] <= diff["mean"] <= diff["high"]
    assert report["search_best_val_diff_vs_ray_asha"] is None  # Ray not run in the tiny plan
    assert report["search_best_val_diff_vs_ray_tpe_asha"] is None
    # the search files and the anytime figure lie next to the Markdown report
    for name in ("search.md", "search.json", "search.html"):
        assert (tmp_path / name).stat().st_size > 100, name
    text = md.read_text()
    assert "| section |" in text
    assert re.search(r"search_best_val_diff_vs_random [+-]0\.\d{4} \[", text), text
    assert str(tmp_path / "search.html") in text


def test_every_registered_section_resolves_to_a_function_and_the_cli_offers_exactly_them():
    assert list(SECTIONS) == ["throughput", "search", "scaling", "gpu"]  # the order a run uses
    for name in SECTIONS:
        assert callable(section_function(name))
    section_opt = next(p for p in cli.commands["bench"].params if p.name == "sections")
    assert list(section_opt.type.choices) == list(SECTIONS)
    with pytest.raises(ValueError, match="unknown section 'nope'"):
        section_function("nope")


def test_a_registered_section_runs_by_name_and_its_failure_becomes_one_row(monkeypatch, tmp_path):
    """Adding a section is one registry line: run_bench finds it by name and runs it; a section
    that raises gives one 'failed' row and the other sections still run."""
    import cnnopt.bench as bench

    monkeypatch.setitem(SECTIONS, "fake", "tests.test_bench:_fake_section")
    monkeypatch.setitem(SECTIONS, "broken", "tests.test_bench:_broken_section")
    opts = BenchOptions(plan=TINY, dataset="synthetic", sections=("broken", "fake"),
                        workdir=str(tmp_path), threads=3)  # fmt: skip
    before = torch.get_num_threads()
    report = bench.run_bench(opts)
    # the bench ran with its own thread count and gave the caller's back: a study trained after
    # it in the same process reproduces its trials to the digit
    assert report.machine["threads"] == 3 and torch.get_num_threads() == before
    assert [(r.section, r.name) for r in report.rows] == [
        ("broken", "broken section"),
        ("fake", "fake row"),
    ]
    assert report.rows[0].note == "failed: RuntimeError: boom"
    assert report.throughput_ratio == 0.5  # a section may set the report's headline figures
    assert report.rows[1].ratio == 2.0


def _fake_section(opts, ctx):
    assert torch.get_num_threads() == 3
    ctx.report.throughput_ratio = 0.5
    assert ctx.workdir.is_dir() and ctx.device.type == "cpu"
    return [Row("fake", "fake row", 4.0, "images/s", "half", 2.0)]


def _broken_section(opts, ctx):
    raise RuntimeError("boom")


def test_help_names_no_issue_and_importing_the_cli_imports_no_torch():
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    assert "issue" not in result.output.lower()
    assert "search" in result.output  # --section's choices come from the registry
    # the CLI reads the section names from the registry without importing torch (fast --help)
    code = "import sys, cnnopt.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_search_section_says_when_there_is_no_checkout(tmp_path, monkeypatch):
    """An installed cnnopt has no benchmarks/ beside it: one row says so, nothing fails. (With a
    checkout, the section runs its benchmarks: the `cnnopt bench` smoke test above.)"""
    from cnnopt.bench import search
    from cnnopt.bench.common import Context, Report

    opts = BenchOptions(plan=TINY, out_dir=str(tmp_path), log=lambda m: None)
    ctx = Context(workdir=tmp_path, device=torch.device("cpu"), report=Report({}, {}))
    monkeypatch.setattr(search, "checkout_root", lambda: None)
    (row,) = search.run(opts, ctx)
    assert row.value is None and "needs a checkout" in row.note
