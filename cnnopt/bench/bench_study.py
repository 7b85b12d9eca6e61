"""The study `cnnopt bench` runs: report R2's FashionMNIST CNN, with a reduced search space.

A study file (loaded with ``Study.load``, never imported): the bench overrides the sampler, the
pruner, the subset and the epochs per trial for each variant it compares, so all variants search
exactly this space on exactly the same data. The space is fashion_cnn_bn's, cut down to two conv
blocks of one conv each (so a ``--quick`` run fits in minutes on a 2-core CPU) but keeping what
makes a search hard: optimizer families whose good learning rates differ by 100x, BN placement,
width, kernel size, dropout, batch size and R2's extra dense layer.
"""

from cnnopt import space as S

name = "bench_fashion"
dataset = "fashion_mnist"
family = "cnn"
conv_blocks = 2
convs_per_block = 1
epochs = 4
val_fraction = 0.2
split_seed = 0  # one fixed subset and split for every variant and seed

metric = "val_accuracy"
direction = "maximize"
sampler = "tpe"  # cnnopt's defaults, as in studies/fashion_cnn_bn.py
pruner = "successive_halving"
n_startup_trials = 5
min_resource = 1
reduction_factor = 2
seed = 0


def space(trial):
    p = S.optimizer(trial, choices=("adam", "adamw", "sgd_momentum", "rmsprop"), lr=(1e-4, 1e-1))
    p["batch_size"] = trial.suggest_categorical("batch_size", [64, 128, 256])
    base = trial.suggest_categorical("base_filters", [8, 16, 32])
    p["filters"] = [base, 2 * base]
    p["kernel_size"] = trial.suggest_categorical("kernel_size", [3, 5])
    p["batchnorm"] = trial.suggest_categorical("batchnorm", ["none", "before", "after"])
    p["activation"] = trial.suggest_categorical("activation", ["relu", "elu", "tanh"])
    p["dropout"] = trial.suggest_float("dropout", 0.0, 0.5)
    width = trial.suggest_categorical("l1", [0, 64, 128])  # R2's extra dense layer
    p["hidden"] = [width] if width else []
    return p
