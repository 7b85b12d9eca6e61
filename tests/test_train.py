import copy

import pytest
import torch

from cnnopt.config import CHOICES, RunConfig
from cnnopt.data.registry import load_dataset
from cnnopt.data.tensors import split
from cnnopt.errors import TrialFailed
from cnnopt.train import Interrupted, fit, hardware, make_optimizer, make_scheduler

SMALL = {"dataset": "synthetic", "filters": [8, 16], "hidden": [16], "batch_size": 64, "epochs": 3}


def run(**overrides):
    cfg = RunConfig.from_flat({**SMALL, **overrides})
    ds = load_dataset(cfg.data)
    cfg = cfg.replace(in_channels=1, input_size=ds.image_size, num_classes=ds.num_classes)
    return fit(cfg, split(ds, 0.2, 0), device="cpu")


def test_trains_on_tiny_data_and_records_everything():
    r = run(lr=0.01, batchnorm="after")
    assert [h.epoch for h in r.history] == [1, 2, 3]
    assert r.history[-1].metrics["val_accuracy"] > 0.9
    assert r.history[-1].train_loss < r.history[0].train_loss
    assert r.params > 0 and r.flops > 0
    assert all(h.images_per_second > 0 and h.seconds > 0 for h in r.history)


def test_same_seed_same_result_on_cpu():
    a = run(seed=7, hflip=True, crop_padding=2, dropout=0.2)
    b = run(seed=7, hflip=True, crop_padding=2, dropout=0.2)
    assert [h.metrics for h in a.history] == [h.metrics for h in b.history]
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    c = run(seed=8, hflip=True, crop_padding=2, dropout=0.2)
    assert [h.train_loss for h in c.history] != [h.train_loss for h in a.history]


def test_divergence_is_a_trial_failure_not_a_crash():
    with pytest.raises(TrialFailed, match="diverged|nan|inf"):
        run(optimizer="sgd", lr=1e6, epochs=2, amp="off")


@pytest.mark.parametrize("schedule", ["step", "step_decay", "cosine", "onecycle"])
def test_schedules_change_the_learning_rate(schedule):
    model = torch.nn.Linear(2, 2)
    cfg = RunConfig.from_flat({"schedule": schedule, "epochs": 4, "step_size": 1, "lr": 0.1}).train
    opt = make_optimizer(model, cfg)
    sched, per_batch = make_scheduler(opt, cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(cfg.epochs):
        for _ in range(5 if per_batch else 1):
            opt.step()
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert len(set(lrs)) > 1


# name -> (class, momentum, nesterov); None: the class has no such option
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, 0, False),
    "sgd_momentum": (torch.optim.SGD, 0.8, False),
    "sgd_nesterov": (torch.optim.SGD, 0.8, True),
    "adam": (torch.optim.Adam, None, None),
    "adamw": (torch.optim.AdamW, None, None),
    "rmsprop": (torch.optim.RMSprop, 0.8, None),
    "adamax": (torch.optim.Adamax, None, None),
    "adagrad": (torch.optim.Adagrad, None, None),
    "adadelta": (torch.optim.Adadelta, None, None),
    "nadam": (torch.optim.NAdam, None, None),
}


def test_optimizer_table_covers_every_choice():
    assert sorted(OPTIMIZERS) == sorted(CHOICES["optimizer"])


@pytest.mark.parametrize("name", CHOICES["optimizer"])
def test_each_optimizer_name_builds_its_optimizer(name):
    cls, momentum, nesterov = OPTIMIZERS[name]
    cfg = RunConfig.from_flat(
        {"optimizer": name, "lr": 0.03, "momentum": 0.8, "weight_decay": 1e-4}
    ).train
    opt = make_optimizer(torch.nn.Linear(2, 2), cfg)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.03 and group["weight_decay"] == 1e-4
    if momentum is not None:
        assert group["momentum"] == momentum
    if nesterov is not None:
        assert group["nesterov"] is nesterov


