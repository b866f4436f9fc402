"""Image views: the light augmentations and the colour/geometry primitives they share.

The light (SimCLR-style) augmentations of CSI and COBRA (flip, random resized crop,
colour jitter, greyscale; docs/METHODS.md) and the primitives they are made of:
rotation, affine resampling, colour jitter, hue rotation, greyscale and the small
random helpers. They are separate from :mod:`robustad.methods.pseudo_anomalies`
(the *shifting* transformations Υ_k, built from these primitives) and from the
contrastive model, because other methods use them too (MSAD's views in
``feature_knn.py``, DRAEM's colour ops in ``draem.py``).

The functions take images (N,C,H,W) in [0,1] and are differentiable in them;
random parameters are drawn on the CPU from a ``torch.Generator``, so a seed gives
the same views on every device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robustad.methods.box import clamp_box


# -- small random helpers -----------------------------------------------------------------
def _rand(n: int, generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> Tensor:
    # Always drawn on the CPU so a seed gives the same parameters on every device.
    return low + (high - low) * torch.rand(n, generator=generator)


def _expand(params: Tensor, n: int, shared: bool) -> Tensor:
    return params[:1].expand(n, *params.shape[1:]) if shared else params


# -- geometry -----------------------------------------------------------------------------
def rotate(x: Tensor, quarter_turns: int) -> Tensor:
    """Rotation by ``quarter_turns`` × 90° (counter-clockwise); exact, no interpolation."""
    return torch.rot90(x, quarter_turns, dims=(-2, -1))


def _affine_sample(x: Tensor, theta: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


# -- colour -------------------------------------------------------------------------------
def grey(x: Tensor) -> Tensor:
    """ITU-R 601 luma, (N,1,H,W); grey images are returned as they are."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def colour_jitter(
    x: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor,
    region: Tensor | None = None,
) -> Tensor:
    """Per-image colour jitter, differentiable in x. Factors are (N,) tensors.

    brightness multiplies; contrast blends with the mean grey level (of ``region``
    when given, of the image otherwise); saturation blends with the grey image; hue
    rotates the chroma plane of YIQ by ``hue``·2π (a linear stand-in for the HSV hue
    shift). Saturation and hue do nothing on grey images. Output clamped to [0,1] by
    :func:`~robustad.methods.box.clamp_box`, which keeps the gradient at the bounds.
    """
    v = lambda t: t.view(-1, 1, 1, 1).to(x.dtype)  # noqa: E731
    x = clamp_box(x * v(brightness))
    g = grey(x)
    if region is None:
        mean = g.mean(dim=(1, 2, 3), keepdim=True)
    else:
        mean = (g * region).sum(dim=(1, 2, 3), keepdim=True) / region.sum(dim=(1, 2, 3), keepdim=True).clamp(
            min=1
        )
    x = clamp_box(mean + v(contrast) * (x - mean))
    if region is not None:
        x = x * region
    if x.shape[1] == 3:
        g = grey(x)
        x = clamp_box(g + v(saturation) * (x - g))
        x = hue_rotate(x, hue)
        if region is not None:
            x = x * region
    return x


