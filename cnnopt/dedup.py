"""No configuration is trained twice (study setting ``deduplicate``, on by default).

Samplers propose the same parameters again (TPE on a small discrete grid does so often), and as
every trial trains with the study seed, a repeat reproduces its original's curve to the last digit
and teaches nothing. So before training, a trial's *resolved* configuration (the full RunConfig
after fixed settings, ``--set`` values and ``space()``) is hashed (``config_hash``) and compared
with the study's other trials:

- a COMPLETE trial with the same hash and seed: its value and intermediate values are copied;
- a PRUNED one: its intermediate values are copied and the trial is pruned at the same step;
- a RUNNING one ahead of it in line (below): the trial waits for it, then copies it (or, if it
  failed, trains itself), so two workers that start the same configuration at once never both
  train it.

The copy stores ``duplicate_of`` (the trained trial's number) and trains no epoch (no ``history``).

Who trains, when several trials of one configuration run at once: Lamport's bakery algorithm,
with the study's storage as the shared memory. A trial publishes its hash ("I am choosing"), reads
the tickets (``dedup_rank``) of the same configuration's trials, publishes its own ticket, one
higher than any it saw, and then waits while any twin is still choosing or holds a smaller
(ticket, trial number). So of two concurrent twins exactly one trains and the other waits, whatever
the order in which their reads and writes land; nobody waits for a larger ticket, so there is no
deadlock. Trial numbers alone would not do: a re-queued trial has a smaller number than trials
that started before it.

With ``deduplicate = False`` (repeats wanted, as noise estimates) nothing is copied: a repeat
trains with the study seed + the number of its twins ahead of it in line, so each repeat is a new
sample; a retry of a failed trial keeps its original's seed (it is the same run).

Only ``objective.py`` touches the live ``optuna.Trial``: this module reads the study's stored
(frozen) trials and returns a ``Plan`` that the objective carries out.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from cnnopt.config import RunConfig
from cnnopt.errors import ConfigError, StudyFileError
from cnnopt.study import Study

# Config keys that say where the data lives or how it is fed, not what is trained: a study run from
# two machines (different --data-dir mounts, cache sizes, loader workers) is still one study. The
# device and the worker are not part of the RunConfig at all.
NOT_TRAINING = {"data": ("data_dir", "max_cache_gb", "stream_workers")}
POLL_SECONDS = 1.0  # how often a waiting trial looks at the storage again
RANK = "dedup_rank"  # user attribute: the trial's ticket in the bakery (see the module doc)
# A twin that published its hash but no ticket this long ago died between two storage writes (its
# process on another host, where liveness cannot be checked): stop waiting for it.
CHOOSING_TIMEOUT = 60.0
# A discrete space larger than this is not enumerated (~0.4 ms per configuration on a busy CPU, in
# the runner and in each worker): a run will not train thousands of configurations to use it up.
GRID_LIMIT = 2_000
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _canonical(value: Any) -> Any:
    # 12 significant digits: a discrete float the sampler computed as low + k * step hashes the
    # same as the grid's value, and no two settings a user would tell apart collide
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def config_hash(cfg: RunConfig) -> str:
    """Hash of everything that decides what a trial trains (seed included)."""
    d = cfg.to_dict()
    for section, keys in NOT_TRAINING.items():
        for key in keys:
            d[section].pop(key, None)
    text = json.dumps(_canonical(d), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Plan:
    """What the objective does with a trial: train it (``source`` None) or copy ``source``."""

    config_hash: str
    seed: int  # the seed it trains with (or that its source trained with)
    source: FrozenTrial | None = None
    duplicate_of: int | None = None  # the trial that trained this configuration


def _alive(t: FrozenTrial) -> bool:
    """False for a RUNNING trial whose process on this host is gone; the runner and Optuna's
    heartbeats fail such trials, but a waiting trial must not depend on them being around."""
    host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return True


def _ticket(t: FrozenTrial) -> tuple[int, int]:
    return int(t.user_attrs[RANK]), t.number


def plan(
    ostudy: optuna.Study,
    number: int,
    cfg: RunConfig,
    *,
    deduplicate: bool,
    publish: Callable[[str, Any], None],
    origin: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_wait: Callable[[int], None] = lambda n: None,
) -> Plan:
    """Decide whether trial ``number`` (resolved to ``cfg``) trains or copies a twin.

    ``publish(key, value)`` stores a user attribute on the trial (the objective passes
    ``trial.set_user_attr``); ``origin`` is the trial this one retries, if any. Waits (polling the
    storage) while a twin ahead of it chooses or trains; raises ``cnnopt.train.Interrupted`` if
    the run is stopped meanwhile.
    """
    h = config_hash(cfg)

    def twins() -> list[FrozenTrial]:
        return [
            t
            for t in ostudy.get_trials(deepcopy=False)
            if t.number != number and t.user_attrs.get("config_hash") == h
        ]

    # the bakery's doorway: choosing (hash published), then a ticket above every one in sight
    publish("config_hash", h)
    mine = (1 + max((_ticket(t)[0] for t in twins() if RANK in t.user_attrs), default=0), number)
    publish(RANK, mine[0])
    first_seen: dict[int, float] = {}
    waited_for: int | None = None
    while True:
        same = twins()
        now = time.monotonic()
        choosing = [
            t
            for t in same
            if RANK not in t.user_attrs
            and t.state == TrialState.RUNNING
            and _alive(t)
            and now - first_seen.setdefault(t.number, now) < CHOOSING_TIMEOUT
        ]
        ahead = [t for t in same if RANK in t.user_attrs and _ticket(t) < mine]
        if choosing:
            blocker = choosing[0].number
        elif not deduplicate:
            if origin is not None and origin != number:
                original = next(
                    (t for t in ostudy.get_trials(deepcopy=False) if t.number == origin), None
                )
                if original is not None and "seed" in original.user_attrs:
                    return Plan(h, int(original.user_attrs["seed"]))
            # every twin ahead holds another seed: the k-th repeat trains with seed + k
            return Plan(h, cfg.train.seed + len(ahead))
        else:
            # only twins trained with this very seed (a study that ran with deduplicate = False
            # holds repeats of the same configuration under other seeds)
            same = [t for t in same if t.user_attrs.get("seed") == cfg.train.seed]
            done = [t for t in same if t.state in FINISHED]
            if done:
                # the trained one, not one of its copies (they hold the same values anyway)
                src = min(done, key=lambda t: ("duplicate_of" in t.user_attrs, t.number))
                return Plan(
                    h, cfg.train.seed, src, int(src.user_attrs.get("duplicate_of", src.number))
                )
            same_seed = {t.number for t in same}
            running = [
                t
                for t in ahead
                if t.state == TrialState.RUNNING and t.number in same_seed and _alive(t)
            ]
            if not running:
                return Plan(h, cfg.train.seed)  # first in line, or the one ahead failed
            blocker = min(running, key=_ticket).number
        if blocker != waited_for:  # (first: the runner re-queues an interrupted trial it knows)
            on_wait(blocker)
            waited_for = blocker
        if should_stop():
            from cnnopt.train import Interrupted

            raise Interrupted()
        time.sleep(POLL_SECONDS)


# -- running out of configurations ---------------------------------------------------------------


class _Unset(Exception):
    """space() asked for a parameter the probe has no value for yet."""

    def __init__(self, name: str, distribution: BaseDistribution):
        super().__init__(name)
        self.name, self.distribution = name, distribution


class _NotDiscrete(Exception):
    pass


class _Probe(optuna.trial.FixedTrial):
    """A FixedTrial that reports the first parameter it has no value for, with its distribution."""

    def _suggest(self, name: str, distribution: BaseDistribution) -> Any:
        if name not in self._params:
            raise _Unset(name, distribution)
        return super()._suggest(name, distribution)


def _values(d: BaseDistribution) -> list[Any]:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution):
        return list(range(d.low, d.high + 1, d.step))
    if isinstance(d, FloatDistribution) and d.step is not None:
        n = int(round((d.high - d.low) / d.step))
        return [d.low + k * d.step for k in range(n + 1)]
    raise _NotDiscrete()


def grid_hashes(study: Study, limit: int = GRID_LIMIT) -> set[str] | None:
    """Config hashes of every valid configuration of a fully discrete space (conditional branches
    and ``--set`` pins included, by replaying ``space()`` on each combination), or None when the
    space has a continuous parameter, is larger than ``limit``, or cannot be replayed."""
    out: set[str] = set()
    stack: list[dict[str, Any]] = [{}]
    leaves = 0
    while stack:
        params = stack.pop()
        try:
            out.add(config_hash(study.resolve(_Probe(params))))
        except _Unset as e:
            try:
                stack.extend({**params, e.name: v} for v in reversed(_values(e.distribution)))
            except _NotDiscrete:
                return None
            continue
        except (ConfigError, StudyFileError, optuna.TrialPruned):
            pass  # an inconsistent combination: it fails as a trial, it is not a configuration
        except Exception:  # noqa: BLE001 - space() does something a FixedTrial cannot: no grid
            return None
        leaves += 1
        if leaves > limit:
            return None
    return out


class SpaceGrid:
    """Tells a worker when a fully discrete space has no untried configuration left."""

    def __init__(self, study: Study):
        self.enabled = study.settings.deduplicate
        self.hashes = grid_hashes(study) if self.enabled else None

    def exhausted(self, ostudy: optuna.Study) -> str | None:
        """One line saying the space is used up, or None while an untried configuration is left."""
        if not self.hashes:
            return None
        trained = {
            t.user_attrs.get("config_hash")
            for t in ostudy.get_trials(deepcopy=False, states=FINISHED)
        }
        if not self.hashes <= trained:
            return None
        n = len(self.hashes)
        return (
            f"all {n} configuration{'s' if n != 1 else ''} of the search space are trained "
            "(deduplicate = True); stopping"
        )
