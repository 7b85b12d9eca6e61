"""Who owns a trial, with several `cnnopt run` processes on one storage: a trial carries its
worker's owner from the moment it is RUNNING, a runner fails only trials provably its own, a
repeated storage write after a lost reply neither duplicates a trial nor skips an enqueued one,
and retries keep what the study asked of the trial. In process, on the journal file and on a real
PostgreSQL database; tests/test_runner_faults.py does the same with real processes killed."""

from __future__ import annotations

import warnings

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from cnnopt import recovery
from cnnopt.recovery import fail_abandoned, fail_trial, fail_trials_of
from cnnopt.runner import Runner
from cnnopt.storage import (
    CLAIM_PREFIX,
    CREATE_TOKEN_KEY,
    OWNER_KEY,
    RetryStaleTrialCallback,
    get_storage,
    owner_of,
)
from cnnopt.worker import ASKING, TAGGED

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

A_DEAD = "runA/host:11"  # a worker of runner A that died
B_LIVE = "runB/host:22"  # a worker of runner B, alive, slow to write anything


@pytest.fixture(params=["journal", "postgres"])
def url(request, tmp_path):
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "s.journal")


def worker_study(url: str, owner: str | None, name: str = "owners") -> optuna.Study:
    """What a worker of a runner opens: cnnopt's storage, with the worker's owner set."""
    storage = get_storage(url, heartbeat=False)
    storage.owner = owner
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True)


def raw(study: optuna.Study, number: int):
    backend = recovery._backend(study)
    return backend.raw_trial(study.trials[number]._trial_id)


def test_any_script_on_get_storage_owns_its_trials_under_an_id_of_its_own(url):
    s1 = optuna.create_study(study_name="o", storage=get_storage(url, heartbeat=False))
    s2 = optuna.load_study(study_name="o", storage=get_storage(url, heartbeat=False))
    owners = {owner_of(raw(s1, s1.ask().number)), owner_of(raw(s2, s2.ask().number))}
    assert len(owners) == 2 and None not in owners


def test_a_new_trial_carries_its_owner_and_users_do_not_see_it(url):
    b = worker_study(url, B_LIVE)
    trial = b.ask()
    assert owner_of(raw(b, trial.number)) == B_LIVE  # written with the creation, no later
    assert CREATE_TOKEN_KEY in raw(b, trial.number).system_attrs
    user = worker_study(url, None)  # a user reading the study (status, dashboard, export)
    [seen] = user.get_trials()
    assert seen.system_attrs == {} and seen.user_attrs == {}
    assert user._storage.get_trial_system_attrs(seen._trial_id) == {}


def test_runner_never_fails_another_runners_trial(url):
    """Runner A's worker died while asking; runner B's worker has a RUNNING trial that carries
    no tag yet (its tag write is stuck in the storage's retry back-off, or its process stalls,
    for longer than any settle time). A fails its own orphan and never B's; B's worker then
    finishes its trial as usual."""
    a, b = worker_study(url, A_DEAD), worker_study(url, B_LIVE)
    b_trial = b.ask()  # B: created, not tagged, not finished
    a_orphan = a.ask()  # A: created just before its worker died
    a_runner = worker_study(url, "runA/host:1")  # A's runner process
    failed = fail_trials_of(a_runner, A_DEAD, "worker 0 (pid 11) died with exit code -9", 1)
    assert failed == [a_orphan.number]
    trials = a_runner.get_trials()
    assert trials[a_orphan.number].state == TrialState.FAIL
    assert trials[b_trial.number].state == TrialState.RUNNING
    b_trial.set_user_attr("worker", "host:22")  # the late tag lands
    b.tell(b_trial, 0.5)  # and B's worker goes on: no "Cannot tell a FAIL trial"
    assert a_runner.get_trials()[b_trial.number].state == TrialState.COMPLETE


def test_fail_trial_rechecks_state_and_owner(url):
    b = worker_study(url, B_LIVE)
    t = b.ask()
    b.tell(t, 1.0)
    trial_id = b.trials[t.number]._trial_id
    # finished meanwhile: left alone, whoever asks
    assert not fail_trial(b, trial_id, "late", 1, owner=B_LIVE)
    t2 = b.ask()
    # RUNNING, but not the claimed owner's: left alone
    assert not fail_trial(b, b.trials[t2.number]._trial_id, "not yours", 1, owner=A_DEAD)
    assert b.trials[t2.number].state == TrialState.RUNNING
    assert "fail_reason" not in b.trials[t2.number].user_attrs


