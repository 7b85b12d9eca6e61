import torch

from cnnopt.augment import make_augment
from cnnopt.config import AugmentConfig


def batch(n=64):
    x = torch.zeros(n, 1, 16, 16)
    x[:, :, 4:12, 2:6] = 1.0  # an asymmetric bar
    return x, torch.arange(n) % 4


def test_all_off_is_no_augmentation():
    assert make_augment(AugmentConfig(), n_classes=4) is None


def test_each_image_gets_its_own_flip_and_shift():
    x, y = batch()
    aug = make_augment(AugmentConfig(hflip=True, crop_padding=2), n_classes=4)
    out, y2 = aug(x, y)
    assert out.shape == x.shape and torch.equal(y2, y)
    distinct = {tuple(o.flatten().nonzero().flatten().tolist()) for o in out}
    assert len(distinct) > 5  # not one shared transform for the whole batch


def test_geometry_and_photometric_keep_range():
    x, y = batch()
    cfg = AugmentConfig(
        rotation=15, scale=0.1, translate=0.1, brightness=0.3, contrast=0.3, cutout=4
    )
    out, _ = make_augment(cfg, n_classes=4)(x, y)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_mixup_and_cutmix_make_soft_labels():
    x, y = batch()
    for cfg in (AugmentConfig(mixup=0.4), AugmentConfig(cutmix=1.0)):
        out, soft = make_augment(cfg, n_classes=4)(x, y)
        assert soft.shape == (64, 4)
        assert torch.allclose(soft.sum(1), torch.ones(64))


def test_multilabel_mixup_mixes_multi_hot_targets():
    x, _ = batch()
    y = (torch.rand(64, 5) > 0.5).float()
    _, mixed = make_augment(AugmentConfig(mixup=0.4), n_classes=5, multilabel=True)(x, y)
    assert mixed.shape == y.shape and mixed.min() >= 0 and mixed.max() <= 1


def test_seeded_augmentation_is_reproducible():
    x, y = batch()
    cfg = AugmentConfig(hflip=True, rotation=10)
    a, _ = make_augment(cfg, 4, seed=3)(x, y)
    b, _ = make_augment(cfg, 4, seed=3)(x, y)
    assert torch.equal(a, b)
