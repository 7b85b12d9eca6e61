"""The most accurate FashionMNIST CNN under 100,000 parameters.

The space of studies/fashion_cnn_bn.py (every optimizer, 2-3 conv blocks of 16 or 32 base
filters, BN placement, activation, dropout, global pooling, an optional dense layer) holds nets
from 8k to about 1M parameters; a random sample of it is half over this budget. A proposal over
the budget is never trained: its parameters are counted on the meta device before the first
epoch (no weights allocated), it is recorded as pruned at epoch 0 with its cost and an Optuna
constraint violation, and TPE, which ranks infeasible trials below every feasible one, learns to
propose inside the budget. `cnnopt status` counts the proposals that were over budget.

    cnnopt run studies/fashion_budget.py --workers 2
    cnnopt run studies/fashion_budget.py --n-trials 6 --set epochs=2 --set train_subset=6000
"""

# the whole space of studies/fashion_cnn_bn.py, unchanged (a study file's folder is on the import
# path while it loads): only the settings below differ
from fashion_cnn_bn import space  # noqa: F401

name = "fashion_budget"
dataset = "fashion_mnist"
family = "cnn"
epochs = 10
val_fraction = 0.2

# the budget: parameters of the whole net (conv, BN, dense); max_flops and max_latency_ms
# (measured at latency_batch images on the trial's device) work alike
max_params = 100_000

# the training recipe of studies/fashion_cnn_bn.py (see there why)
schedule = "cosine"
label_smoothing = 0.1
crop_padding = 2
hflip = True
tta_flip = True

metric = "val_accuracy"
direction = "maximize"
sampler = "tpe"
pruner = "successive_halving"
min_resource = 3
reduction_factor = 2
n_startup_trials = 5
n_trials = 40
seed = 0

# Warm start inside the budget: fashion_cnn_bn's all-conv net at half the width (3 blocks of 2
# conv-BN-ReLU with 16/32/64 filters and global average pooling: 72,666 parameters).
enqueue = [
    {
        "optimizer": "sgd_nesterov", "lr": 0.05, "weight_decay": 5e-4, "batch_size": 128,
        "conv_blocks": 3, "base_filters": 16, "kernel_size": 3, "convs_per_block": 2,
        "batchnorm": "before", "activation": "relu", "init": "he",
        "dropout_schedule": "constant", "dropout": 0.0, "global_pool": True, "l1": 0,
    },
]  # fmt: skip