def hue_rotate(x: Tensor, hue: Tensor) -> Tensor:
    """Rotate the chroma of RGB images (N,3,H,W) by ``hue`` (N,) turns in YIQ space."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        dtype=x.dtype,
        device=x.device,
    )
    from_yiq = torch.linalg.inv(to_yiq)
    a = hue.to(x.dtype).to(x.device) * 2 * math.pi
    cos, sin = torch.cos(a), torch.sin(a)
    rot = torch.zeros(len(a), 3, 3, dtype=x.dtype, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    m = from_yiq @ rot @ to_yiq  # (N,3,3)
    return clamp_box(torch.einsum("nij,njhw->nihw", m, x))


# -- light augmentations ------------------------------------------------------------------
#: columns of an augmentation parameter row (one row per image, or per test view)
AUG_COLUMNS = ("flip", "crop_w", "crop_h", "crop_cx", "crop_cy", "bright", "contr", "satur", "hue", "grey")


def sample_light_aug_params(
    n: int,
    generator: torch.Generator,
    crop: bool,
    fixed_crop_scale: float | None = None,
    min_crop_scale: float = 0.08,
) -> Tensor:
    """Parameters of the light augmentations (docs/METHODS.md), (n, len(AUG_COLUMNS)).

    Horizontal flip p 0.5; colour jitter (brightness, contrast, saturation ×[0.6, 1.4],
    hue ±0.1) with p 0.8 (factors 1 and 0 otherwise); greyscale p 0.2; with ``crop``,
    a random resized crop (area scale ``min_crop_scale``–1, aspect 3/4–4/3), or a square crop of
    area ``fixed_crop_scale`` (the test views) at a random place. Crop sizes and
    centres are in normalised [-1,1] image coordinates.
    """
    r = lambda lo=0.0, hi=1.0: lo + (hi - lo) * torch.rand(n, generator=generator)  # noqa: E731
    flip = (r() < 0.5).float()
    if crop:
        if fixed_crop_scale is not None:
            scale, log_ratio = torch.full((n,), float(fixed_crop_scale)), torch.zeros(n)
        else:
            scale, log_ratio = r(min_crop_scale, 1.0), r(math.log(3 / 4), math.log(4 / 3))
        ratio = log_ratio.exp()
        cw = (scale * ratio).sqrt().clamp(max=1.0)
        ch = (scale / ratio).sqrt().clamp(max=1.0)
        cx = (r() * 2 - 1) * (1 - cw)
        cy = (r() * 2 - 1) * (1 - ch)
    else:
        cw, ch, cx, cy = torch.ones(n), torch.ones(n), torch.zeros(n), torch.zeros(n)
    jitter = r() < 0.8
    one = torch.ones(n)
    bright = torch.where(jitter, r(0.6, 1.4), one)
    contr = torch.where(jitter, r(0.6, 1.4), one)
    satur = torch.where(jitter, r(0.6, 1.4), one)
    hue = torch.where(jitter, r(-0.1, 0.1), torch.zeros(n))
    to_grey = (r() < 0.2).float()
    return torch.stack([flip, cw, ch, cx, cy, bright, contr, satur, hue, to_grey], 1)


def apply_light_aug(x: Tensor, params: Tensor) -> Tensor:
    """Apply per-image augmentation parameters (N, len(AUG_COLUMNS)) to x (N,C,H,W) in [0,1].

    Differentiable in x (crops and flips by bilinear resampling, jitter by arithmetic),
    so attacks and scores can differentiate through the augmented views. A row with
    flip 0, full crop, factors 1, hue 0, grey 0 is the identity, exactly: it neither
    resamples nor clamps, so the gradient at pixels equal to 0 or 1 is not masked.
    """
    p = params.to(x.device, x.dtype)
    n = x.shape[0]
    sgn = 1 - 2 * p[:, 0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = p[:, 1] * sgn
    theta[:, 1, 1] = p[:, 2]
    theta[:, 0, 2] = p[:, 3]
    theta[:, 1, 2] = p[:, 4]
    identity_crop = bool((p[:, 1:3] == 1).all())
    if identity_crop:
        # Pure flips: exact, no interpolation blur.
        x = torch.where(p[:, 0].view(-1, 1, 1, 1) > 0.5, x.flip(-1), x)
    else:
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Rows without jitter (factors 1, hue 0, e.g. the central test view) skip it: it
    # would return x only up to float rounding, through clamps an attack must not see.
    no_jitter = (p[:, 5] == 1) & (p[:, 6] == 1) & (p[:, 7] == 1) & (p[:, 8] == 0)
    if not bool(no_jitter.all()):
        jittered = colour_jitter(x, p[:, 5], p[:, 6], p[:, 7], p[:, 8])
        x = torch.where(no_jitter.view(-1, 1, 1, 1), x, jittered)
    if x.shape[1] == 3:
        x = torch.where(p[:, 9].view(-1, 1, 1, 1) > 0.5, grey(x).expand_as(x), x)
    return x
