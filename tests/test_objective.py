import optuna
import pytest
import torch
from optuna.trial import TrialState

from cnnopt.errors import TrialFailed
from cnnopt.objective import Objective
from cnnopt.study import Study

from .conftest import ROOT

STUDY = """
name = "obj"
dataset = "synthetic"
filters = [4, 8]
hidden = [8]
epochs = 4
batch_size = 64
pruner = "{pruner}"
n_startup_trials = 1
n_warmup_steps = 0
min_resource = 1
reduction_factor = 2

def space(trial):
    return {{"lr": trial.suggest_float("lr", 1e-7, 1e7, log=True)}}
"""


def make(write_study, pruner="median"):
    study = Study.load(write_study(STUDY.format(pruner=pruner)))
    ostudy = optuna.create_study(
        # a fixed name: Hyperband assigns brackets by a hash of study name and trial number
        study_name="obj",
        direction="maximize",
        sampler=study.make_sampler(),
        pruner=study.make_pruner(),
    )
    return study, ostudy


def test_trial_records_curves_size_speed_and_config(write_study):
    study, ostudy = make(write_study)
    ostudy.optimize(Objective(study), n_trials=1)
    t = ostudy.trials[0]
    assert t.state == TrialState.COMPLETE
    assert sorted(t.intermediate_values) == [1, 2, 3, 4]
    ua = t.user_attrs
    assert [h["epoch"] for h in ua["history"]] == [1, 2, 3, 4]
    assert {"train_loss", "val_loss", "val_accuracy", "seconds", "images_per_second"} <= set(
        ua["history"][0]
    )
    assert ua["params_count"] > 0 and ua["flops"] > 0 and ua["seconds_per_epoch"] > 0
    assert ua["device"] == "cpu" and ua["seed"] == 0 and ":" in ua["worker"]
    # what a bit-exact rebuild needs besides params and seed: the CPU and the torch threads
    assert ua["hardware"]["cpu"] and ua["hardware"]["torch_threads"] == torch.get_num_threads()
    assert ua["config"]["train"]["lr"] == t.params["lr"]
    assert t.value == ua["history"][-1]["val_accuracy"]


@pytest.mark.parametrize("pruner", ["median", "hyperband", "successive_halving"])
def test_pruners_stop_bad_trials_with_ask_and_tell(write_study, pruner):
    study, ostudy = make(write_study, pruner)
    objective = Objective(study)
    # good trials, then hopeless ones (tiny lr) that the pruner must stop early; each lr differs,
    # as a repeated configuration would copy its first run's outcome instead of training
    for lr in [0.03, 0.05, 0.04, 0.06] + [1e-6 * (1 + i / 10) for i in range(6)]:
        ostudy.enqueue_trial({"lr": lr})
        trial = ostudy.ask()
        try:
            ostudy.tell(trial, objective(trial))
        except optuna.TrialPruned:
            ostudy.tell(trial, state=TrialState.PRUNED)
    states = [t.state for t in ostudy.trials]
    assert states[0] == TrialState.COMPLETE  # nothing to compare the first trial with
    assert TrialState.PRUNED in states[4:], states
    pruned = [t for t in ostudy.trials if t.state == TrialState.PRUNED]
    assert all(len(t.intermediate_values) < 4 for t in pruned)


def test_diverging_trial_fails_with_reason_and_next_trial_runs(write_study):
    study, ostudy = make(write_study)
    study.fixed.update(optimizer="sgd", amp="off")
    objective = Objective(study)
    ostudy.enqueue_trial({"lr": 1e6})  # far outside the space: SGD explodes
    ostudy.enqueue_trial({"lr": 0.03})
    ostudy.optimize(objective, n_trials=2, catch=(TrialFailed,))
    first, second = ostudy.trials
    assert first.state == TrialState.FAIL
    assert "diverged" in first.user_attrs["fail_reason"]
    assert second.state == TrialState.COMPLETE


def test_inconsistent_sampled_combination_fails_only_that_trial(write_study):
    path = write_study(
        """
        dataset = "synthetic"
        epochs = 1
        def space(trial):
            n = trial.suggest_int("conv_blocks", 1, 2)
            return {"conv_blocks": n, "filters": [8, 16][:1]}  # wrong length when n == 2
        """
    )
    study = Study.load(path)
    ostudy = optuna.create_study(direction="maximize")
    ostudy.enqueue_trial({"conv_blocks": 2})
    ostudy.enqueue_trial({"conv_blocks": 1})
    ostudy.optimize(Objective(study), n_trials=2, catch=(TrialFailed,))
    bad, good = ostudy.trials
    assert bad.state == TrialState.FAIL and "conv_blocks=2" in bad.user_attrs["fail_reason"]
    assert good.state == TrialState.COMPLETE


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def _watch_models(monkeypatch) -> list:
    """Weak references to every model the trials build."""
    import weakref

    import cnnopt.train as T

    refs = []
    build = T.build_model

    def watched(cfg):
        model = build(cfg)
        refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(T, "build_model", watched)
    return refs


