import pytest
import torch

from cnnopt.config import RunConfig
from cnnopt.cost import Cost, describe_over, measure, violations
from cnnopt.models import build_model, count_params
from cnnopt.train import count_flops


def test_counts_on_the_meta_device_are_those_training_stores():
    cfg = RunConfig.from_flat({"filters": [8, 16], "hidden": [32], "batchnorm": "after"})
    cost = measure(cfg)
    model = build_model(cfg.model)  # what train.fit builds and counts, with real weights
    assert cost.params == count_params(model)
    assert cost.flops == count_flops(model, 1, 28, torch.device("cpu"))
    assert cost.latency_ms is None  # measured only when asked: it runs the model


def test_latency_is_measured_on_the_device_at_the_batch_size():
    cfg = RunConfig.from_flat({"filters": [4, 8], "hidden": [8]})
    cost = measure(cfg, "cpu", latency=True, batch=4)
    assert cost.latency_ms > 0 and cost.latency_batch == 4 and cost.latency_device == "cpu"


def test_violations_are_relative_and_name_the_broken_limit():
    cost = Cost(params=150_000, flops=1_000_000, latency_ms=1.5)
    limits = {"params": 100_000, "flops": 2_000_000, "latency_ms": None}
    v = violations(cost, limits)
    assert v == pytest.approx({"params": 0.5, "flops": -0.5})  # unset limits: no constraint
    assert describe_over(cost, limits) == ["params 150,000 > 100,000"]
    assert describe_over(cost, {"latency_ms": 1.0}) == ["latency 1.5 ms > 1 ms"]
    with pytest.raises(ValueError, match="latency_ms"):
        violations(Cost(1, 1), {"latency_ms": 1.0})
