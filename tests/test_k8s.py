"""docker/k8s/: the cluster manifests parse, every command they run is a valid `cnnopt` command
line (parsed by cnnopt's own click CLI, with the container's environment), and they wire the
proxy the way cnnopt requires: TLS and a token beyond loopback, clients with only the CA and the
token, every runner through the proxy's Service. docker/compose.yaml's commands get the same
command-line check."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest
import yaml

from cnnopt.cli import cli
from cnnopt.proxy import check_exposure
from cnnopt.storage import parse_proxy_url

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "docker" / "k8s"
WORKLOADS = ("Deployment", "Job", "StatefulSet")


def documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc and {"apiVersion", "kind", "metadata"} <= doc.keys(), path.name
            docs.append(doc)
    return docs


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == kind}


def containers() -> list[tuple[str, dict, dict]]:
    """(workload name, container, pod spec) of every workload."""
    out = []
    for d in documents():
        if d["kind"] in WORKLOADS:
            pod = d["spec"]["template"]["spec"]
            out += [(d["metadata"]["name"], c, pod) for c in pod["containers"]]
    return out


def parse_cnnopt(argv: list[str], env: dict[str, str], monkeypatch) -> tuple[list[str], dict]:
    """The subcommand path and parameters click gets from ``argv`` (after ``cnnopt``), with the
    container's environment (envvar options): raises click.UsageError for a bad command line."""
    for name in ("CNNOPT_STORAGE", "CNNOPT_PROXY_TOKEN_FILE", "CNNOPT_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = cli.make_context("cnnopt", list(argv))
    cmd, names = cli, []
    while isinstance(cmd, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, rest = cmd.resolve_command(ctx, rest)
        names.append(name)
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
    return names, ctx.params


def container_env(c: dict) -> dict[str, str]:
    """The container's variables; one from a secret gets a stand-in value."""
    return {e["name"]: e.get("value", f"<secret {e['name']}>") for e in c.get("env", [])}


def test_manifests_parse_and_hold_the_cluster():
    kinds = sorted({d["kind"] for d in documents()})
    assert kinds == ["Deployment", "Job", "Service", "StatefulSet"]
    assert set(by_kind("Deployment")) == {"cnnopt-proxy", "cnnopt-dashboard"}
    job = by_kind("Job")["cnnopt-runners"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] >= 2
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # a dead pod is a new pod
    assert "cnnopt-postgres" in by_kind("StatefulSet")
    # each Service selects pods that exist, on a port they name
    pods = {
        (d["metadata"]["name"], tuple(sorted(d["spec"]["template"]["metadata"]["labels"].items())))
        for d in documents()
        if d["kind"] in WORKLOADS
    }
    for svc in by_kind("Service").values():
        selector = svc["spec"]["selector"].items()
        assert any(set(selector) <= set(labels) for _, labels in pods), svc["metadata"]["name"]
    # every mounted volume is declared
    for name, c, pod in containers():
        declared = {v["name"] for v in pod.get("volumes", [])}
        declared |= {
            t["metadata"]["name"]
            for d in documents()
            if d["kind"] == "StatefulSet"
            for t in d["spec"].get("volumeClaimTemplates", [])
        }
        for m in c.get("volumeMounts", []):
            assert m["name"] in declared, (name, m["name"])


@pytest.mark.parametrize("workload", ["cnnopt-proxy", "cnnopt-runners", "cnnopt-dashboard"])
def test_every_cnnopt_command_is_a_valid_command_line(workload, monkeypatch):
    found = [(c, pod) for name, c, pod in containers() if name == workload]
    assert found
    for c, _ in found:
        assert c["command"][0] == "cnnopt", c["command"]
        names, params = parse_cnnopt(c["command"][1:], container_env(c), monkeypatch)
        assert names[-1] in ("proxy", "run", "dashboard"), names


def test_the_proxy_has_tls_and_a_token_and_the_clients_reach_it(monkeypatch):
    (proxy,) = [c for name, c, _ in containers() if name == "cnnopt-proxy"]
    _, p = parse_cnnopt(proxy["command"][1:], container_env(proxy), monkeypatch)
    # the CLI's own rule: on 0.0.0.0 only with TLS and a token
    check_exposure(p["host"], p["port"], tls=bool(p["tls_cert"]), token=bool(p["token_file"]), insecure=p["insecure"])  # fmt: skip
    assert p["tls_key"] and not p["insecure"]
    assert p["storage"].startswith("<secret")  # the database URL (a password) from a Secret
    service = by_kind("Service")["cnnopt-proxy"]
    assert service["spec"]["ports"][0]["port"] == p["port"]
    proxy_pod = next(pod for name, _, pod in containers() if name == "cnnopt-proxy")
    assert {v["secret"]["secretName"] for v in proxy_pod["volumes"]} == {"cnnopt-proxy-tls"}
    for workload in ("cnnopt-runners", "cnnopt-dashboard"):
        (c, pod) = [(c, pod) for name, c, pod in containers() if name == workload][0]
        env = container_env(c)
        _, params = parse_cnnopt(c["command"][1:], env, monkeypatch)
        url = params["storage"]
        assert url.startswith("grpcs://"), url
        assert parse_proxy_url(url) == ("cnnopt-proxy", p["port"])  # the Service's name
        assert env["CNNOPT_PROXY_CA"].startswith("/app/certs/")
        assert env["CNNOPT_PROXY_TOKEN_FILE"].startswith("/app/certs/")
        assert "CNNOPT_PROXY_TOKEN" not in env  # never the token itself in a manifest
        # clients get the CA and the token, never the proxy's private key
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secrets == {"cnnopt-proxy-client"}, secrets


def test_compose_commands_are_valid_command_lines(monkeypatch):
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    for name, svc in services.items():
        command = svc.get("command")
        if not command or not str(command).startswith("cnnopt"):
            continue
        argv = shlex.split(command) if isinstance(command, str) else command
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        names, _ = parse_cnnopt(argv[1:], env, monkeypatch)
        assert names, name


def test_a_bad_command_line_is_caught(monkeypatch):
    with pytest.raises(click.UsageError, match="--workerz"):
        parse_cnnopt(["run", "studies/quick_synthetic.py", "--workerz", "2"], {}, monkeypatch)
    with pytest.raises(click.UsageError):  # --storage is required, and not in the environment
        parse_cnnopt(["storage", "proxy", "--host", "0.0.0.0"], {}, monkeypatch)
