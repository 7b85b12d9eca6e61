"""`cnnopt storage ...`: the local PostgreSQL server, the storage proxy and its certificates, and
the overhead measurement.

Its own module because these commands serve the storage rather than a study (they share only
--set with the main group); each one calls one function of the module that owns it (pgserver.py,
proxy.py, overhead.py). ``cnnopt.cli`` adds the group to the command line.
"""

from __future__ import annotations

import click

from cnnopt.cli.options import set_option


@click.group("storage")
def storage_group() -> None:
    """A local PostgreSQL server for studies (data under storage/postgres/), and the storage proxy."""


@storage_group.command("up")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port [default: 5433 or the next free one].",
)
def storage_up(port):
    """Start a local PostgreSQL (initdb the first time) and print its URL."""
    from cnnopt.pgserver import PgServer

    server = PgServer()
    url = server.up(port)
    click.echo(
        f"cnnopt: PostgreSQL is running on 127.0.0.1:{server.port} (data in {server.data})",
        err=True,
    )
    click.echo(url)


@storage_group.command("down")
def storage_down():
    """Stop the local PostgreSQL started by `cnnopt storage up`."""
    from cnnopt.pgserver import PgServer

    stopped = PgServer().down()
    click.echo(
        "cnnopt: PostgreSQL stopped" if stopped else "cnnopt: PostgreSQL was not running", err=True
    )


@storage_group.command("url")
def storage_url():
    """Print the URL of the local PostgreSQL (for --storage "$(cnnopt storage url)")."""
    from cnnopt.pgserver import PgServer

    click.echo(PgServer().url())


@storage_group.command("proxy")
@click.option(
    "--storage",
    envvar="CNNOPT_STORAGE",
    required=True,
    help="The database to serve: postgresql+psycopg2://... [env CNNOPT_STORAGE]",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=13000, show_default=True)
@click.option(
    "--pool-size",
    type=click.IntRange(1),
    default=None,
    help="Database connections the proxy may open [default: 8].",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Its private key (PEM).")
@click.option(
    "--token-file",
    envvar="CNNOPT_PROXY_TOKEN_FILE",
    type=click.Path(dir_okay=False),
    help="File holding the token every client must send [env CNNOPT_PROXY_TOKEN_FILE; "
    "or the token itself in CNNOPT_PROXY_TOKEN].",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Listen on a non-loopback address without TLS and token (anyone reaching it gets in).",
)
def storage_proxy(storage, host, port, pool_size, tls_cert, tls_key, token_file, insecure):
    """Serve a database to many workers over gRPC (Optuna's storage proxy; blocks).

    Workers use --storage grpc://HOST:PORT, or grpcs://HOST:PORT with --tls-cert/--tls-key
    (clients: CNNOPT_PROXY_CA=ca.pem); with a token every client needs CNNOPT_PROXY_TOKEN or
    CNNOPT_PROXY_TOKEN_FILE. Beyond loopback both TLS and a token are required (or --insecure).
    The database sees only the proxy's pool of connections, however many workers there are."""
    from cnnopt.proxy import read_token, run_proxy
    from cnnopt.storage import PROXY_POOL_SIZE

    run_proxy(
        storage, host, port, pool_size or PROXY_POOL_SIZE,
        tls_cert=tls_cert, tls_key=tls_key, token=read_token(token_file), insecure=insecure,
    )  # fmt: skip


@storage_group.command("proxy-certs")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option(
    "--host",
    "hosts",
    multiple=True,
    required=True,
    help="A name or address clients use to reach the proxy (repeatable).",
)
def storage_proxy_certs(out_dir, hosts):
    """Write a private CA, a proxy certificate for --host names and a random token into OUT_DIR
    (ca.pem, proxy.pem, proxy.key, token); existing ones are kept. The token is not printed."""
    from cnnopt.proxy import write_proxy_certs

    paths = write_proxy_certs(out_dir, list(hosts))
    click.echo(
        f"proxy: --tls-cert {paths['proxy.pem']} --tls-key {paths['proxy.key']} "
        f"--token-file {paths['token']}\n"
        f"clients: --storage grpcs://{hosts[0]}:13000 with CNNOPT_PROXY_CA={paths['ca.pem']} "
        f"CNNOPT_PROXY_TOKEN_FILE={paths['token']}"
    )


@storage_group.command("overhead")
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option(
    "--storage",
    "storages",
    multiple=True,
    required=True,
    help="A storage to measure (repeatable: side by side in one run).",
)
@click.option("-n", "--n-trials", type=click.IntRange(1), default=5, show_default=True)
@set_option("Override a study setting (repeatable).")
def storage_overhead(study_file, storages, n_trials, sets):
    """Time spent in storage calls vs training per trial, for each --storage."""
    from cnnopt.overhead import format_rows, measure

    overrides = dict(sets)
    click.echo(format_rows(measure(study_file, list(storages), n_trials, overrides)))
