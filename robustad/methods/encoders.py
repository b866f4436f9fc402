"""Encoders shared by the methods (one place for each backbone)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_encoder_plan(image_size: int, depth: int) -> tuple[list[int], list[bool], int, int]:
    """The spatial sizes of ``ConvEncoder``: (size at each stage, whether the stage
    max-pools, size after the stages, size of the code map fed to the head)."""
    sizes, pooled, size = [], [], image_size
    for _ in range(depth):
        sizes.append(size)
        pooled.append(size >= 8)
        if size >= 8:
            size //= 2
    return sizes, pooled, size, min(size, 4)


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
        channels = in_channels
        sizes, pooled, after, code = conv_encoder_plan(image_size, depth)
        for i in range(depth):
            out = width * 2**i
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=bias),
                nn.BatchNorm2d(out, eps=1e-4, affine=bias),
                nn.LeakyReLU(0.1),
            ]
            if pooled[i]:
                layers.append(nn.MaxPool2d(2))
            channels = out
        if code != after:
            layers.append(nn.AdaptiveAvgPool2d(code))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * code * code, rep_dim, bias=bias)
        self.rep_dim = rep_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """The mirror of ``ConvEncoder`` (same arguments): the decoder of the autoencoder
    with which Deep SVDD's encoder is pretrained (Ruff et al. 2018).

    A linear map from the code back to the encoder's last feature map (the mirror of
    its head), then one stage per encoder stage in reverse: nearest-neighbour upsampling
    to that stage's size (where the encoder pooled or average-pooled), conv3×3 to the
    stage's input width → BN → LeakyReLU; the last stage convolves to the image's
    channels and a sigmoid maps to [0,1]. Bias-free, non-affine BatchNorm with
    ``bias=False``, like the authors' LeNet autoencoders. (Theirs reshape the code itself
    into rep_dim/16 channels at 4×4 and use 5×5 transposed convolutions; the linear map
    here lets any ``rep_dim`` and image size mirror ``ConvEncoder``.) (N, rep_dim) →
    (N,C,H,W) with H = W = ``image_size``.
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
        self.sizes, _, self.after, self.code = conv_encoder_plan(image_size, depth)
        self.channels = width * 2 ** (depth - 1)
        self.head = nn.Linear(rep_dim, self.channels * self.code * self.code, bias=bias)
        stages: list[nn.Module] = []
        for i in reversed(range(depth)):
            out = width * 2 ** (i - 1) if i > 0 else in_channels
            conv = nn.Conv2d(width * 2**i, out, 3, padding=1, bias=bias)
            if i > 0:
                bn = nn.BatchNorm2d(out, eps=1e-4, affine=bias)
                stages.append(nn.Sequential(conv, bn, nn.LeakyReLU(0.1)))
            else:
                stages.append(nn.Sequential(conv, nn.Sigmoid()))
        self.stages = nn.ModuleList(stages)

    def forward(self, z: Tensor) -> Tensor:
        h = F.leaky_relu(self.head(z), 0.1).view(len(z), self.channels, self.code, self.code)
        for stage, size in zip(self.stages, reversed(self.sizes)):
            if h.shape[-1] != size:
                h = F.interpolate(h, size=(size, size), mode="nearest")
            h = stage(h)
        return h


class InputAdapter(nn.Module):
    """The first layer of image encoders: grey → three channels, then ``(x - 0.5) / 0.5``.

    Kept inside the model so attacks perturb the native [0,1] pixels (one channel for
    grey images, as the real threat would) and ε means the same for every method.
    (N,C,H,W) in [0,1] with C ∈ {1,3} → (N,3,H,W) in [-1,1].
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - 0.5) / 0.5


class BasicBlock(nn.Module):
    """The ResNet-18/34 residual block: two 3×3 convolutions, projection shortcut on change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with BasicBlocks; ``width=64, blocks=(2,2,2,2)`` is ResNet-18.

    ``stem="cifar"``: 3×3 conv, stride 1, no max-pool (images ≤ 64 px, so a 32 px
    input keeps a 4×4 map before pooling); ``stem="imagenet"``: 7×7 conv stride 2
    and a 3×3 max-pool. Stage ``i`` has ``width·2^i`` channels. ``width`` and
    ``blocks`` give the narrower/shallower CPU variants. Input (N,C,H,W) in [0,1]
    with C ∈ {1,3}; output (N, feature_dim) after global average pooling,
    ``feature_dim = width·2^(stages-1)`` (512 for ResNet-18).
    """

    def __init__(self, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2), stem: str = "cifar"):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.adapter = InputAdapter()
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        stages: list[nn.Module] = []
        channels = width
        for i, n in enumerate(blocks):
            out = width * 2**i
            layers = [BasicBlock(channels, out, 1 if i == 0 else 2)]
            layers += [BasicBlock(out, out) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels
        self.stem_name = stem
        self.width = width
        self.blocks = tuple(blocks)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            # Grey input: convolving the three repeated channels with W equals convolving
            # the one channel with W summed over its input channels; same function, a
            # third of the stem's cost (the stem dominates small networks).
            conv = self.stem[0]
            h = F.conv2d((x - 0.5) / 0.5, conv.weight.sum(1, keepdim=True), None, conv.stride, conv.padding)
            h = self.stem[1:](h)
        else:
            h = self.stem(self.adapter(x))
        return self.pool(self.stages(h)).flatten(1)

    def describe(self) -> str:
        """A short name for result rows, e.g. ``resnet18`` or ``resnet(w16,1-1-1-1,cifar)``."""
        if self.width == 64 and self.blocks == (2, 2, 2, 2):
            return f"resnet18 ({self.stem_name} stem)"
        return f"resnet(width {self.width}, blocks {'-'.join(map(str, self.blocks))}, {self.stem_name} stem)"


def resnet_for(image_size: int, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2),
               weights: str | None = None, stem: str = "auto") -> ResNet:  # fmt: skip
    """The ResNet variant for a resolution: CIFAR stem up to 64 px, ImageNet stem above.

    ``stem``: ``"auto"`` (by resolution as just said), or ``"cifar"`` / ``"imagenet"``
    to force one (an ImageNet stem on small images is a cheap CPU variant: it works
    on a 4× downsampled map).
    ``weights``: None (random init; the suite never downloads) or the path of a local
    ``state_dict`` file for this exact architecture.
    """
    if stem == "auto":
        stem = "cifar" if image_size <= 64 else "imagenet"
    net = ResNet(width, tuple(blocks), stem)
    if weights is not None:
        from pathlib import Path

        from robustad.errors import UserError

        if not Path(weights).is_file():
            raise UserError(
                f"encoder weights file {weights} does not exist; give a local state_dict file or "
                "weights=None (random init; nothing is downloaded)"
            )
        state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(
                f"encoder weights {weights} do not fit {net.describe()}; give matching width/blocks"
            ) from exc
    return net