def test_claimed_enqueued_trial_is_owned_and_requeued_from_fixed_params(url):
    """A worker that dies right after it claimed an enqueued trial (a warm start): the trial's
    owner proves it is its runner's, and the retry runs the same fixed params, still a warm
    start (never pruned)."""
    user = worker_study(url, None)
    user.enqueue_trial({"x": 0.25}, user_attrs={"warm_start": True})
    a = worker_study(url, A_DEAD)
    trial_id = a._pop_waiting_trial_id()  # what study.ask() does first; the worker dies here
    t = recovery._backend(a).raw_trial(trial_id)
    assert t.state == TrialState.RUNNING and t.params == {}  # it sampled nothing
    assert owner_of(t) == A_DEAD and t.system_attrs[OWNER_KEY] == A_DEAD
    assert fail_trials_of(worker_study(url, None), A_DEAD, "died", 1) == [t.number]
    orphan, retry = user.get_trials()
    assert orphan.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.system_attrs["fixed_params"] == {"x": 0.25}
    assert retry.system_attrs["failed_trial"] == orphan.number
    assert retry.user_attrs == {"warm_start": True}
    assert not any(k.startswith("cnnopt:") for k in retry.system_attrs)
    b = worker_study(url, B_LIVE)
    again = b.ask()  # the retry is claimed and runs the warm start's values
    assert again.number == retry.number and again.suggest_float("x", 0, 1) == 0.25
    assert owner_of(raw(b, again.number)) == B_LIVE


def test_two_standing_claims_prove_nothing_until_abandoned(url):
    """A claimed, B claimed and won, B died before writing its owner, and A died before saying
    it lost: neither runner can prove the trial is its own, so neither fails it; once it has
    been unowned for longer than any live worker takes to write its owner, any runner fails it."""
    user = worker_study(url, None)
    user.enqueue_trial({"x": 0.5})
    storage = recovery._backend(user)
    trial_id = user.trials[0]._trial_id
    storage.set_trial_system_attr(trial_id, CLAIM_PREFIX + A_DEAD, True)
    storage.set_trial_system_attr(trial_id, CLAIM_PREFIX + B_LIVE, True)
    assert storage.set_trial_state_values(trial_id, TrialState.RUNNING)  # no owner: plain write
    assert owner_of(storage.raw_trial(trial_id)) is None
    assert fail_trials_of(user, {A_DEAD, B_LIVE}, "died", 1) == []
    assert fail_abandoned(user, 1) == []  # too young
    assert fail_abandoned(user, 1, age=0.0) == [0]
    first, retry = user.get_trials()
    assert first.state == TrialState.FAIL and retry.system_attrs["fixed_params"] == {"x": 0.5}


def test_plain_optuna_trials_are_nobodys_to_fail(url):
    """A RUNNING trial with no owner and no claim (a plain Optuna client on the same study)."""
    storage = get_storage(url, heartbeat=False)
    storage.owner = None  # as Optuna's own storage classes write trials
    plain = optuna.create_study(study_name="owners", storage=storage, load_if_exists=True)
    plain._storage.create_new_trial(plain._study_id)
    assert fail_trials_of(plain, {A_DEAD}, "died", 1) == []
    assert fail_abandoned(plain, 1, age=0.0) == []
    assert [t.state for t in plain.get_trials()] == [TrialState.RUNNING]


class _Lost(sqlalchemy.exc.OperationalError):
    """What a worker sees when the database committed but the reply never came."""

    def __init__(self):
        super().__init__("COMMIT", None, Exception("server closed the connection unexpectedly"))


@pytest.fixture
def fast_retry(monkeypatch):
    import cnnopt.storage.retry as retry

    monkeypatch.setattr(retry, "RETRY_FIRST_DELAY", 0.01)


@pytest.mark.postgres
def test_repeated_creation_after_a_lost_commit_creates_one_trial(postgres_url, fast_retry):
    b = worker_study(postgres_url, B_LIVE)
    backend = recovery._backend(b)
    real = backend._create_once
    calls = []

    def lost_after_commit(study_id, template):
        calls.append(1)
        frozen = real(study_id, template)
        if len(calls) == 1:
            raise _Lost()
        return frozen

    backend._create_once = lost_after_commit
    trial = b.ask()
    assert len(calls) == 1  # not created again: found by its token
    b.tell(trial, 0.1)
    assert [(t.number, t.state) for t in b.get_trials()] == [(0, TrialState.COMPLETE)]


@pytest.mark.postgres
def test_repeated_claim_after_a_lost_commit_is_ours(postgres_url, fast_retry, monkeypatch):
    """The WAITING->RUNNING switch committed and its reply was lost: the repeat returns False
    (the trial is no longer WAITING), and the claimant still recognizes its own claim instead of
    skipping the enqueued trial and leaving it RUNNING."""
    from optuna.storages import RDBStorage

    user = worker_study(postgres_url, None)
    user.enqueue_trial({"x": 0.75})
    real = RDBStorage.set_trial_state_values
    calls = []

    def lost_after_commit(self, trial_id, state, values=None):
        calls.append(state)
        ok = real(self, trial_id, state, values)
        if len(calls) == 1:
            raise _Lost()
        return ok

    monkeypatch.setattr(RDBStorage, "set_trial_state_values", lost_after_commit)
    b = worker_study(postgres_url, B_LIVE)
    trial = b.ask()
    assert calls == [TrialState.RUNNING, TrialState.RUNNING]  # repeated, returned False
    assert trial.number == 0 and trial.suggest_float("x", 0, 1) == 0.75
    assert owner_of(raw(b, 0)) == B_LIVE
    b.tell(trial, 0.2)
    assert [(t.number, t.state) for t in user.get_trials()] == [(0, TrialState.COMPLETE)]


