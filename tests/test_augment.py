import pytest
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


def class_images(n=64, classes=4):
    """Each class its own random image, so a mixed image shows which two images it was made of."""
    patterns = torch.rand(classes, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % classes
    return patterns[y].clone(), y, patterns


def test_mixup_blends_each_image_with_the_partner_its_label_names():
    x, y, patterns = class_images()
    out, soft = make_augment(AugmentConfig(mixup=0.4), n_classes=4)(x, y)
    assert soft.shape == (64, 4) and torch.allclose(soft.sum(1), torch.ones(64))
    assert not torch.equal(out, x)  # images changed
    mixed = 0
    for i in range(64):
        own = soft[i, y[i]]
        others = [c for c in range(4) if c != y[i] and soft[i, c] > 0]
        if not others:  # mixed with an image of its own class (or lambda of 1): unchanged
            assert torch.allclose(out[i], x[i], atol=1e-6)
            continue
        (partner,) = others  # exactly one other image's label, with the weight 1 - lambda
        mixed += 1
        want = own * patterns[y[i]] + soft[i, partner] * patterns[partner]
        assert torch.allclose(out[i], want, atol=1e-5), i
    assert mixed > 32  # labels really are mixed, not one-hot


def test_cutmix_pastes_the_share_of_the_partner_its_label_gives():
    x, y, patterns = class_images()
    out, soft = make_augment(AugmentConfig(cutmix=1.0), n_classes=4, seed=1)(x, y)
    assert torch.allclose(soft.sum(1), torch.ones(64))
    mixed = 0
    for i in range(64):
        others = [c for c in range(4) if c != y[i] and soft[i, c] > 0]
        if not others:
            continue
        (partner,) = others
        mixed += 1
        from_partner = (out[i] == patterns[partner]) & (out[i] != patterns[y[i]])
        from_self = out[i] == patterns[y[i]]
        assert bool((from_partner | from_self).all())  # every pixel from one of the two images
        share = from_partner.float().mean()
        assert float(share) == pytest.approx(float(soft[i, partner]), abs=1e-6)
    assert mixed > 32


def test_multilabel_mixup_mixes_multi_hot_targets():
    x, _, _ = class_images()
    y = (torch.rand(64, 5, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    out, mixed = make_augment(AugmentConfig(mixup=0.4), n_classes=5, multilabel=True, seed=2)(x, y)
    assert mixed.shape == y.shape and mixed.min() >= 0 and mixed.max() <= 1
    assert not torch.equal(out, x) and not torch.equal(mixed, y)
    fractional = (mixed > 0) & (mixed < 1)
    assert fractional.any()  # soft targets, not the inputs' 0/1
    # one lambda for the batch: every fractional target is lambda or 1 - lambda
    values = mixed[fractional].unique()
    lam = float(values.min())
    assert torch.allclose(values, torch.tensor([lam, 1 - lam]).unique(), atol=1e-6)


def test_seeded_augmentation_is_reproducible():
    x, y = batch()
    cfg = AugmentConfig(hflip=True, rotation=10)
    a, _ = make_augment(cfg, 4, seed=3)(x, y)
    b, _ = make_augment(cfg, 4, seed=3)(x, y)
    assert torch.equal(a, b)
