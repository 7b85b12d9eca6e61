"""docker/compose.yaml: valid for `docker compose config` (where the client has compose), and
the proxy, worker and dashboard run exactly the commands the documentation shows."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
# The docs show these commands; keep them identical to the images' commands.
WORKER_COMMAND = "cnnopt run studies/fashion_cnn_bn.py --workers 1 --storage grpcs://proxy:13000"
DASHBOARD_COMMAND = "cnnopt dashboard --host 0.0.0.0 --storage grpcs://proxy:13000"
PROXY_COMMAND = (
    "cnnopt storage proxy --host 0.0.0.0 --port 13000 "
    "--tls-cert /app/certs/proxy.pem --tls-key /app/certs/proxy.key --token-file /app/certs/token "
    "--storage postgresql+psycopg2://cnnopt:cnnopt@postgres:5432/cnnopt"
)
CERTS_COMMAND = (
    "cnnopt storage proxy-certs /app/certs --host proxy --host localhost --host 127.0.0.1"
)


def test_compose_services_and_commands():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) >= {"postgres", "proxy", "worker", "dashboard"}
    assert services["worker"]["command"] == WORKER_COMMAND
    assert services["dashboard"]["command"] == DASHBOARD_COMMAND
    assert services["proxy"]["command"] == PROXY_COMMAND
    # workers and dashboard wait for the proxy, which waits for the database
    for name in ("worker", "dashboard"):
        assert services[name]["depends_on"]["proxy"]["condition"] == "service_healthy"
    assert services["proxy"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["proxy"]
    assert "pgdata" in spec["volumes"]
    # workers and dashboard share the artifact folder (the default storage/artifacts/<study>)
    for name in ("worker", "dashboard"):
        assert "artifacts:/app/storage/artifacts" in services[name]["volumes"]
    assert "healthcheck" in services["postgres"]
    assert "ports" not in services["worker"]  # scalable: --scale worker=4
    assert services["worker"]["environment"]["CNNOPT_DATA_DIR"] == "/data"


def test_compose_proxy_uses_tls_and_a_token():
    """The proxy listens on 0.0.0.0, so it must have TLS and a token (cnnopt refuses otherwise):
    a one-shot service writes them into a volume the others mount read-only, and the clients
    find the CA and the token through the environment."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["proxy-certs"]["command"] == CERTS_COMMAND
    assert services["proxy-certs"]["volumes"] == ["proxy-certs:/app/certs"]
    assert services["proxy"]["depends_on"]["proxy-certs"]["condition"] == (
        "service_completed_successfully"
    )
    for name in ("proxy", "worker", "dashboard"):
        assert "proxy-certs:/app/certs:ro" in services[name]["volumes"]
        env = services[name]["environment"]
        assert env["CNNOPT_PROXY_CA"] == "/app/certs/ca.pem"
        assert env["CNNOPT_PROXY_TOKEN_FILE"] == "/app/certs/token"
        assert "CNNOPT_PROXY_TOKEN" not in env  # the token itself is never in the compose file
    # every name a client uses for the proxy is in its certificate
    assert all(f"--host {h}" in CERTS_COMMAND for h in ("proxy", "localhost"))


def test_image_has_chromium_for_png_curves_where_the_base_offers_it():
    """kaleido needs a Chromium for the PNG curves; a base without the package (Ubuntu's snap
    stub) must still build, so the install may fail but never fails the build."""
    text = DOCKERFILE.read_text()
    install = next(line for line in text.splitlines() if "apt-get install" in line)
    assert "chromium" in install.split()
    assert "|| echo" in text.split("apt-get install", 1)[1].split("WORKDIR", 1)[0]
    assert text.index("chromium") < text.index("USER cnnopt")  # apt needs root


def _compose() -> list[str] | None:
    if shutil.which("docker"):
        ok = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if ok.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_is_valid():
    compose = _compose()
    if compose is None:
        pytest.skip("no docker compose client on this machine")
    out = subprocess.run(
        [*compose, "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    commands = (
        ("worker", WORKER_COMMAND), ("dashboard", DASHBOARD_COMMAND), ("proxy", PROXY_COMMAND)
    )  # fmt: skip
    for name, expected in commands:
        command = services[name]["command"]  # compose v2 gives a list, v1 the string
        assert (command if isinstance(command, str) else " ".join(command)) == expected
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"


def test_readme_shows_the_images_commands():
    """In the README or its docs pages (docs/storage-proxy.md walks through the compose stack)."""
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))])
    assert f"`{WORKER_COMMAND}`" in readme
    assert f"`{DASHBOARD_COMMAND}`" in readme
    assert f"`{PROXY_COMMAND}`" in readme
