"""Encoders shared by the methods (one place for each backbone)."""

from __future__ import annotations

from torch import Tensor, nn


class ConvEncoder(nn.Module):
    """A small LeNet-style encoder: ``depth`` × (conv3×3 → BN → LeakyReLU [→ max-pool]).

    Pools while the feature map is at least 8 px, then average-pools to at most
    4×4 and maps linearly to ``rep_dim``. ``bias=False`` gives the bias-free
    network Deep SVDD needs (a bias lets the network map everything onto the
    centre, the "hypersphere collapse" of Ruff et al. 2018); BatchNorm is then
    non-affine for the same reason. Input (N,C,H,W) → (N, rep_dim).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        width: int = 16,
        depth: int = 3,
        rep_dim: int = 32,
        bias: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for i in range(depth):
            out = width * 2**i
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=bias),
                nn.BatchNorm2d(out, eps=1e-4, affine=bias),
                nn.LeakyReLU(0.1),
            ]
            if size >= 8:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = out
        if size > 4:
            layers.append(nn.AdaptiveAvgPool2d(4))
            size = 4
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * size * size, rep_dim, bias=bias)
        self.rep_dim = rep_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))
