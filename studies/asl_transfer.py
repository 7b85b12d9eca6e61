"""ASL hand signs from image folders with torchvision backbones, report R4 (PyTorch).

R4: three folder datasets (3 classes / 9k images 200x200; 11 classes / 16.5k 400x400; 24 classes,
30k of variable size), resize + centre crop + per-dataset normalisation; ResNet-18 (11.7M params,
1.8 GFLOPs), MobileNetV3-small (2.9M) and ShuffleNetV2, from scratch and ImageNet-pretrained; Adam,
cross-entropy, grid lr {1e-2..1e-5} x batch {16,32,64,128}: 93-97% test, with batch 128 the fastest
(35 s/epoch vs 56 s at batch 16 on their GPU).

Here: the architecture is a categorical, lr is log-uniform over R4's range and batch size R4's
grid; successive halving (cnnopt's default) drops bad lr/batch pairs from epoch 3 on instead of
training the full grid.
Images are decoded once, resized to `image_size` and kept as one tensor (64 px keeps a CPU study
feasible; use 128-224 on a GPU). `pretrained` is off here because ImageNet weights need a download
(or the weight files in torch's hub cache): on a connected machine run with --set pretrained=true,
and compare the two studies as R4 compared scratch and pretrained.

    cnnopt run studies/asl_transfer.py --data-dir ~/data/asl --workers 2
    cnnopt run studies/asl_transfer.py --data-dir ~/data/asl --set pretrained=true --study-name asl_pretrained
"""

name = "asl_transfer"
dataset = "image_folder"  # root/<letter>/*.jpg, or root/train/<letter>/ + root/test/<letter>/
image_size = 64
pretrained = False
freeze = "none"
optimizer = "adam"
epochs = 10

# cnnopt's default pruner (successive halving, first rung at 30% of epochs): chosen by replaying
# studies on tabulated learning curves, where pruning from epoch 1 lost accuracy (benchmarks/README.md).
pruner = "successive_halving"
n_trials = 30


def space(trial):
    return {
        "family": trial.suggest_categorical(
            "family", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0"]
        ),
        "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128]),
    }