@pytest.mark.parametrize("outcome", ["complete", "pruned", "failed"])
def test_a_finished_trial_leaves_no_model_behind(write_study, monkeypatch, outcome):
    import gc

    from cnnopt.worker import run_trial

    study, _ = make(write_study)
    study.fixed.update(optimizer="sgd", amp="off", epochs=2)
    ostudy = optuna.create_study(
        direction="maximize", pruner=_AlwaysPrune() if outcome == "pruned" else None
    )
    ostudy.enqueue_trial({"lr": 1e6 if outcome == "failed" else 0.03})  # 1e6: SGD diverges
    refs = _watch_models(monkeypatch)
    # as in a worker: Optuna logs no failure warning, whose traceback a log handler would keep
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    gc.disable()  # only the worker's own clean-up may free the trial's memory
    try:
        run_trial(ostudy, Objective(study), [])
        assert ostudy.trials[0].state.name == outcome.upper().replace("FAILED", "FAIL")
        assert len(refs) == 1
        # a pruned or failed trial's exception holds the training loop's frames in a cycle
        assert refs[0]() is None, "the trial's model is still reachable after the trial"
    finally:
        gc.enable()
        optuna.logging.set_verbosity(verbosity)


@pytest.mark.parametrize(
    "stage, target, error",
    [
        ("preparing the data", "cnnopt.objective.load_split", "oom"),
        ("building the model", "cnnopt.train.build_model", "oom"),
        ("training", "cnnopt.train.train_one_epoch", "oom"),
        ("training", "cnnopt.train.train_one_epoch", "CUDNN_STATUS_ALLOC_FAILED"),
        ("training", "cnnopt.train.train_one_epoch", "CUBLAS_STATUS_ALLOC_FAILED"),
        ("training", "cnnopt.train.evaluate", "CUDA error: out of memory"),
    ],
)
def test_out_of_memory_anywhere_fails_the_trial_not_the_worker(
    write_study, monkeypatch, stage, target, error
):
    from cnnopt.worker import run_trial

    study, ostudy = make(write_study)
    study.fixed.update(epochs=1, batch_size=32)

    def out_of_memory(*a, **k):
        if error == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise RuntimeError(f"cuDNN error: {error}")

    with monkeypatch.context() as m:
        m.setattr(target, out_of_memory)
        run_trial(ostudy, Objective(study), [])  # returns: the worker goes on
    run_trial(ostudy, Objective(study), [])  # and its next trial runs
    bad, good = ostudy.trials
    assert bad.state == TrialState.FAIL and good.state == TrialState.COMPLETE
    reason = bad.user_attrs["fail_reason"]
    assert reason.startswith(f"out of memory on cpu while {stage} (batch_size=32, ")
    params = good.user_attrs["params_count"]
    if stage == "preparing the data":
        assert "model not built yet" in reason
    else:  # the model's size, counted on the meta device when it could not be built
        assert f"{params:,} params" in reason


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    from cnnopt.objective import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDNN_STATUS_ALLOC_FAILED"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_warm_start_is_never_pruned(write_study):
    """A trial the study file enqueued (tagged warm_start) trains to the end even when the
    pruner would stop it; the same configuration without the tag is pruned."""
    study, ostudy = make(write_study, "successive_halving")
    objective = Objective(study)
    for lr, attrs in [(0.05, {}), (0.04, {}), (1e-6, {"warm_start": True}), (1.1e-6, {})]:
        ostudy.enqueue_trial({"lr": lr}, user_attrs=attrs)
        trial = ostudy.ask()
        try:
            ostudy.tell(trial, objective(trial))
        except optuna.TrialPruned:
            ostudy.tell(trial, state=TrialState.PRUNED)
    warm, cold = ostudy.trials[2], ostudy.trials[3]
    assert warm.state == TrialState.COMPLETE and len(warm.intermediate_values) == 4
    assert cold.state == TrialState.PRUNED
    # the warm start still entered the rungs (successive halving records them in should_prune),
    # so later trials compete with its values
    rungs = sorted(k for k in warm.system_attrs if k.startswith("completed_rung_"))
    assert rungs == ["completed_rung_0", "completed_rung_1"], warm.system_attrs


