"""CIFAR-10 VGG-style ablations as one search, report R3 (Keras).

R3: baseline 2 conv + dense 64.9%, VGG-style 6 conv 73.7%; then one factor at a time: BN before vs
after the activation (before slightly better), batch size (256 best), init He/Glorot/zero (He best,
zero does not train), dropout constant 0.2 (79.3%) / 0.5 (80.3%) / increasing 0.2-0.5-0.7 (81.0%),
L1/L2/L1+L2 weight decay 1e-5..1e-1 (L2 robust), four activations with BN before/none/after, nine
optimizers; combined best 83.7%. Augmentation 82.2%, mixup 83.7%, cutout 81.3%, all combined 78.6%.

Here all of those factors are searched jointly (so interactions count, which one-at-a-time
comparisons miss), on R3's VGG-style net: 3 blocks of 2 convs, 32/64/128 filters, a dense layer.
Validation: a seeded 20% split (R3 used a stratified 80/20 split).

    cnnopt run studies/cifar10_vgg.py --workers 2
"""

from cnnopt import space as S

name = "cifar10_vgg"
dataset = "cifar10"
family = "cnn"
conv_blocks = 3
convs_per_block = 2
filters = [32, 64, 128]
hidden = [128]
epochs = 30

# cnnopt's default pruner (successive halving, first rung at 30% of epochs): chosen by replaying
# studies on tabulated learning curves, where pruning from epoch 1 lost accuracy (benchmarks/README.md).
pruner = "successive_halving"  # first rung at epoch 9 of 30
n_trials = 60


def space(trial):
    p = S.layers(trial, inits=("default", "he", "glorot", "zero"))
    p.update(S.dropout(trial, n_blocks=3, high=0.5))
    p.update(S.regularization(trial, strength=(1e-5, 1e-1)))
    p.update(S.optimizer(trial, lr=(1e-4, 1e-1)))
    p["batch_size"] = trial.suggest_categorical("batch_size", [64, 128, 256])
    aug = trial.suggest_categorical(
        "augmentation", ["none", "flip_shift", "cutout", "mixup", "all"]
    )
    if aug in ("flip_shift", "all"):
        p.update(hflip=True, crop_padding=4)
    if aug in ("cutout", "all"):
        p["cutout"] = 8
    if aug in ("mixup", "all"):
        p["mixup"] = 0.2
    return p
