"""FashionMNIST, report R2's own Ray Tune search: its grid, its model, its protocol.

R2 ran Ray Tune's random search with ASHA over batch {32,64,128} x lr {1e-4,1e-3,1e-2} x dense
width l1 {64,128,256} (27 configurations) on its CNN-BN (two 3x3 conv blocks of 32/64 filters with
BatchNorm, max-pooling, one dense layer of l1 units, Adam), 10 epochs per trial, and reached 87.4%
validation. This file is that search in cnnopt, on the subset `cnnopt bench --section search` uses
(15,000 training images split 12k/3k, split seed 0): TPE, successive halving from epoch 3, and no
configuration trained twice. 12 trials is R2's budget of 120 epochs.

    cnnopt run studies/r2_grid.py --n-trials 12 --data-dir ../shared/data/fashion-mnist
    cnnopt run studies/r2_grid.py --n-trials 12 --set sampler=random --set pruner=none  # R2's way
"""

name = "r2_grid"
dataset = "fashion_mnist"
train_subset = 15000
val_fraction = 0.2
split_seed = 0
epochs = 10

# R2's CNN-BN, fixed (see benchmarks/search/tabulate.py, which tabulates this grid)
family = "cnn"
conv_blocks = 2
filters = [32, 64]
kernel_size = 3
batchnorm = "before"
activation = "relu"
dropout = 0.0
optimizer = "adam"
weight_decay = 0.0

metric = "val_accuracy"
direction = "maximize"
n_trials = 12


def space(trial):
    return {
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "lr": trial.suggest_categorical("lr", [1e-4, 1e-3, 1e-2]),
        "hidden": [trial.suggest_categorical("l1", [64, 128, 256])],
    }