@pytest.mark.parametrize("opt", CHOICES["optimizer"])
def test_every_optimizer_trains_one_epoch(opt):
    r = run(optimizer=opt, epochs=1, lr=0.01 if opt != "adadelta" else 1.0)
    assert r.history[0].train_loss > 0


def test_early_stopping_on_validation_loss():
    r = run(epochs=30, lr=0.05, patience=1)
    assert r.stopped_early and len(r.history) < 30


def test_l1_penalty_and_label_smoothing_raise_the_training_loss():
    base = run(epochs=1).history[0].train_loss
    assert run(epochs=1, l1=1e-3).history[0].train_loss > base
    assert run(epochs=1, label_smoothing=0.2).history[0].train_loss > base


def test_should_stop_interrupts_within_the_epoch():
    cfg = RunConfig.from_flat({**SMALL, "batch_size": 4})
    ds = load_dataset(cfg.data)
    cfg = cfg.replace(num_classes=ds.num_classes, input_size=ds.image_size)
    with pytest.raises(Interrupted):
        fit(cfg, split(ds, 0.2, 0), should_stop=lambda: True)


def test_resume_restores_weights_optimizer_and_schedule(monkeypatch):
    """A resumed fit starts its first epoch from the checkpoint's weights, optimizer state (Adam's
    moments and step count) and schedule position, and numbers its epochs on from there."""
    import copy

    from cnnopt import train

    cfg = RunConfig.from_flat({**SMALL, "epochs": 3, "schedule": "cosine", "lr": 0.01})
    ds = load_dataset(cfg.data)
    cfg = cfg.replace(num_classes=ds.num_classes, input_size=ds.image_size)
    sp = split(ds, 0.2, 0)
    saved = []
    fit(cfg, sp, on_checkpoint=lambda c: saved.append(copy.deepcopy(c)))
    ckpt = copy.deepcopy(saved[1])  # after epoch 2 of 3 (resuming trains its tensors in place)
    assert ckpt["epoch"] == 2 and ckpt["scheduler"]["last_epoch"] > 0

    seen = {}
    real = train.train_one_epoch

    def spy(model, optimizer, loader, loss_fn, tcfg, amp, scaler=None, scheduler=None, *a):
        if not seen:  # the state the resumed run trains its first epoch from
            seen["model"] = copy.deepcopy(model.state_dict())
            seen["optimizer"] = copy.deepcopy(optimizer.state_dict())
            seen["scheduler"] = copy.deepcopy(scheduler.state_dict())
            seen["lr"] = optimizer.param_groups[0]["lr"]
        return real(model, optimizer, loader, loss_fn, tcfg, amp, scaler, scheduler, *a)

    monkeypatch.setattr(train, "train_one_epoch", spy)
    r = fit(cfg, sp, resume=saved[1])
    assert [h.epoch for h in r.history] == [1, 2, 3]
    assert seen["model"].keys() == ckpt["model"].keys()
    assert all(torch.equal(seen["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    opt, want = seen["optimizer"], ckpt["optimizer"]
    assert opt["state"].keys() == want["state"].keys() and want["state"]
    for i, st in want["state"].items():
        assert torch.equal(opt["state"][i]["step"], st["step"]) and st["step"] > 0
        assert torch.equal(opt["state"][i]["exp_avg"], st["exp_avg"])
        assert torch.equal(opt["state"][i]["exp_avg_sq"], st["exp_avg_sq"])
    assert seen["scheduler"]["last_epoch"] == ckpt["scheduler"]["last_epoch"]
    assert seen["lr"] == pytest.approx(ckpt["scheduler"]["_last_lr"][0])
    assert seen["lr"] < cfg.train.lr  # two thirds down the cosine, not back at the start


@pytest.mark.parametrize(
    "capability, want",
    [
        ((6, 0), None),  # P100: no tensor cores, fp16 autocast is slower than fp32
        ((6, 1), None),  # P40, GTX 1080: fp16 arithmetic at 1/64 rate
        ((7, 0), torch.float16),
        ((7, 5), torch.float16),
        ((8, 0), torch.bfloat16),
        ((9, 0), torch.bfloat16),
    ],
)
def test_auto_precision_is_bf16_only_where_native(monkeypatch, capability, want):
    from cnnopt.config import TrainConfig
    from cnnopt.train import amp_dtype

    asked = []
    # V100 (7.0) and T4 (7.5) report bf16 "supported" (emulated, slow): that must not decide
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability
    )
    dev = torch.device("cuda:1")
    assert amp_dtype(TrainConfig(amp="auto"), dev) == want
    assert asked == [dev]  # asked of the trial's GPU, not of the current one
    assert amp_dtype(TrainConfig(amp="off"), dev) is None
    assert amp_dtype(TrainConfig(amp="bf16"), dev) == torch.bfloat16  # an explicit choice stands


def test_resume_restores_weights_optimizer_schedule_and_grad_scaler(monkeypatch):
    import cnnopt.train as T

    cfg = RunConfig.from_flat(
        {**SMALL, "epochs": 3, "amp": "fp16", "schedule": "onecycle", "optimizer": "adam"}
    )
    ds = load_dataset(cfg.data)
    cfg = cfg.replace(num_classes=ds.num_classes, input_size=ds.image_size)
    sp = split(ds, 0.2, 0)
    saved = []  # copies: a checkpoint's state dicts share the live tensors
    fit(cfg, sp, on_checkpoint=lambda c: saved.append(copy.deepcopy(c)))
    ckpt = saved[1]  # after epoch 2 of 3, as a retried trial finds it
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0  # fp16: a GradScaler ran
    ckpt["scaler"]["scale"] = 1024.0  # a scale no fresh GradScaler starts from

    seen = {}
    original = T.train_one_epoch

    def first_epoch_sees(model, optimizer, loader, loss_fn, t, amp, scaler, scheduler, *a):
        if not seen:  # the state training goes on from, before the resumed epoch changes it
            seen.update(
                model={k: v.clone() for k, v in model.state_dict().items()},
                optimizer=copy.deepcopy(optimizer.state_dict()["state"]),
                lr=optimizer.param_groups[0]["lr"],
                last_epoch=scheduler.last_epoch,
                scale=scaler.get_scale(),
            )
        return original(model, optimizer, loader, loss_fn, t, amp, scaler, scheduler, *a)

    monkeypatch.setattr(T, "train_one_epoch", first_epoch_sees)
    expected = copy.deepcopy(ckpt)  # the optimizer goes on updating the tensors it loaded
    r = fit(cfg, sp, resume=ckpt)
    assert [h.epoch for h in r.history] == [1, 2, 3]
    ckpt = expected
    for k, v in ckpt["model"].items():
        assert torch.equal(seen["model"][k], v), k
    state = ckpt["optimizer"]["state"]
    assert seen["optimizer"].keys() == state.keys() and state
    for i, s in state.items():  # Adam's moments and step count, per parameter
        assert int(seen["optimizer"][i]["step"]) == int(s["step"]) > 0
        assert torch.equal(seen["optimizer"][i]["exp_avg"], s["exp_avg"])
        assert torch.equal(seen["optimizer"][i]["exp_avg_sq"], s["exp_avg_sq"])
    assert seen["last_epoch"] == ckpt["scheduler"]["last_epoch"] > 0
    assert seen["lr"] == ckpt["optimizer"]["param_groups"][0]["lr"]
    assert seen["scale"] == 1024.0


def test_hardware_names_the_gpu_it_ran_on_only(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: asked.append(d) or "H100")
    assert hardware("cuda:1")["gpu"] == "H100"
    assert asked == [torch.device("cuda:1")]  # not GPU 0, where a query would make a context
    assert "gpu" not in hardware(torch.device("cpu")) and len(asked) == 1