def test_retry_keeps_warm_start_and_drops_the_rest(tmp_path):
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0}, user_attrs={"warm_start": True})
    t = study.ask()
    t.suggest_float("x", 0, 2)
    t.set_user_attr("fail_reason", "died")
    t.set_user_attr("history", [1, 2])
    study.tell(t, state=TrialState.FAIL)
    RetryStaleTrialCallback(max_retry=1)(study, study.trials[0])
    retry = study.trials[1]
    assert retry.state == TrialState.WAITING and retry.params == {"x": 1.0}
    assert retry.user_attrs == {"warm_start": True}


def test_a_finished_trials_ticket_is_spent(url):
    """A worker that died after Optuna recorded its trial COMPLETE, before it reset its slot:
    the ticket bought that trial and is not given back (no n_trials + 1)."""
    b = worker_study(url, B_LIVE)
    done, running = b.ask(), b.ask()
    b.tell(done, 1.0)
    ids = [b.trials[done.number]._trial_id, b.trials[running.number]._trial_id, -1]
    inflight = [TAGGED, TAGGED, ASKING]
    assert Runner._ticket_spent(b, inflight, ids, 0)
    assert not Runner._ticket_spent(b, inflight, ids, 1)  # still RUNNING: failed, given back
    assert not Runner._ticket_spent(b, inflight, ids, 2)  # died asking: given back


def test_a_retry_lost_between_fail_and_requeue_is_requeued_once(url):
    """The runner that failed a dead worker's trial was killed before it wrote the retry: the
    mark it wrote first lets any runner re-queue it, once, and never a trial without the mark."""
    from cnnopt.recovery import requeue_owed
    from cnnopt.storage import RETRY_OWED_KEY

    dead = worker_study(url, A_DEAD)
    lost = dead.ask()
    lost.suggest_float("x", 0, 1)
    plain = dead.ask()  # failed by its objective (no retry owed): left alone
    plain.suggest_float("x", 0, 1)
    dead.tell(plain, state=TrialState.FAIL)
    # fail_trial's first two writes, then the process dies before RetryStaleTrialCallback
    dead._storage.set_trial_system_attr(lost._trial_id, RETRY_OWED_KEY, True)
    dead._storage.set_trial_state_values(lost._trial_id, state=TrialState.FAIL)

    other = worker_study(url, "runC/host:33")
    assert requeue_owed(other, max_retry=1, age=3600) == []  # the failing process may still write
    assert requeue_owed(other, max_retry=1, age=0) == [lost.number]
    assert requeue_owed(other, max_retry=1, age=0) == []  # once
    waiting = [t for t in other.get_trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == {"x": lost.params["x"]}
    assert waiting[0].system_attrs["retry_history"] == [lost.number]
    assert RETRY_OWED_KEY not in other.trials[lost.number].system_attrs  # bookkeeping, hidden


def test_fail_trial_marks_the_owed_retry_and_writes_it(url):
    from cnnopt.recovery import requeue_owed

    dead = worker_study(url, A_DEAD)
    t = dead.ask()
    t.suggest_float("x", 0, 1)
    assert fail_trial(dead, t._trial_id, "worker died", max_retry=1, owner=A_DEAD)
    assert requeue_owed(dead, max_retry=1, age=0) == []  # the retry is there already
    assert [s.state for s in dead.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_a_retry_lost_in_optunas_own_stale_check_is_requeued(postgres_url, monkeypatch):
    """Optuna's ``fail_stale_trials`` (each worker runs it before every trial) fails a stale
    trial, then calls the retry callback: a process killed in between left a failed trial with
    no retry. The storage marks every stale trial before it is failed, so any runner re-queues it."""
    from optuna.storages import fail_stale_trials

    from cnnopt.recovery import requeue_owed

    monkeypatch.setenv("CNNOPT_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("CNNOPT_GRACE_PERIOD", "2")
    storage = get_storage(postgres_url, retry_failed=1)
    storage.owner = A_DEAD
    study = optuna.create_study(study_name="stale", storage=storage)
    trial = study.ask()  # its first heartbeat comes with it; nobody beats after that
    trial.suggest_float("x", 0, 1)

    class Killed(BaseException):
        pass

    def die(self, study, trial):
        raise Killed  # the process dies between the failure and the retry

    monkeypatch.setattr(RetryStaleTrialCallback, "__call__", die)
    with pytest.raises(Killed):
        while study.trials[0].state == TrialState.RUNNING:  # until the grace period is over
            fail_stale_trials(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # and no retry written
    monkeypatch.undo()

    other = worker_study(postgres_url, "runC/host:33", name="stale")
    assert requeue_owed(other, max_retry=1, age=0) == [trial.number]
    [retry] = [t for t in other.get_trials() if t.state == TrialState.WAITING]
    assert retry.params == {"x": trial.params["x"]}
