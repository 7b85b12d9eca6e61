import optuna
import torch

from cnnopt import space as S
from cnnopt.config import RunConfig
from cnnopt.models import build_model


def sample(fn, n=30, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        out.append(fn(t))
        study.tell(t, 0.0)
    return out


def test_optimizer_covers_all_nine_families_and_log_lr():
    draws = sample(lambda t: S.optimizer(t, weight_decay=(1e-6, 1e-3)), n=120)
    assert {d["optimizer"] for d in draws} == set(S.ALL_OPTIMIZERS)
    assert all(1e-5 <= d["lr"] <= 1e-1 for d in draws)
    assert all(1e-6 <= d["weight_decay"] <= 1e-3 for d in draws)


def test_increasing_dropout_increases_per_block():
    draws = sample(lambda t: S.dropout(t, 3), n=60)
    increasing = [d["dropout"] for d in draws if isinstance(d["dropout"], list)]
    assert increasing, "no increasing schedule sampled"
    for p in increasing:
        assert len(p) == 3 and p[0] <= p[1] <= p[2] <= 0.8


def test_regularization_kinds():
    draws = sample(S.regularization, n=60)
    kinds = {(d["weight_decay"] > 0, d["l1"] > 0) for d in draws}
    assert kinds == {(False, False), (True, False), (False, True), (True, True)}


def test_sampled_architectures_build_and_run():
    def fn(t):
        p = S.conv_blocks(t)
        p.update(S.layers(t))
        p.update(S.dropout(t, p["conv_blocks"]))
        return p

    for p in sample(fn, n=12):
        cfg = RunConfig.from_flat(p)
        model = build_model(cfg.model)
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
