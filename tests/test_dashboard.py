"""The dashboard and the HTML report in a real headless browser (Playwright + chromium).

Skipped only where no browser exists (no playwright package or no chromium binary); with
CNNOPT_REQUIRE_BROWSER=1 (CI) that skip is a failure. The browser is Debian's chromium
(apt-get install chromium), or the one named by $CNNOPT_CHROMIUM; `playwright install` is not
needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from cnnopt import artifacts as A
from cnnopt.cli import cli
from cnnopt.dashboard import host_warning, is_loopback, pick_storage
from cnnopt.errors import StorageError
from cnnopt.objective import Objective
from cnnopt.report import FIGURE_KEYS, write_report
from cnnopt.status import load_study

from .conftest import make_study

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str | None:
    for c in (os.environ.get("CNNOPT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if c and Path(c).is_file():
            return c
    return None


@pytest.fixture(scope="module")
def browser():
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
    exe = _chromium()
    if reason is None and exe is None:
        reason = "no chromium binary (apt-get install chromium, or set CNNOPT_CHROMIUM)"
    if reason is not None:
        if os.environ.get("CNNOPT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CNNOPT_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _dashboard(url: str, log: Path):
    """`cnnopt dashboard --storage URL` as a real process; yields its base URL."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cnnopt.cli",
                "dashboard",
                "--storage",
                url,
                "--port",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"dashboard did not start:\n{log.read_text()}")
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dashboard_url(tiny_study, tmp_path_factory):
    _, url = tiny_study
    with _dashboard(url, tmp_path_factory.mktemp("dash") / "dashboard.log") as base:
        yield base


def test_dashboard_lists_the_study_and_shows_intermediate_values(
    browser, dashboard_url, tiny_study
):
    _, url = tiny_study
    ostudy, _ = load_study("tiny", url)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{dashboard_url}/dashboard")
    link = page.get_by_text("tiny", exact=False).first
    link.wait_for(timeout=20_000)
    assert "tiny" in page.inner_text("body")
    link.click()
    # the study page: its intermediate values chart has one trace per trial that reported any
    page.wait_for_selector("#graph-intermediate-values .main-svg", timeout=20_000)
    with_values = [t for t in ostudy.trials if t.intermediate_values]
    page.wait_for_function(
        "n => (document.getElementById('graph-intermediate-values').data || []).length === n",
        arg=len(with_values),
        timeout=20_000,
    )
    # one trial's page: its intermediate values, as stored
    trial = ostudy.trials[2]
    page.goto(f"{dashboard_url}/dashboard/studies/{ostudy._study_id}/trials")
    page.get_by_text(f"Trial {trial.number}", exact=True).first.click()
    page.get_by_text(f"Trial {trial.number} (trial_id=").wait_for(timeout=20_000)
    body = page.inner_text("body")
    assert "Intermediate Values" in body
    for step, value in trial.intermediate_values.items():
        assert repr(value) in body, f"step {step} value {value} not shown"
    assert errors == []
    page.close()


@pytest.fixture(scope="module")
def study_with_artifacts(tmp_path_factory):
    """Two trials of the tiny study with their learning curves (HTML and PNG) uploaded as they
    ran, and a file attached to the first after it finished (as `cnnopt train` does)."""
    folder = tmp_path_factory.mktemp("arts")
    study, url = make_study(folder, "arty", n_trials=0, epochs=2)
    ostudy, _ = load_study("arty", url)
    store = A.open_store(A.study_location(ostudy))
    ostudy.optimize(
        Objective(study, "cpu", artifacts=A.TrialArtifacts(store.location, "val_accuracy")),
        n_trials=2,
    )
    results = folder / "results.json"
    results.write_text('{"test": {"test_accuracy": 0.5}}\n')
    first = ostudy.trials[0]
    A.attach_to_finished(store, ostudy, first._trial_id, results, "final-results.json")
    return ostudy, url, store


def test_dashboard_lists_a_trials_artifacts_and_downloads_them(
    browser, study_with_artifacts, tmp_path
):
    ostudy, url, store = study_with_artifacts
    trial = ostudy.trials[0]
    metas = {m.filename: m for m in A.trial_artifacts(ostudy, trial)}
    png = f"trial-{trial.number}-learning-curve.png"
    if png not in metas:
        pytest.skip("kaleido cannot export PNG here (the HTML is tested in test_artifacts.py)")
    with _dashboard(url, tmp_path / "dashboard.log") as base:
        page = browser.new_page(accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/dashboard/studies/{ostudy._study_id}/trials")
        page.get_by_text(f"Trial {trial.number}", exact=True).first.click()
        page.get_by_text(f"Trial {trial.number} (trial_id=").wait_for(timeout=20_000)
        page.get_by_text("Artifacts", exact=True).first.wait_for(timeout=20_000)
        for name in (png, f"trial-{trial.number}-learning-curve.html", "final-results.json"):
            page.get_by_text(name, exact=True).first.wait_for(timeout=20_000)
        # the PNG is shown inline, served from the store
        img = page.locator(f'img[alt="{png}"]')
        page.wait_for_function(
            "el => el.complete && el.naturalWidth === 900", arg=img.element_handle()
        )
        # and each listed file downloads with its content
        for name in (png, "final-results.json"):
            with page.expect_download() as dl:
                page.locator(f'a[aria-label="download artifact"][download="{name}"]').click()
            got = tmp_path / name
            dl.value.save_as(got)
            assert dl.value.suggested_filename == name
            with store.open_reader(metas[name].artifact_id) as f:
                assert got.read_bytes() == f.read()
        assert errors == []
        page.close()


def test_html_report_opens_without_console_errors_and_has_every_figure(
    browser, tiny_study, tmp_path
):
    _, url = tiny_study
    out, sections = write_report("tiny", tmp_path / "report.html", url)
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    for key in FIGURE_KEYS:
        sel = f"#fig-{key}"
        page.wait_for_selector(f"{sel}.js-plotly-plot .main-svg", timeout=20_000)
        n = page.eval_on_selector(sel, "el => el.data.length")
        assert n >= 1, key
    assert problems == []
    page.close()


# -- without a browser ---------------------------------------------------------------------------


def test_dashboard_picks_the_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNOPT_STORAGE", raising=False)
    with pytest.raises(StorageError, match="no \\*.journal"):
        pick_storage(None)
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "a.journal").write_text("")
    assert pick_storage(None) == "storage/a.journal"
    (tmp_path / "storage" / "b.journal").write_text("")
    with pytest.raises(StorageError, match="a, b"):
        pick_storage(None)
    assert pick_storage(None, "b") == "storage/b.journal"
    assert pick_storage("sqlite:///x.db", "b") == "sqlite:///x.db"


def test_dashboard_warns_off_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert host_warning("127.0.0.1") is None
    assert "no authentication" in host_warning("0.0.0.0")


def test_dashboard_cli_with_missing_storage_fails_cleanly(tmp_path):
    r = CliRunner().invoke(cli, ["dashboard", "--storage", str(tmp_path / "none.journal")])
    assert isinstance(r.exception, StorageError)
    assert not (tmp_path / "none.journal").exists()
