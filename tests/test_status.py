from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import optuna
import pytest
from click.testing import CliRunner
from rich.console import Console

from cnnopt.cli import cli
from cnnopt.errors import StorageError
from cnnopt.status import (
    list_studies,
    load_study,
    print_status,
    print_study_list,
    status,
    study_status,
)
from cnnopt.storage import get_storage

from .conftest import make_study


def test_status_of_a_study_counts_states_best_rate_and_pruned(tiny_study):
    study, url = tiny_study
    st = status("tiny", url)
    assert st.n_trials == 6
    assert sum(st.states.values()) == 6
    assert st.states.get("COMPLETE", 0) >= 1
    ostudy, _ = load_study("tiny", url)
    assert st.best_value == ostudy.best_value
    assert st.best_params == ostudy.best_params
    assert st.metric == "val_accuracy"
    assert st.trials_per_hour and st.trials_per_hour > 0
    assert st.pruned_fraction == pytest.approx(st.states.get("PRUNED", 0) / 6)
    assert st.workers == []  # nothing running
    console = Console(record=True, width=120)
    print_status(st, console)
    text = console.export_text()
    assert "trials per hour" in text and "pruned" in text and "no running trials" in text


def test_status_cli_json_and_study_list(tiny_study, tmp_path, monkeypatch):
    _, url = tiny_study
    r = CliRunner().invoke(cli, ["status", "tiny", "--storage", url, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["study"] == "tiny" and data["n_trials"] == 6
    r = CliRunner().invoke(cli, ["status", "--storage", url])
    assert r.exit_code == 0 and "tiny" in r.output
    # no STUDY, no URL: every storage/*.journal file of the working directory
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNOPT_STORAGE", raising=False)
    (tmp_path / "storage").mkdir()
    other = optuna.create_study(
        study_name="other", storage=get_storage(str(tmp_path / "storage" / "other.journal"))
    )
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    rows = status(None, None)
    assert [r["study"] for r in rows] == ["other"]
    assert rows[0]["trials"] == 2


def test_status_of_missing_storage_is_an_error_and_creates_nothing(tmp_path):
    url = str(tmp_path / "nope.journal")
    with pytest.raises(StorageError, match="no study storage"):
        status("tiny", url)
    assert not (tmp_path / "nope.journal").exists()


def test_status_names_the_studies_when_the_study_is_not_there(tiny_study):
    _, url = tiny_study
    with pytest.raises(StorageError, match="holds tiny"):
        status("missing", url)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_journal_workers_alive_and_dead_by_pid(tmp_path):
    url = str(tmp_path / "w.journal")
    ostudy = optuna.create_study(study_name="w", storage=get_storage(url))
    here = socket.gethostname()
    for tag in (f"{here}:{os.getpid()}", f"{here}:{_dead_pid()}", "elsewhere:12"):
        t = ostudy.ask()
        t.set_user_attr("worker", tag)
    workers = {w.worker: w for w in study_status(ostudy, url).workers}
    assert workers[f"{here}:{os.getpid()}"].alive is True
    dead = [w for k, w in workers.items() if k.startswith(here) and k != f"{here}:{os.getpid()}"]
    assert dead[0].alive is False and "gone" in dead[0].how
    assert workers["elsewhere:12"].alive is None


def test_rdb_workers_alive_by_heartbeat(tmp_path):
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    storage = get_storage(url)
    ostudy = optuna.create_study(study_name="hb", storage=storage)
    t = ostudy.ask()
    t.set_user_attr("worker", "otherhost:99")
    inner = getattr(storage, "_backend", storage)
    inner.record_heartbeat(t._trial_id)
    # a trial made through cnnopt's storage beats from its creation on; one made by a plain
    # Optuna client (no heartbeats) says nothing about its worker
    plain = optuna.load_study(study_name="hb", storage=optuna.storages.RDBStorage(url))
    t2 = plain.ask()
    t2.set_user_attr("worker", "otherhost:100")  # never beat
    t3 = ostudy.ask()
    t3.set_user_attr("worker", "otherhost:101")
    workers = {w.worker: w for w in study_status(ostudy, url).workers}
    assert workers["otherhost:99"].alive is True
    assert "heartbeat" in workers["otherhost:99"].how
    assert workers["otherhost:100"].alive is None
    assert workers["otherhost:101"].alive is True


def test_status_counts_duplicates_and_names_their_originals(tmp_path):
    # a study with no search space: every trial after the first copies it (deduplicate = True)
    study, url = make_study(
        tmp_path, "dup", n_trials=3, source='name = "dup"\ndataset = "synthetic"\n'
        'filters = [4, 8]\nhidden = [8]\nepochs = 2\npruner = "none"\n',
    )  # fmt: skip
    st = status("dup", url)
    assert st.duplicates == {1: 0, 2: 0}
    assert st.states == {"COMPLETE": 3}
    console = Console(record=True, width=200)
    print_status(st, console)
    text = console.export_text()
    assert "2 copied an earlier trial's result without training: #1 = #0, #2 = #0" in text
    r = CliRunner().invoke(cli, ["status", "dup", "--storage", url, "--json"])
    assert json.loads(r.output)["duplicates"] == {"1": 0, "2": 0}


def test_status_of_a_pareto_study_shows_its_front_and_the_over_budget_count(tmp_path):
    from .test_pareto import stored_pareto_study

    _, url = stored_pareto_study(tmp_path)
    st = status("po", url)
    assert st.objectives == ["val_accuracy", "flops"]
    assert st.over_budget == 1 and st.proposals == 6
    # complete front (#0, #1), and #3, pruned at epoch 3, that neither dominates; #2 and #4 are
    # dominated, #5 was never trained
    assert [(r["number"], r["state"]) for r in st.front] == [
        (0, "complete"),
        (3, "pruned"),
        (1, "complete"),
    ]
    assert st.front[1]["epoch"] == 3 and st.front[1]["values"] == [0.88, 50_000]
    console = Console(record=True, width=120)
    print_status(st, console)
    text = console.export_text()
    assert "maximize val_accuracy, minimize flops" in text
    assert "Pareto front (val_accuracy vs flops)" in text and "pruned at epoch 3" in text
    assert "1 of 6 proposals" in text
    r = CliRunner().invoke(cli, ["status", "po", "--storage", url, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["over_budget"] == 1


# -- whole names at 80 columns and in logs ---------------------------------------------------------

LONG = "fashion_cnn_bn_with_a_name_longer_than_a_table_cell"


@pytest.fixture
def long_named(tmp_path):
    """A study whose name and storage path are each wider than an 80-column table cell."""
    folder = tmp_path / "a_storage_folder_with_a_long_name" / "and_another_level"
    folder.mkdir(parents=True)
    url = str(folder / f"{LONG}.journal")
    ostudy = optuna.create_study(study_name=LONG, storage=get_storage(url), direction="maximize")
    ostudy.optimize(lambda t: t.suggest_float("dropout_rate_of_the_block", 0, 0.5), n_trials=2)
    return ostudy, url


def test_status_shows_whole_names_at_80_columns(long_named, tmp_path):
    ostudy, url = long_named
    started = min(t.datetime_start for t in ostudy.trials).isoformat(timespec="seconds")
    console = Console(record=True, width=80)
    print_status(study_status(ostudy, url), console)
    lines = console.export_text().splitlines()
    for whole in (f"study {LONG}", url, started, "dropout_rate_of_the_block"):
        assert any(whole in line for line in lines), whole  # in one piece, on one line
    assert "…" not in console.export_text()
    console = Console(record=True, width=80)
    print_study_list(list_studies(url), console)
    text = console.export_text()
    for whole in (LONG, url, started):
        assert any(whole in line for line in text.splitlines()), whole
    assert "…" not in text


def test_status_in_a_log_keeps_whole_names(long_named):
    """`cnnopt status` as a real process writing to a pipe (a log), COLUMNS=80: nothing cut."""
    _, url = long_named
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    for args in ([LONG, "--storage", url], ["--storage", url]):
        out = subprocess.run(
            [sys.executable, "-m", "cnnopt.cli", "status", *args],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        assert LONG in out and url in out and "…" not in out, out


def test_journal_workers_are_judged_in_their_own_pid_namespace(tmp_path):
    """A trial's owner names its run's machine boot and pid namespace: a pid is looked up only
    where it means the same process (not in another container that shares the hostname)."""
    from cnnopt.recovery import process_space, run_id_for

    url = str(tmp_path / "w.journal")
    storage = get_storage(url)
    ostudy = optuna.create_study(study_name="w", storage=storage)
    here, space, gone = socket.gethostname(), process_space(), _dead_pid()
    for run, pid in ((run_id_for("a", os.getpid(), space), os.getpid()),
                     (run_id_for("b", gone, space), gone),
                     (run_id_for("c", gone, "00000000-1"), gone + 1)):  # fmt: skip
        storage.owner = f"{run}/{here}:{pid}"
        ostudy.ask().set_user_attr("worker", f"{here}:{pid}")
    workers = {w.worker: w for w in study_status(ostudy, url).workers}
    assert workers[f"{here}:{os.getpid()}"].alive is True
    assert workers[f"{here}:{gone}"].alive is False and "gone" in workers[f"{here}:{gone}"].how
    assert workers[f"{here}:{gone + 1}"].alive is None  # another pid namespace: cannot tell
