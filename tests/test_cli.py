"""The CLI edge: one line per user error, exit code 2, no traceback; commands dispatch."""

import subprocess

from .conftest import ROOT, cnnopt_cmd
from .test_studies import sign_csvs


def cli(*args):
    return subprocess.run(cnnopt_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("run", "status", "export", "train", "predict", "report", "dashboard", "data"):
        assert cmd in r.stdout


def test_data_check_reports_dropped_rows(tmp_path):
    sign_csvs(tmp_path)
    r = cli("data", "check", "sign_mnist", "--data-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "24 classes" in r.stdout
    assert "malformed rows dropped (lines 98)" in r.stdout  # R1's corrupt label, by line number
    assert "label 200 not in 0..25" in r.stderr


def test_data_error_is_one_line(tmp_path):
    r = cli("data", "check", "sign_mnist", "--data-dir", str(tmp_path / "none"))
    assert r.returncode == 2
    assert r.stderr.startswith("cnnopt: error:") and r.stderr.count("\n") == 1
    assert "sign_mnist_train.csv" in r.stderr


def test_help_texts_speak_of_the_product_only():
    # product text never names the internal process that produced it (issue numbers and the like)
    from click.testing import CliRunner

    from cnnopt.cli import cli as group

    def walk(cmd, path):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    for path in walk(group, []):
        r = CliRunner().invoke(group, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        assert "issue" not in r.output.lower(), (path, r.output)
