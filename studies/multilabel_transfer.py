"""Multi-label images with frozen vs fine-tuned backbones, report R5 (Keras).

R5: 20 labels, 31,925 train / 15,516 test images. Baseline 2x(2 conv + BN + dropout + pool) + dense
512 + sigmoid; lr {1e-3, 1e-5} x weight decay {1e-3, 1e-6}; dropout 0.4/0.6; augmentation (rotation
40, shear 0.2, shifts 0.1, h-flip). Transfer learning with VGG16 / ResNet50 / MobileNet, frozen
backbone vs fine-tuned top layers, lr 1e-5, wd 1e-6, early stopping: ~94-96% by R5's custom
accuracy (a prediction counts when it is a non-empty subset of the true labels).

Here: sigmoid outputs and BCE loss; the study optimises R5's custom accuracy (subset accuracy and
micro/macro F1 are stored per epoch too, and any of them can be the metric). Searched: backbone,
how much of it trains (frozen / last block / all), lr, weight decay, head dropout, augmentation.
Data: --data-dir with the images and labels.csv (`image,labels` with space-separated label names).
`pretrained` is off because ImageNet weights need a download; see asl_transfer.py.

    cnnopt run studies/multilabel_transfer.py --data-dir ~/data/r5 --workers 2
"""

name = "multilabel_transfer"
dataset = "multilabel_csv"
label_csv = "labels.csv"
image_size = 64
pretrained = False
metric = "val_custom_accuracy"
threshold = 0.5
optimizer = "adam"
epochs = 10
patience = 3  # early stopping on validation loss, as R5 did

# cnnopt's default pruner (successive halving, first rung at 30% of epochs): chosen by replaying
# studies on tabulated learning curves, where pruning from epoch 1 lost accuracy (benchmarks/README.md).
pruner = "successive_halving"
n_trials = 30


def space(trial):
    p = {
        "family": trial.suggest_categorical("family", ["resnet18", "mobilenet_v3_small", "vgg16"]),
        "freeze": trial.suggest_categorical("freeze", ["backbone", "last:1", "none"]),
        "lr": trial.suggest_float("lr", 1e-5, 1e-3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
        "dense_dropout": trial.suggest_categorical("dense_dropout", [0.0, 0.4, 0.6]),
    }
    if trial.suggest_categorical("augment", [False, True]):
        p.update(rotation=40.0, translate=0.1, hflip=True)  # R5's (shear is not offered)
    return p
