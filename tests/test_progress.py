"""Progress off a terminal: a log gets one line per epoch and one per finished trial."""

from types import SimpleNamespace

from cnnopt.progress import RunDisplay


def _study():
    settings = SimpleNamespace(direction="maximize", metric="val_accuracy")
    return SimpleNamespace(name="s", settings=settings)


def test_off_a_terminal_every_epoch_and_every_trial_end_is_a_line(capsys):
    with RunDisplay(_study(), "storage/s.journal", n_workers=1, n_trials=1) as display:
        display.update({"event": "ready", "worker": 0})
        display.update({"event": "start", "worker": 0, "trial": 3})
        for epoch, value in ((1, 0.81), (2, 0.8625)):
            display.update(
                {"event": "epoch", "worker": 0, "trial": 3, "epoch": epoch, "epochs": 10,
                 "value": value}
            )  # fmt: skip
        display.update({"event": "end", "worker": 0, "trial": 3, "state": "PRUNED",
                        "value": None, "reason": "pruned at epoch 2"})  # fmt: skip
    lines = capsys.readouterr().err.splitlines()
    assert "trial    3 epoch 1/10 val_accuracy 0.8100  (worker 0)" in lines
    assert "trial    3 epoch 2/10 val_accuracy 0.8625  (worker 0)" in lines
    assert any(line.startswith("trial    3 pruned") and "1/1 done" in line for line in lines)


def test_no_progress_prints_nothing(capsys):
    with RunDisplay(_study(), "storage/s.journal", n_workers=1, n_trials=1, enabled=False) as d:
        d.update({"event": "epoch", "worker": 0, "trial": 0, "epoch": 1, "value": 0.5})
    assert capsys.readouterr().err == ""