def test_out_of_memory_creating_the_cuda_context_fails_the_trial_not_the_worker(
    write_study, monkeypatch
):
    """The worker's first CUDA call (train.hardware, which names the GPU) creates its context:
    out of memory there is the trial's failure, with its reason."""
    from cnnopt.worker import run_trial

    study, ostudy = make(write_study)
    study.fixed.update(epochs=1)

    def no_room(*a, **k):
        raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be reported late")

    with monkeypatch.context() as m:
        m.setattr("cnnopt.objective.hardware", no_room)
        run_trial(ostudy, Objective(study), [])  # returns: the worker goes on
    run_trial(ostudy, Objective(study), [])
    bad, good = ostudy.trials
    assert bad.state == TrialState.FAIL and good.state == TrialState.COMPLETE
    reason = bad.user_attrs["fail_reason"]
    assert reason.startswith("out of memory on cpu while starting CUDA (batch_size=?, model not")
    assert reason.endswith("CUDA error: out of memory")


def test_sticky_cuda_errors_are_told_apart():
    from cnnopt.objective import is_cuda_context_lost

    assert is_cuda_context_lost(
        RuntimeError("CUDA error: an illegal memory access was encountered")
    )
    assert is_cuda_context_lost(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_cuda_context_lost(RuntimeError("CUDA error: unspecified launch failure"))
    assert is_cuda_context_lost(RuntimeError("CUDA error: uncorrectable ECC error encountered"))
    assert not is_cuda_context_lost(RuntimeError("CUDA error: out of memory"))
    assert not is_cuda_context_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_cuda_context_lost(ValueError("illegal memory access"))


STICKY = "CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA"


def _worker_once(path, url, monkeypatch):
    """One worker (worker._work, in this process) whose training hits a sticky CUDA error."""
    import multiprocessing
    import queue
    import threading

    from cnnopt import worker

    def crash(*a, **k):
        raise RuntimeError(STICKY)

    monkeypatch.setattr("cnnopt.train.train_one_epoch", crash)
    monkeypatch.setattr(torch.cuda, "empty_cache", crash)  # every CUDA call fails now
    tickets, inflight, events = multiprocessing.Value("i", 0), [0], queue.Queue()
    spec = worker.WorkerSpec(0, "cpu", 1)
    with pytest.raises(SystemExit) as e:
        worker._work(
            spec, str(path), {}, url, tickets, 4, None, threading.Event(), events, inflight
        )
    assert e.value.code == worker.EXIT_CUDA_CONTEXT_LOST  # the runner starts a fresh worker
    ends = [ev for ev in list(events.queue) if ev["event"] == "end"]
    return tickets.value, inflight[0], ends


def test_a_sticky_cuda_error_fails_the_trial_requeues_it_and_ends_the_worker(tmp_path, monkeypatch):
    from cnnopt.runner import open_study
    from cnnopt.storage import get_storage
    from cnnopt.worker import IDLE

    path = tmp_path / "quick.py"
    path.write_text((ROOT / "studies" / "quick_synthetic.py").read_text())
    url = str(tmp_path / "s.journal")
    open_study(Study.load(path), url)
    tickets, slot, ends = _worker_once(path, url, monkeypatch)
    ostudy = optuna.load_study(study_name="quick_synthetic", storage=get_storage(url))
    failed, again = ostudy.get_trials()
    assert failed.state == TrialState.FAIL
    reason = failed.user_attrs["fail_reason"]
    assert reason.startswith("CUDA error on cpu while training: CUDA error: an illegal memory")
    assert "the worker restarts, the params are re-queued" in reason
    assert again.state == TrialState.WAITING and again.params == failed.params
    assert tickets == 0 and slot == IDLE  # the ticket went back with the re-queued params
    assert ends == [
        {"event": "end", "worker": 0, "trial": 0, "state": "FAIL", "value": None, "reason": reason}
    ]
    # the re-run crashes the GPU too: retry_failed (1) is spent, nothing more is queued, and the
    # trial keeps its ticket (it is finished)
    tickets, slot, _ = _worker_once(path, url, monkeypatch)
    states = [t.state for t in ostudy.get_trials()]
    assert states == [TrialState.FAIL, TrialState.FAIL] and tickets == 1 and slot == IDLE


# -- budgets and Pareto studies ------------------------------------------------------------------

BUDGET_STUDY = """
name = "budget"
dataset = "synthetic"
epochs = 2
batch_size = 64
max_params = 100_000
sampler = "tpe"
n_startup_trials = 3
pruner = "successive_halving"
min_resource = 1

def space(trial):
    # 16x16 images, two pooled blocks: the dense layer sees filters[1] * 16 inputs, so 64
    # filters and 128 units (131k weights) break the budget and 8 filters never do
    return {
        "filters": [4, trial.suggest_categorical("f2", [8, 64])],
        "hidden": [trial.suggest_categorical("units", [16, 128])],
        "lr": trial.suggest_float("lr", 1e-3, 3e-2, log=True),
    }
"""


def test_a_budget_study_never_trains_a_configuration_over_budget(write_study, monkeypatch):
    import cnnopt.objective as objective_module
    from cnnopt.models import build_model, count_params

    trained = []
    real_fit = objective_module.fit

    def spy_fit(cfg, *args, **kwargs):  # the real fit, noting the size of what it trains
        trained.append(count_params(build_model(cfg.model)))
        return real_fit(cfg, *args, **kwargs)

    monkeypatch.setattr(objective_module, "fit", spy_fit)
    study = Study.load(write_study(BUDGET_STUDY))
    ostudy = optuna.create_study(
        directions=study.directions, sampler=study.make_sampler(), pruner=study.make_pruner()
    )
    # the first proposal is over budget, so the study has one whatever the sampler draws
    ostudy.enqueue_trial({"f2": 64, "units": 128, "lr": 0.01})
    ostudy.optimize(Objective(study), n_trials=8)
    over = [t for t in ostudy.trials if t.user_attrs.get("over_budget")]
    assert over and over[0].number == 0
    for t in over:
        # recorded before its first epoch: pruned, no epoch, its cost and violation stored
        assert t.state == TrialState.PRUNED
        assert not t.intermediate_values and "history" not in t.user_attrs
        assert t.user_attrs["params_count"] > 100_000 and t.constraints["params"] > 0
        assert t.user_attrs["over_budget"] == [f"params {t.user_attrs['params_count']:,} > 100,000"]
    assert trained and max(trained) <= 100_000  # everything trained was within budget
    for t in ostudy.trials:
        assert "params" in t.constraints  # every trial tells the sampler where the limit is
    best = ostudy.best_trial
    assert best.user_attrs["params_count"] <= 100_000 and best.constraints["params"] <= 0


def test_latency_budget_is_measured_at_the_stated_batch(write_study):
    study = Study.load(
        write_study(
            BUDGET_STUDY.replace("max_params = 100_000", "max_latency_ms = 1e-6\nlatency_batch = 8")
        )
    )
    ostudy = optuna.create_study(sampler=study.make_sampler())
    ostudy.optimize(Objective(study), n_trials=1)
    t = ostudy.trials[0]  # no CNN runs in a nanosecond: over budget, never trained
    assert t.state == TrialState.PRUNED and "history" not in t.user_attrs
    assert t.user_attrs["latency_ms"] > 0 and t.user_attrs["latency"]["batch"] == 8
    assert t.user_attrs["over_budget"][0].startswith("latency ")


PARETO_STUDY = """
name = "pareto"
dataset = "synthetic"
epochs = 4
batch_size = 64
objectives = ["val_accuracy", "flops"]
sampler = "tpe"
n_startup_trials = 3
min_resource = 1
reduction_factor = 2

def space(trial):
    return {
        "filters": [trial.suggest_categorical("f1", [2, 4, 8]), 8],
        "hidden": [16],
        "lr": trial.suggest_float("lr", 1e-7, 1e-1, log=True),
    }
"""


def test_a_pareto_study_prunes_at_rungs_completes_and_has_a_front(write_study):
    study = Study.load(write_study(PARETO_STUDY))
    assert study.directions == ["maximize", "minimize"]
    ostudy = optuna.create_study(
        directions=study.directions, sampler=study.make_sampler(), pruner=study.make_pruner()
    )
    # good trials first, then hopeless ones (tiny lr) at every size, which the rungs must stop;
    # then the sampler proposes on its own, pruned trials among its history
    for f1, lr in [(2, 0.05), (4, 0.04), (8, 0.03), (8, 2e-7), (4, 1e-7), (8, 1.5e-7)]:
        ostudy.enqueue_trial({"f1": f1, "lr": lr})
    ostudy.optimize(Objective(study), n_trials=9)
    states = [t.state for t in ostudy.trials]
    assert TrialState.FAIL not in states and len(states) == 9
    pruned = [t for t in ostudy.trials if t.state == TrialState.PRUNED]
    assert pruned, states
    for t in pruned:
        # stopped at a rung (1, 2), before the end; its per-epoch accuracy is stored
        assert max(map(int, t.user_attrs["intermediate"])) in (1, 2)
        assert len(t.user_attrs["history"]) < 4
        # never in Optuna's intermediate values: Optuna 5.1's TPE reads study.direction for a
        # pruned trial that has some, which raises in a multi-objective study (optuna#5260); the
        # three trials TPE proposed after the enqueued ones saw these pruned trials
        assert not t.intermediate_values
    complete = [t for t in ostudy.trials if t.state == TrialState.COMPLETE]
    for t in complete:
        assert t.values == [t.user_attrs["history"][-1]["val_accuracy"], t.user_attrs["flops"]]
        assert sorted(map(int, t.user_attrs["intermediate"])) == [1, 2, 3, 4]
    front = ostudy.best_trials
    assert front and all(t.state == TrialState.COMPLETE for t in front)
