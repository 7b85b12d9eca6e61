"""Options shared by several `cnnopt` commands (the main group's and the `storage` group's).

One definition each, so that --storage, --artifacts, --data-dir and --set read and document
themselves the same way in every command that takes them.
"""

from __future__ import annotations

import click

STORAGE_HELP = "Optuna storage: SQLAlchemy URL, grpc[s]://HOST:PORT (a `cnnopt storage proxy`) or .journal file [env CNNOPT_STORAGE; default storage/<study>.journal]"


def storage_option(f):
    return click.option("--storage", envvar="CNNOPT_STORAGE", default=None, help=STORAGE_HELP)(f)


def artifacts_option(help: str, envvar: str | None = None):
    """--artifacts: where trial artifacts are (cnnopt/artifacts.py). Only `run` reads the
    environment: the other commands find the location the study recorded."""
    return click.option(
        "--artifacts",
        envvar=envvar,
        default=None,
        metavar="DIR|s3://BUCKET/PREFIX",
        help=help + (f" [env {envvar}]" if envvar else ""),
    )


def data_dir_option(f):
    return click.option(
        "--data-dir",
        envvar="CNNOPT_DATA_DIR",
        type=click.Path(file_okay=False),
        default=None,
        help="Folder with the dataset files (offline use) [env CNNOPT_DATA_DIR]",
    )(f)


def set_option(help: str):
    """--set key=value (repeatable), each value read as its setting's type (study.parse_override)."""

    def parse(_ctx, _param, values):
        from cnnopt.study import parse_override

        return dict(parse_override(v) for v in values)

    return click.option(
        "--set", "sets", multiple=True, metavar="KEY=VALUE", help=help, callback=parse
    )
