"""FashionMNIST: the whole trade-off of validation accuracy against FLOPs per image.

A two-objective Optuna study (accuracy up, forward FLOPs per image down) over the space of
studies/fashion_cnn_bn.py, whose nets span 2 to 160 MFLOPs. Optuna cannot prune a
multi-objective study (its trial.report refuses); cnnopt does: a net's FLOPs are counted before
training, each epoch's accuracy is stored on the trial, and at successive halving's rungs (epochs
1, 2, 4 and 8 of 10) a trial goes on only if it ranks in the top half of the (accuracy at the rung,
FLOPs) points of the trials that reached the rung, by non-dominated sorting (MO-ASHA's order,
cnnopt/pareto.py). `cnnopt status fashion_pareto` prints the front; `cnnopt export fashion_pareto
--pareto` lists it, and `--trial N` exports the point you choose for `cnnopt train`.

    cnnopt run studies/fashion_pareto.py --workers 2
    cnnopt run studies/fashion_pareto.py --n-trials 6 --set epochs=2 --set train_subset=6000
"""

# the whole space of studies/fashion_cnn_bn.py, unchanged (a study file's folder is on the import
# path while it loads): only the settings below differ
from fashion_cnn_bn import space  # noqa: F401

name = "fashion_pareto"
dataset = "fashion_mnist"
family = "cnn"
epochs = 10
val_fraction = 0.2

# the training recipe of studies/fashion_cnn_bn.py (see there why)
schedule = "cosine"
label_smoothing = 0.1
crop_padding = 2
hflip = True
tta_flip = True

# the metric first, then the cost (params and latency_ms work alike; one or two costs)
objectives = ["val_accuracy", "flops"]
directions = ["maximize", "minimize"]
sampler = "tpe"  # multi-objective TPE; "nsgaii" is Optuna's NSGA-II
pruner = "successive_halving"  # cnnopt's rung pruner for Pareto studies; "none": train all
# Rungs from epoch 1 with MO-ASHA's order: of four settings (rule nds or cheaper, first rung 1 or
# 3) replayed on the committed pool of learning curves, the one with the largest hypervolume at
# 150 epochs on 20 selection seeds; on 40 fresh seeds it beat the same study without pruning by
# +0.056 [+0.040, +0.075] (docs/budgets-pareto.md). Unlike accuracy alone, where epoch-1 rungs
# lost the best configurations, a front gains from looking at more configurations cheaply.
min_resource = 1
reduction_factor = 2
pareto_rule = "nds"
n_startup_trials = 5
n_trials = 40
seed = 0
