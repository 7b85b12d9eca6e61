"""cnnopt.recovery: proving a run killed whole dead from its owner string, on this machine."""

from __future__ import annotations

import os
import subprocess
import sys

from cnnopt.recovery import dead_here, process_space, run_id_for


def _gone_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped: no such process now (a recycled pid only makes the proof fail)


def test_a_run_is_proved_dead_only_in_its_own_process_space():
    space = process_space()
    assert space and space.count("-") == 1  # this is Linux: boot id and pid namespace
    gone = _gone_pid()
    dead = f"{run_id_for('abc', gone, space)}/host:{gone}"
    assert dead.startswith(f"abc.{gone}.{space}/")
    assert "are gone from this machine" in dead_here(dead, space)
    # the runner alive (this process), or the worker alive: not provably dead
    assert dead_here(f"{run_id_for('abc', os.getpid(), space)}/host:{gone}", space) is None
    assert dead_here(f"{run_id_for('abc', gone, space)}/host:{os.getpid()}", space) is None
    # another machine or container (another space), the old owner format, or no space known
    assert dead_here(f"abc.{gone}.0000-1/host:{gone}", space) is None
    assert dead_here(f"abc/host:{gone}", space) is None
    assert dead_here(dead, "") is None
    assert run_id_for("abc", 5, "") == "abc"  # no space: the old format, never proved dead
