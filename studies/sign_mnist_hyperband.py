"""Sign Language MNIST with Hyperband, report R1 (Keras).

R1: Kaggle's CSVs (label,pixel1..pixel784; 24 letters, labels 0..25 without J=9 and Z=25; one corrupt
label `200` in their copy, which cnnopt reports and drops). Path: MLP 69.4% -> conv/maxpool 82.5% ->
wide filters 86.3% -> BatchNorm after each pool and after flatten 95.7%. A manual SGD lr sweep
(1e-1: 4.6% ... 1e-2: 95.6%), then Keras Hyperband over optimizer {SGD, Adam} x lr {1e-1..1e-5},
10 epochs each: Adam 1e-4, 96.6%. Augmentation (shift, zoom, brightness, contrast; never flips or
rotations: a mirrored sign is another letter) then took it to ~100% test.

Here: the same Hyperband (Optuna's HyperbandPruner, 1..10 epochs, factor 3) over optimizer x lr x
batch size, with R1's augmentation as an on/off choice. Data: --data-dir holding
sign_mnist_train.csv and sign_mnist_test.csv.

    cnnopt run studies/sign_mnist_hyperband.py --workers 2 --data-dir ~/data/sign-mnist
"""

name = "sign_mnist_hyperband"
dataset = "sign_mnist"
bad_rows = "drop"  # R1's `200` label: reported with its row number and dropped ("error" stops)
family = "cnn"
conv_blocks = 2
filters = [32, 64]
batchnorm = "after"  # R1's best net: BN after each pool and after flatten
hidden = [128]
epochs = 10
hflip = False  # a mirrored sign is another sign

pruner = "hyperband"
min_resource = 1
reduction_factor = 3
n_trials = 40


def space(trial):
    p = {
        "optimizer": trial.suggest_categorical("optimizer", ["sgd", "adam"]),
        "lr": trial.suggest_float("lr", 1e-5, 1e-1, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128]),
    }
    if trial.suggest_categorical("augment", [False, True]):
        # R1's augmentation: shifts, zoom, brightness, contrast (no flips, no rotation)
        p.update(translate=0.1, scale=0.1, brightness=0.2, contrast=0.2)
    return p
