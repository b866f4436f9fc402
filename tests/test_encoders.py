"""Encoders: ResNet variants, the input adapter, grey handling."""

from __future__ import annotations

import pytest
import torch

from robustad.errors import UserError
from robustad.methods.encoders import ResNet, resnet_for


def test_resnet18_shape_and_stem_by_resolution():
    small, large = resnet_for(32), resnet_for(128)
    assert (small.stem_name, large.stem_name) == ("cifar", "imagenet")
    assert sum(p.numel() for p in small.parameters()) == 11_168_832  # torchvision's ResNet-18 trunk, 3×3 stem
    assert small.feature_dim == 512 and small.describe() == "resnet18 (cifar stem)"
    assert resnet_for(28, width=8, blocks=(1, 1)).feature_dim == 16


def test_grey_input_equals_the_image_repeated_to_three_channels():
    torch.manual_seed(0)
    for stem in ("cifar", "imagenet"):
        net = ResNet(width=8, blocks=(1, 1), stem=stem).eval()
        x = torch.rand(3, 1, 20, 20)
        assert torch.allclose(net(x), net(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_input_normalisation_is_the_first_layer():
    net = ResNet(width=4, blocks=(1,)).eval()
    x = torch.rand(2, 3, 8, 8)
    manual = net.pool(net.stages(net.stem((x - 0.5) / 0.5))).flatten(1)
    assert torch.allclose(net(x), manual)


def test_weights_are_never_downloaded(tmp_path):
    with pytest.raises(UserError, match="nothing is downloaded"):
        resnet_for(32, weights="resnet18-imagenet")
    net = resnet_for(32, width=4, blocks=(1,))
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    loaded = resnet_for(32, width=4, blocks=(1,), weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
