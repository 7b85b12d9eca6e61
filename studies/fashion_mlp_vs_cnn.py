"""FashionMNIST: MLP vs CNN vs CNN-BN as one categorical, report R2's three models.

R2 trained each family by hand (MLP with 2 hidden layers and dropout 82.0%, 2-conv CNN 85.7%,
CNN with BN after each conv 87.5%; batch 128, 10 epochs, Adam lr 0.01) and then tuned batch size,
learning rate and the dense width l1 with Ray Tune, once for Adam and once for SGD. Here the family,
the optimizer and R2's Ray Tune grid are searched together, so the comparison is made at each
family's own best hyperparameters instead of at one shared setting.
"""

name = "fashion_mlp_vs_cnn"
dataset = "fashion_mnist"
epochs = 10
# cnnopt's default pruner (successive halving, first rung at 30% of epochs): chosen by replaying
# studies on tabulated learning curves, where pruning from epoch 1 lost accuracy (benchmarks/README.md).
pruner = "successive_halving"
n_trials = 30

# R2's architectures: 2 conv blocks of 32/64 filters; the MLP has 2 hidden layers.
conv_blocks = 2
filters = [32, 64]


def space(trial):
    model = trial.suggest_categorical("model", ["mlp", "cnn", "cnn_bn"])
    l1 = trial.suggest_categorical("l1", [64, 128, 256])
    p = {
        "optimizer": trial.suggest_categorical("optimizer", ["adam", "sgd"]),
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
    }
    if model == "mlp":
        p.update(family="mlp", hidden=[256, l1], dense_dropout=0.2)
    else:
        p.update(family="cnn", hidden=[l1], batchnorm="after" if model == "cnn_bn" else "none")
    return p
