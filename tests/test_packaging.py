"""What `pip install .` puts on a worker: the cnnopt package, not the search research. The built
wheel holds no benchmark tables, result pages or benchmarks/ modules, and nothing in cnnopt/
imports benchmarks/ (which an installed cnnopt does not have)."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_package_and_no_benchmarks(tmp_path):
    # build from a copy of what the wheel can take from (pyproject, README, the package) plus
    # benchmarks/, so that the build leaves no build/ or egg-info behind in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("cnnopt", "benchmarks"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    # offline with the environment's own setuptools where it has one (a venv made by Python
    # 3.12+ may not): else pip fetches the build backend pyproject.toml names, as `pip install .`
    local = importlib.util.find_spec("setuptools") is not None
    offline = ["--no-build-isolation", "--no-index"] if local else []
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "--quiet",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("cnnopt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cnnopt/cli/__init__.py" in names and "cnnopt/bench/common.py" in names
    assert "cnnopt/bench/search.py" in names  # the section that finds benchmarks/ in a checkout
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"cnnopt", next(t for t in tops if t.endswith(".dist-info"))}, tops
    research = [n for n in names if n.endswith((".json", ".html", ".md")) or "tables/" in n]
    assert research == [], research


def test_nothing_in_the_package_imports_benchmarks():
    offenders = []
    for path in sorted((ROOT / "cnnopt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
                mods = [a.value for a in node.args if isinstance(a, ast.Constant)]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in mods
                          if m == "benchmarks" or m.startswith("benchmarks.")]  # fmt: skip
    assert offenders == []
