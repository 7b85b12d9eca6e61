"""What a configuration costs before it is trained: parameters, FLOPs per image, latency.

A CNN's size is known from its config alone, so a study with a budget (``max_params``,
``max_flops``, ``max_latency_ms``) never trains a configuration that would not fit: the objective
measures the cost first and records an over-budget proposal as infeasible before its first epoch.
Parameters and FLOPs are counted on a model built on PyTorch's meta device (no weights, no memory:
the same counts ``train.fit`` stores, from the same ``count_params`` and ``FlopCounterMode``).
Latency needs real kernels: the model is built on the trial's device with random weights, and a
batch of ``latency_batch`` zero images is timed in eval mode, median of ``LATENCY_RUNS`` runs after
``LATENCY_WARMUP`` warm-up runs (the first calls pay for allocation, cuDNN autotuning and lazy
initialisation). Costs a second or less for the CNNs of the shipped studies.

No Optuna here: the objective turns a ``Cost`` and the study's limits into constraint values.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a cost is measured: study.py imports COSTS cheaply
    import torch

    from cnnopt.config import RunConfig

COSTS = ("params", "flops", "latency_ms")
# user attribute of each cost on the trial (params_count, flops: as train.fit stored them before)
COST_ATTR = {"params": "params_count", "flops": "flops", "latency_ms": "latency_ms"}
LATENCY_WARMUP = 3
LATENCY_RUNS = 10


@dataclass
class Cost:
    params: int
    flops: int  # forward FLOPs per image (FlopCounterMode counts a multiply-add as 2)
    latency_ms: float | None = None  # median forward time of one batch; None: not measured
    latency_batch: int | None = None
    latency_device: str | None = None

    def get(self, name: str) -> float | None:
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    cfg: RunConfig,
    device: torch.device | str = "cpu",
    latency: bool = False,
    batch: int = 1,
) -> Cost:
    """The cost of ``cfg``'s model (data-dependent sizes already filled in, see
    ``objective.prepare``); latency only when asked (it runs the model)."""
    import torch

    from cnnopt.models import build_model, count_params
    from cnnopt.train import count_flops

    m = cfg.model
    meta = torch.device("meta")
    with meta:  # weights are not needed to count: nothing is allocated
        model = build_model(cfg.replace(pretrained=False).model)
    cost = Cost(count_params(model), count_flops(model, m.in_channels, m.input_size, meta))
    if latency:
        cost.latency_ms = latency_ms(cfg, device, batch)
        cost.latency_batch = batch
        cost.latency_device = str(device)
    return cost


def latency_ms(cfg: RunConfig, device: torch.device | str, batch: int = 1) -> float:
    """Median milliseconds of one forward pass of a batch of ``batch`` images on ``device``."""
    import torch

    from cnnopt.models import build_model

    device = torch.device(device)
    m = cfg.model
    model = build_model(cfg.replace(pretrained=False).model).to(device).eval()
    x = torch.zeros(batch, m.in_channels, m.input_size, m.input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(LATENCY_WARMUP + LATENCY_RUNS):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= LATENCY_WARMUP:
                times.append(time.perf_counter() - t0)
    del model, x
    return 1000.0 * statistics.median(times)


def violations(cost: Cost, limits: dict[str, float | None]) -> dict[str, float]:
    """Optuna constraint values, one per set limit: ``cost / limit - 1`` (feasible when <= 0).
    Relative, so that TPE, which ranks infeasible trials by the sum of their violations, weighs
    "twice the parameter budget" like "twice the FLOP budget"."""
    out = {}
    for name, limit in limits.items():
        if limit is None:
            continue
        value = cost.get(name)
        if value is None:
            raise ValueError(f"cost {name!r} was not measured")
        out[name] = float(value) / float(limit) - 1.0
    return out


def describe_over(cost: Cost, limits: dict[str, float | None]) -> list[str]:
    """The broken limits in words, e.g. ``params 120,394 > 100,000``."""
    out = []
    for name, v in violations(cost, limits).items():
        if v > 0:
            value, limit = cost.get(name), limits[name]
            if name == "latency_ms":
                out.append(f"latency {value:.3g} ms > {limit:g} ms")
            else:
                out.append(f"{name} {int(value):,} > {int(limit):,}")  # type: ignore[arg-type]
    return out
