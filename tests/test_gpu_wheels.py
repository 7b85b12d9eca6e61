"""`make gpu-wheels` and `make gpu-site` (Makefile, gpu-wheels.txt): the wheels an offline GPU
machine (CPython 3.12, x86-64, torch & co. already there) lacks resolve on PyPI, form a closed
set with what the image has, stay under the device tool's 64 MiB, and install from the folder
alone. The downloads are kept in pytest's cache, so a rerun only checks them."""

from __future__ import annotations

import email.parser
import os
import re
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "gpu-wheels.txt"
LIMIT = 64 * 2**20
# the GPU machine: what wheel markers see there
TARGET_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": "",
}  # fmt: skip


def listed() -> dict[str, str]:
    """gpu-wheels.txt: canonical name -> pinned version."""
    pins = {}
    for line in LIST.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            found = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.]+)", line)
            assert found, f"gpu-wheels.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(found.group(1))] = found.group(2)
    return pins


def on_image() -> set[str]:
    line = next(x for x in LIST.read_text().splitlines() if x.startswith("# image:"))
    return {canonicalize_name(n) for n in line.split(":", 1)[1].split()}


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", f"PYTHON={sys.executable}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_list_covers_the_runtime_dependencies_the_image_lacks():
    pins, image = listed(), on_image()
    assert not pins.keys() & image, "listed and on the image"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        assert name in pins or name in image, f"{dep} is neither on the image nor listed"
        if name in pins:
            assert dep.specifier.contains(pins[name]), f"{dep}: pinned {pins[name]}"


@pytest.fixture(scope="module")
def wheels(request) -> Path:
    """`make gpu-wheels` into pytest's cache (skipped only when PyPI cannot be reached)."""
    folder = request.config.cache.mkdir("gpu-wheels")
    r = make("gpu-wheels", f"GPU_WHEELS={folder}")
    if r.returncode != 0:
        try:
            urllib.request.urlopen("https://pypi.org/simple/optuna/", timeout=15).close()
        except OSError as e:
            pytest.skip(f"PyPI unreachable: {e}")
        pytest.fail(f"make gpu-wheels failed:\n{r.stdout}\n{r.stderr}")
    return folder


def test_wheels_resolve_closed_and_small(wheels):
    pins, image = listed(), on_image()
    # a wheel of an old pin (the list changed) stays in the folder but is not the one installed
    found = {}
    for whl in wheels.glob("*.whl"):
        name, version, _, tags = parse_wheel_filename(whl.name)
        if pins.get(name) == str(version):
            found[name] = whl
            assert any(
                t.interpreter in ("py3", "cp312", "cp310", "cp311", "cp39", "cp38")
                and t.abi in ("none", "cp312", "abi3")
                and (t.platform == "any" or t.platform.endswith("x86_64"))
                for t in tags
            ), whl.name
    assert found.keys() == pins.keys(), sorted(pins.keys() - found.keys())
    total = sum(w.stat().st_size for w in found.values())
    assert total < LIMIT, f"{total / 2**20:.1f} MiB"
    # closed: everything a listed wheel needs on the GPU machine is listed or on the image
    for name, whl in found.items():
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            headers = email.parser.Parser().parsestr(z.read(meta).decode())
        for req in map(Requirement, headers.get_all("Requires-Dist") or []):
            if req.marker and not req.marker.evaluate(TARGET_ENV):
                continue
            dep = canonicalize_name(req.name)
            assert dep in pins or dep in image, f"{name} needs {req}: not listed, not on the image"
            if dep in pins:
                assert req.specifier.contains(pins[dep], prereleases=True), f"{name}: {req}"


def test_offline_install_from_the_folder_alone(wheels, tmp_path):
    """`make gpu-site`: pip with no index and no configuration (--isolated) installs every
    listed wheel from the folder into a scratch target, for CPython 3.12 whatever runs here."""
    site = tmp_path / "site"
    env_free = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    r = subprocess.run(
        ["make", "--no-print-directory", f"PYTHON={sys.executable}", "gpu-site",
         f"GPU_WHEELS={wheels}", f"GPU_SITE={site}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env_free,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    stems = [p.name.removesuffix(".dist-info").rsplit("-", 1) for p in site.glob("*.dist-info")]
    installed = {canonicalize_name(name): version for name, version in stems}
    assert installed == listed()
    assert (site / "optuna" / "__init__.py").exists() and (site / "sqlalchemy").is_dir()
