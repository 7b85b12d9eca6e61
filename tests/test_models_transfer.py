import urllib.error

import pytest
import torch
from torch import nn
from torchvision.models import get_model

from cnnopt.config import TORCHVISION_FAMILIES, ModelConfig
from cnnopt.errors import ConfigError
from cnnopt.models import build_model
from cnnopt.models.transfer import MIN_SIZE_PRETRAINED, InputAdapter, weights_file


def cfg(family="resnet18", **kw):
    kw = {"in_channels": 1, "input_size": 28, "num_classes": 7, **kw}
    return ModelConfig(family=family, **kw)


@pytest.mark.parametrize("family", TORCHVISION_FAMILIES)
def test_every_family_builds_and_forwards_grey_28(family):
    model = build_model(cfg(family, freeze="backbone"))
    assert isinstance(model, InputAdapter)
    # only the new head trains: one Linear with num_classes outputs
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
    assert len(heads) == 1 and heads[0].out_features == 7
    assert sum(p.requires_grad for p in model.parameters()) == 2
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1  # from scratch: the first conv is rebuilt, not the input repeated
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 7)


def trainable(model):
    return {n.removeprefix("net.") for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_modes_resnet18():
    assert all(p.requires_grad for p in build_model(cfg()).parameters())
    m = build_model(cfg(freeze="backbone", dense_dropout=0.5))
    assert trainable(m) == {"fc.1.weight", "fc.1.bias"}
    assert isinstance(m.net.fc[0], nn.Dropout) and m.net.fc[0].p == 0.5
    m = build_model(cfg(freeze="last:1"))
    names = trainable(m)
    assert {n.split(".")[0] for n in names} == {"layer4", "fc"}
    # BatchNorm of frozen stages keeps its running statistics, even in training mode
    m.train()
    assert not m.net.layer3[0].bn1.training and m.net.layer4[0].bn1.training
    assert m.net.bn1 in m.frozen_norms
    big = build_model(cfg(freeze="last:7"))  # more than its 5 blocks: everything trains
    assert all(p.requires_grad for p in big.parameters())


def test_freeze_mobilenet_blocks():
    m = build_model(cfg("mobilenet_v3_small", freeze="last:2"))
    names = trainable(m)
    assert {
        n.rsplit(".", 2)[0] if n.startswith("features") else n.split(".")[0] for n in names
    } >= {"classifier"}
    assert any(n.startswith("features.12.") for n in names) and not any(
        n.startswith("features.11.") for n in names
    )
    assert isinstance(
        m.net.classifier[2], nn.Identity
    )  # torchvision's dropout: replaced by dense_dropout


def test_bad_freeze_and_channels():
    with pytest.raises(ConfigError, match="freeze='last:x'"):
        build_model(cfg(freeze="last:x"))
    with pytest.raises(ConfigError, match="in_channels=4"):
        build_model(cfg(pretrained=True, in_channels=4))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """torch.hub pointed at an empty temp folder, with every download refused (never reaches the network)."""
    calls = []

    def refuse(url, *a, **k):
        calls.append(url)
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tmp_path / "hub" / "checkpoints", calls


def test_pretrained_without_cached_weights_says_where_to_put_them(offline_hub):
    folder, calls = offline_hub
    with pytest.raises(ConfigError) as e:
        build_model(cfg("resnet18", pretrained=True))
    msg = str(e.value)
    assert "resnet18-f37072fd.pth are not in " + str(folder) in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg and "URLError" in msg
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


def test_pretrained_from_cache_repeats_grey_and_upsamples(offline_hub):
    folder, calls = offline_hub
    path, _ = weights_file("mobilenet_v3_small")
    assert path.parent == folder
    folder.mkdir(parents=True)
    reference = get_model("mobilenet_v3_small", weights=None)
    torch.save(reference.state_dict(), path)
    model = build_model(cfg("mobilenet_v3_small", pretrained=True, freeze="backbone"))
    assert calls == []
    first = model.net.features[0][0]
    assert first.in_channels == 3 and torch.equal(first.weight, reference.features[0][0].weight)
    seen = []
    model.net.features[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 7)
    assert seen == [(2, 3, MIN_SIZE_PRETRAINED, MIN_SIZE_PRETRAINED)]
