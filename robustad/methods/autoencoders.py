"""Convolutional autoencoder stacks shared by the reconstruction-based methods.

One encoder/decoder pair, used by PrincipaLS (``principals.py``, between the two it
puts its principal latent space) and APAE (``apae.py``, which adds a linear
bottleneck and optimises the latent at test time):

    encoder: conv3×3 (C→w1)–BN–ReLU – conv3×3 (w1→w1)–BN–ReLU – [max-pool 2] –
             conv3×3 (w1→w2)–BN–ReLU – conv3×3 (w2→v) – sigmoid – [max-pool 2]
    decoder: [nearest upsample] – conv (v→w2)–BN–ReLU – conv (w2→w1)–BN–ReLU –
             [nearest upsample] – conv (w1→w1)–BN–ReLU – conv3×3 (w1→C) – sigmoid

The bracketed poolings (and their upsamplings) are present for ``pools`` ≥ 1 and
≥ 2; the upsamplings restore the exact sizes, so odd sizes (28 → 14 → 7) round-trip.
The latent is a v×h×w map in [0,1]; the reconstruction is in (0,1).
"""

from __future__ import annotations

from torch import nn


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def pooled_sizes(h: int, w: int, pools: int) -> list[tuple[int, int]]:
    """The feature-map sizes after 0, 1, …, ``pools`` 2× max-poolings (floor division)."""
    sizes = [(h, w)]
    for _ in range(pools):
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


def conv_autoencoder_layers(
    channels: int, h: int, w: int, widths: tuple[int, int], latent_channels: int, pools: int
) -> tuple[list[nn.Module], list[nn.Module], tuple[int, int]]:
    """The encoder's and decoder's layers (created in that order: the initial weights
    depend on it) and the latent grid's size (h, w) for C×H×W inputs."""
    if not 0 <= pools <= 2:
        raise ValueError(f"pools must be 0, 1 or 2, got {pools!r}")
    w1, w2 = (int(v) for v in widths)
    v = int(latent_channels)
    sizes = pooled_sizes(h, w, pools)
    enc: list[nn.Module] = [*conv_bn_relu(channels, w1), *conv_bn_relu(w1, w1)]
    if pools >= 1:
        enc.append(nn.MaxPool2d(2))
    enc += [*conv_bn_relu(w1, w2), nn.Conv2d(w2, v, 3, padding=1), nn.Sigmoid()]
    if pools >= 2:
        enc.append(nn.MaxPool2d(2))
    dec: list[nn.Module] = []
    if pools >= 2:
        dec.append(nn.Upsample(size=sizes[1], mode="nearest"))
    dec += [*conv_bn_relu(v, w2), *conv_bn_relu(w2, w1)]
    if pools >= 1:
        dec.append(nn.Upsample(size=sizes[0], mode="nearest"))
    dec += [*conv_bn_relu(w1, w1), nn.Conv2d(w1, channels, 3, padding=1), nn.Sigmoid()]
    return enc, dec, sizes[-1]
