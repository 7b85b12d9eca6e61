"""`cnnopt dashboard`: optuna-dashboard on a study storage, in this process.

Which storage: ``--storage URL`` (or $CNNOPT_STORAGE); else the STUDY argument's default journal
(storage/<STUDY>.journal); else the one ``storage/*.journal`` file there is. With several journal
files and neither --storage nor STUDY, it stops and lists them (a dashboard shows one storage).

It binds 127.0.0.1 by default. optuna-dashboard has no authentication and can edit studies (notes,
trial states), so binding any other address prints a warning.
"""

from __future__ import annotations

import ipaddress
import logging
import os

from cnnopt.errors import StorageError
from cnnopt.status import journal_files, open_storage
from cnnopt.storage import STORAGE_DIR, describe, resolve_url

log = logging.getLogger("cnnopt")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pick_storage(storage: str | None, study_name: str | None = None) -> str:
    """The storage URL the dashboard serves (see the module docstring)."""
    url = storage or os.environ.get("CNNOPT_STORAGE")
    if url:
        return url
    if study_name:
        return resolve_url(None, study_name)
    files = journal_files()
    if len(files) == 1:
        return str(files[0])
    if not files:
        raise StorageError(f"no *.journal file under {STORAGE_DIR}/: pass --storage URL")
    names = ", ".join(f.stem for f in files)
    raise StorageError(
        f"{len(files)} journal files under {STORAGE_DIR}/ ({names}): name one as "
        f"`cnnopt dashboard STUDY` or pass --storage URL"
    )


def host_warning(host: str) -> str | None:
    if is_loopback(host):
        return None
    return (
        f"warning: serving on {host}: anyone who can reach this address can view and edit the "
        "studies (optuna-dashboard has no authentication); use 127.0.0.1 and an SSH tunnel instead"
    )


def serve(
    url: str, host: str = "127.0.0.1", port: int = 8080, artifacts: str | None = None
) -> None:
    """Blocks until interrupted. ``artifacts``: the artifact location to serve; default: the
    locations `cnnopt run` recorded on the storage's studies (cnnopt/artifacts.py)."""
    import optuna_dashboard

    from cnnopt.artifacts import storage_store

    storage = open_storage(url)
    store = storage_store(storage, artifacts)
    where = f", artifacts in {store.location}" if store is not None else ""
    log.warning("optuna-dashboard for %s%s on http://%s:%d/", describe(url), where, host, port)
    optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)
