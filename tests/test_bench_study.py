"""The bench's study section: epochs counted until a target accuracy or the cap."""

from __future__ import annotations

import dataclasses

import torch

from cnnopt.bench.common import TINY, BenchOptions
from cnnopt.bench.study import STUDY_VARIANTS, run_study_to_target


def test_study_epochs_are_counted_until_the_cap_when_the_target_is_out_of_reach():
    plan = dataclasses.replace(TINY, study_target=1.01, study_cap=3)
    opts = BenchOptions(plan=plan, dataset="synthetic")
    variant = STUDY_VARIANTS["random search, no pruning"]
    r = run_study_to_target(opts, variant, seed=0, device=torch.device("cpu"))
    assert not r["reached"]
    assert r["epochs"] == r["counted_by_callback"] == 3  # 2 epochs of trial 0, 1 of trial 1
    assert r["trials"] == 2
