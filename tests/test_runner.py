"""`cnnopt run` as a real process: two workers sharing one journal file, exact trial counts,
resume, and the device/thread plan."""

import os
import socket
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from cnnopt.runner import plan_devices, threads_per_worker
from cnnopt.storage import get_storage

from .conftest import ROOT, cnnopt_cmd

# Runs whose point is not the device pass --device cpu: with the default `auto` the runner
# imports torch only to count GPUs (seconds of a 2-core CPU per run). The default stays covered
# here by test_set_takes_every_string_setting_as_written, and by tests/test_devices.py.
CPU = ("--device", "cpu")


def run(*args, timeout=180, env=None):
    return subprocess.run(
        cnnopt_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def test_two_workers_share_one_storage_and_resume(tmp_path):
    storage = str(tmp_path / "s.journal")
    args = (
        "run",
        "studies/quick_synthetic.py",
        "--workers",
        "2",
        "--n-trials",
        "5",
        "--storage",
        storage,
        "--no-progress",
        *CPU,
    )
    first = run(*args)
    assert first.returncode == 0, first.stderr
    study = optuna.load_study(study_name="quick_synthetic", storage=get_storage(storage))
    trials = study.get_trials()
    assert len(trials) == 5  # exactly the requested count, however the workers raced
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, "both workers ran trials"
    assert all(t.intermediate_values for t in trials)
    assert "best" in first.stdout
    # the same command again resumes: --n-trials counts trials to add
    second = run(*args[:4], "--n-trials", "1", *args[6:])
    assert second.returncode == 0, second.stderr
    assert len(study.get_trials()) == 6
    assert [t.number for t in study.get_trials()] == list(range(6))


def test_bad_study_file_is_one_line_and_stores_nothing(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("epochs = 'many'\n")
    r = run("run", str(bad), "--storage", str(tmp_path / "x.journal"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "epochs='many' must be an integer" in r.stderr and "bad.py" in r.stderr
    assert not (tmp_path / "x.journal").exists()


def test_unknown_set_key_is_one_line():
    r = run("run", "studies/quick_synthetic.py", "--set", "epoch=2")
    assert (
        r.returncode == 2
        and "--set: unknown setting 'epoch'" in r.stderr
        and "Traceback" not in r.stderr
    )


def test_plan_devices_and_threads_on_cpu():
    assert plan_devices("cpu", 3) == ["cpu"] * 3


def test_threads_per_worker_splits_the_cores(monkeypatch):
    """CPU workers share the cores they may run on (affinity, not the machine's count); a GPU
    worker needs one thread to feed its device."""
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    assert threads_per_worker(["cpu"]) == 8
    assert threads_per_worker(["cpu"] * 2) == 4
    assert threads_per_worker(["cpu"] * 3) == 2  # 8 // 3: never oversubscribed
    assert threads_per_worker(["cpu"] * 16) == 1  # more workers than cores: one each
    assert threads_per_worker(["cuda:0", "cpu"]) == 8  # only CPU workers split the cores
    assert threads_per_worker(["cuda:0", "cuda:1"]) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert threads_per_worker(["cpu"] * 2) == 1


def test_real_short_study_on_fashion_mnist(tmp_path, fashion, write_study):
    # A small fixed CNN-BN, so the test stays seconds-long on a 2-core CPU.
    study_file = write_study(
        """
        name = "fashion_smoke"
        dataset = "fashion_mnist"
        filters = [8, 16]
        batchnorm = "after"
        hidden = [32]
        epochs = 2
        train_subset = 3000
        pruner = "none"  # both trials run both epochs
        def space(trial):
            return {"lr": trial.suggest_float("lr", 1e-3, 3e-3, log=True)}
        """
    )
    storage = str(tmp_path / "f.journal")
    r = run(
        "run", str(study_file), "--workers", "1", "--n-trials", "2", "--storage", storage,
        "--data-dir", str(fashion), "--no-progress", *CPU,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="fashion_smoke", storage=get_storage(storage))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)
    assert max(t.value for t in study.trials) > 0.7  # 2 epochs on 2,400 real images


def test_missing_data_stops_the_run_with_one_line(tmp_path):
    storage = str(tmp_path / "s.journal")
    # The workers try the download, which must fail at once, network or not (a slow DNS lookup
    # or a firewall that drops packets takes many seconds): every URL goes through a "proxy" at a
    # port that refuses connections (bound, not listening).
    with socket.socket() as refuses:
        refuses.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{refuses.getsockname()[1]}"
        env = {**os.environ, "no_proxy": "", "NO_PROXY": ""}
        env.update({k: proxy for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")})
        r = run(
            "run", "studies/quick_synthetic.py", "--workers", "2", "--n-trials", "4",
            "--storage", storage, "--set", "dataset=fashion_mnist",
            "--data-dir", str(tmp_path / "nothing"), "--no-progress", *CPU, env=env,
        )  # fmt: skip
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "died" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("cnnopt: error: fashion_mnist: ")
    assert "the download failed" in r.stderr
    trials = optuna.load_study(study_name="quick_synthetic", storage=get_storage(storage)).trials
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert all("not found in" in t.user_attrs["fail_reason"] for t in trials)


def test_a_gpu_that_is_not_there_is_one_line_before_anything_starts(tmp_path):
    import torch

    n = torch.cuda.device_count()
    storage = tmp_path / "x.journal"
    r = run("run", "studies/quick_synthetic.py", "--device", f"cuda:{n}", "--storage", str(storage))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("cnnopt: error: --device cuda:") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr
    assert not storage.exists()  # no study created, no worker started


def test_error_in_space_stops_the_run_with_file_and_line(tmp_path, write_study):
    """A bug in the user's space() (here a NameError typo) hits every trial: one line naming the
    study file and line, exit code 2, no worker crash-and-respawn."""
    study_file = write_study(
        """
        name = "typo"
        dataset = "synthetic"
        epochs = 1

        def space(trial):
            lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
            return {"lr": lr, "batch_size": trail.suggest_int("batch_size", 16, 64)}
        """
    )
    storage = str(tmp_path / "s.journal")
    r = run(
        "run", str(study_file), "--workers", "2", "--n-trials", "4", "--storage", storage,
        "--no-progress", *CPU,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "died" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == (
        f"cnnopt: error: {study_file}:8: space() failed: NameError: name 'trail' is not defined"
    )
    trials = optuna.load_study(study_name="typo", storage=get_storage(storage)).trials
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert all("space() failed: NameError" in t.user_attrs["fail_reason"] for t in trials)


def test_set_takes_every_string_setting_as_written(tmp_path):
    """`--set pruner=none` (and the other settings whose value is the word none) through the CLI."""
    storage = str(tmp_path / "s.journal")
    r = run(
        "run", "studies/quick_synthetic.py", "--n-trials", "1", "--storage", storage,
        "--no-progress", "--set", "pruner=none", "--set", "batchnorm=none", "--set",
        "schedule=none", "--set", "epochs=1", "--set", "hflip=true", "--set", "timeout=none",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="quick_synthetic", storage=get_storage(storage))
    overrides = study.user_attrs["study_file"]["overrides"]
    overrides.pop("artifacts", None)  # the tests turn artifacts off ($CNNOPT_ARTIFACTS=none)
    assert overrides == {
        "pruner": "none", "batchnorm": "none", "schedule": "none", "epochs": 1, "hflip": True,
        "timeout": None,
    }  # fmt: skip
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE and t.user_attrs["config"]["model"]["batchnorm"] == "none"


def test_release_memory_after_a_lost_cuda_context_does_not_mask_it(monkeypatch):
    """After a sticky CUDA error every CUDA call fails, empty_cache included: that second error
    must not replace the trial's own (CudaContextLost); any other error still surfaces."""
    import pytest
    import torch

    from cnnopt.worker import release_memory

    def sticky():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "empty_cache", sticky)
    release_memory(torch.device("cuda:0"))

    def other():
        raise RuntimeError("CUDA error: invalid argument")

    monkeypatch.setattr(torch.cuda, "empty_cache", other)
    with pytest.raises(RuntimeError, match="invalid argument"):
        release_memory(torch.device("cuda:0"))


def test_a_stored_study_with_other_directions_is_named_not_mixed(write_study, tmp_path):
    from cnnopt.errors import StorageError
    from cnnopt.runner import open_study
    from cnnopt.study import Study

    url = str(tmp_path / "d.journal")
    single = Study.load(write_study("name = 'd'\ndataset = 'synthetic'\n", "d.py"))
    open_study(single, url)
    pareto = Study.load(
        write_study("name = 'd'\ndataset = 'synthetic'\nobjectives = ['val_accuracy', 'flops']\n")
    )
    with pytest.raises(StorageError, match=r"has directions \['maximize'\].*another --study-name"):
        open_study(pareto, url)


def test_an_epoch_budget_bounds_the_run_and_lets_the_last_trial_finish(tmp_path):
    # 3-epoch trials, one worker, no pruning (every trial trains its 3 epochs), 7 epochs: the
    # third trial starts with 6 trained and finishes (9 in all); no fourth starts, although
    # the study's n_trials (4) would allow it: the budget alone bounds a run without --n-trials
    storage = str(tmp_path / "s.journal")
    r = run("run", "studies/quick_synthetic.py", "--epoch-budget", "7", "--storage", storage,
            "--set", "pruner=none", "--set", "deduplicate=false", *CPU)  # fmt: skip
    assert r.returncode == 0, r.stderr
    trials = optuna.load_study(study_name="quick_synthetic", storage=get_storage(storage)).trials
    assert [len(t.intermediate_values) for t in trials] == [3, 3, 3]
    assert "9 epochs trained" in r.stdout and "7 spent" in r.stdout
    assert "9/7 epochs" in r.stderr  # the line per trial off a TTY counts them
    # with --n-trials the first bound reached ends the run
    r = run("run", "studies/quick_synthetic.py", "--epoch-budget", "100", "--n-trials", "1",
            "--storage", storage, "--no-progress", *CPU)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (
        len(optuna.load_study(study_name="quick_synthetic", storage=get_storage(storage)).trials)
        == 4
    )


def test_an_epoch_budget_must_be_positive(tmp_path):
    r = run("run", "studies/quick_synthetic.py", "--set", "epoch_budget=0", *CPU)
    assert r.returncode != 0
    assert "epoch_budget=0 must be positive" in r.stderr and "Traceback" not in r.stderr


def test_closed_tickets_stay_closed_when_a_dead_workers_ticket_comes_back():
    import multiprocessing as mp

    from cnnopt.runner import UNBOUNDED, _close_tickets
    from cnnopt.worker import _claim_slot, _reclaim_slot

    tickets, inflight = mp.Value("i", 0), mp.Array("b", 2)
    assert _claim_slot(tickets, inflight, 0, UNBOUNDED) and _claim_slot(
        tickets, inflight, 1, UNBOUNDED
    )
    _close_tickets(tickets)  # the epoch budget is spent while both workers train
    assert _reclaim_slot(tickets, inflight, 1)  # worker 1 dies: its ticket is given back
    assert not _claim_slot(tickets, inflight, 1, UNBOUNDED)  # its replacement starts nothing


def test_an_epoch_budget_run_that_trains_nothing_stops(write_study, monkeypatch):
    # every proposal is over the study's max_params, so none trains an epoch and the budget
    # alone would never end the run: it stops after UNTRAINED_IN_A_ROW such trials, and says why
    import cnnopt.runner as runner_module
    from cnnopt.runner import Runner, RunOptions
    from cnnopt.study import Study

    monkeypatch.setattr(runner_module, "UNTRAINED_IN_A_ROW", 4)
    path = write_study(
        'name = "untrainable"\ndataset = "synthetic"\nepochs = 2\nmax_params = 10\n'
        "epoch_budget = 6\n\n"
        'def space(trial):\n    return {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True)}\n'
    )
    storage = str(path.parent / "s.journal")
    summary = Runner(
        Study.load(path), {}, RunOptions(storage=storage, device="cpu", progress=False)
    ).run()
    assert summary.epochs == 0 and "4 trials in a row trained nothing" in summary.exhausted
    trials = optuna.load_study(study_name="untrainable", storage=get_storage(storage)).trials
    assert 4 <= len(trials) <= 8  # the worker may have begun one or two more before it stopped
    assert all(t.state == TrialState.PRUNED and not t.intermediate_values for t in trials)
