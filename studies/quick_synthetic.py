"""A seconds-long smoke study on a synthetic in-memory dataset (no files needed)."""

name = "quick_synthetic"
dataset = "synthetic"
family = "cnn"
conv_blocks = 2
filters = [8, 16]
hidden = [32]
epochs = 3
pruner = "median"
n_trials = 4
n_startup_trials = 2


def space(trial):
    return {
        "lr": trial.suggest_float("lr", 1e-3, 3e-2, log=True),
        "batchnorm": trial.suggest_categorical("batchnorm", ["none", "after"]),
    }
