"""Pretrained-backbone plumbing shared by PatchCore, ZARND and MSAD.

``ImageNetInput`` is the input pipeline *inside* the model, so the attack perturbs
native pixels in [0,1] and every step after it is differentiable: a grey image is
repeated to three channels (the attacker perturbs one channel, not three), resized
with ``interpolate`` (antialiased only when downsampling), optionally centre-cropped
(a faithful "resize 256 → crop 224"), and normalised with ImageNet's statistics.
``ResNetLayers`` runs a torchvision ResNet up to the deepest requested layer, in
eval mode and with autograd (anomalib's extractor runs under ``no_grad``, which
would hide every gradient from an attack).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetInput(nn.Module):
    """[0,1] images (N,C,H,W), C ∈ {1,3} → ImageNet-normalised RGB at the model's size.

    ``input_size`` None keeps the native size; ``resize_to`` (with ``input_size``)
    resizes to ``resize_to`` first and centre-crops ``input_size``.
    """

    def __init__(self, input_size: int | None = None, resize_to: int | None = None, mode: str = "bilinear"):
        super().__init__()
        self.input_size, self.resize_to, self.mode = input_size, resize_to, mode
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def crop_fraction(self) -> float:
        """Share of each side of the resized image that the centre crop keeps."""
        if self.input_size and self.resize_to:
            return self.input_size / self.resize_to
        return 1.0

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.input_size is not None:
            size = self.resize_to or self.input_size
            if (x.shape[-2], x.shape[-1]) != (size, size):
                down = size < max(x.shape[-2:])
                align = None if self.mode in ("nearest", "area") else False
                x = F.interpolate(x, size=(size, size), mode=self.mode, align_corners=align,
                                  antialias=down and self.mode in ("bilinear", "bicubic"))  # fmt: skip
            if self.resize_to:
                top = (size - self.input_size) // 2
                x = x[..., top : top + self.input_size, top : top + self.input_size]
        return (x - self.mean) / self.std


class ResNetLayers(nn.Module):
    """The named intermediate maps of a torchvision ResNet (``layer1``…``layer4``, ``pool``).

    ``pool`` is the global-average-pooled ``layer4`` feature (what ``fc`` would see).
    Layers after the deepest one requested are dropped, so they cost nothing.
    """

    ORDER = ("layer1", "layer2", "layer3", "layer4", "pool")

    def __init__(self, resnet: nn.Module, layers: tuple[str, ...]):
        super().__init__()
        bad = [name for name in layers if name not in self.ORDER]
        if bad:
            raise ValueError(f"unknown layer(s) {bad}; choose from {list(self.ORDER)}")
        self.layers = tuple(layers)
        self.depth = max(self.ORDER.index(name) for name in layers)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.blocks = nn.ModuleList([getattr(resnet, f"layer{i + 1}") for i in range(min(self.depth + 1, 4))])

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            out[f"layer{i + 1}"] = x
        if "pool" in self.layers:
            out["pool"] = x.mean(dim=(2, 3))
        return {name: out[name] for name in self.layers}


def channels_of(arch: str, layer: str) -> int:
    """Channels of a torchvision ResNet's layer (without building it)."""
    basic = arch in ("resnet18", "resnet34")
    base = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    c = base["layer4" if layer == "pool" else layer]
    return c if basic else 4 * c
