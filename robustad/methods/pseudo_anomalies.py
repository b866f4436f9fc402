"""Pseudo-anomalies: hard transformations Υ_k that turn a normal image into an outlier.

Usable by any method. A :class:`PseudoAnomalies` object holds K groups: group 0 is
the identity, groups 1..K-1 are hard transforms. The set and K are parameters;
``"auto"`` follows COBRA's resolution defaults (docs/METHODS.md: rotations by 90°, 180°,
270°, K = 4, for images ≤ 64 px; one CutPaste "scar" group, K = 2, above).

Every transform takes images (N,C,H,W) in [0,1] and a ``torch.Generator`` and is
deterministic given the generator's seed. ``shared=True`` draws one set of random
parameters and applies it to every image, which the anomaly scores of COBRA/CSI
need (the score must depend on the image alone, not on a per-call random draw).

The colour and geometry primitives the transforms are built from (rotation, affine
resampling, colour jitter, greyscale, the random helpers) live in
:mod:`robustad.methods.views`, beside the light augmentations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robustad.methods.box import clamp_box
from robustad.methods.views import _affine_sample, _expand, _rand, colour_jitter, grey, rotate

TRANSFORMS = ("rotation", "scar", "cutout", "permutation", "elastic")


def scar_components(
    x: Tensor,
    generator: torch.Generator | None = None,
    shared: bool = False,
    black_prob: float = 0.15,
    blur_prob: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """The CutPaste "scar" patch and its paste mask after the geometric transforms.

    A thin rectangle (width 7–40 px, height 10–40 px at 224 px, scaled with the image
    size) is cut at a random place, colour-jittered (brightness, contrast, saturation
    ×[0.2, 1.8], hue ±0.2 on RGB), greyed with p 0.2, blurred with p ``blur_prob``, and set black
    with p ``black_prob``. Then one geometric transform (a horizontal flip with p 0.5 and
    a rotation by a random angle in [-45°, 45°]) is applied to the stack [patch; mask],
    so the two coincide (the public release flips the patch but not its mask).

    Returns ``patch`` (N,C,H,W) and ``mask`` (N,1,H,W) on a canvas of the image size,
    centred at the paste position, and the pasted positions (N,2) in pixels.
    """
    n, c, h, w = x.shape
    m = 1 if shared else n
    s = min(h, w) / 224.0
    pw = torch.clamp((_rand(m, generator, 7, 40) * s).round(), min=1).long()
    ph = torch.clamp((_rand(m, generator, 10, 40) * s).round(), min=2).long()
    cut_y = (_rand(m, generator) * (h - ph + 1).float()).floor().long()
    cut_x = (_rand(m, generator) * (w - pw + 1).float()).floor().long()
    paste_y = _rand(m, generator, 0, h)
    paste_x = _rand(m, generator, 0, w)
    angle = _rand(m, generator, -math.pi / 4, math.pi / 4)
    flip = _rand(m, generator) < 0.5
    bright = _rand(m, generator, 0.2, 1.8)
    contr = _rand(m, generator, 0.2, 1.8)
    satur = _rand(m, generator, 0.2, 1.8)
    hue = _rand(m, generator, -0.2, 0.2)
    to_grey = _rand(m, generator) < 0.2
    blur = _rand(m, generator) < blur_prob
    black = _rand(m, generator) < black_prob

    idx = torch.arange(n) if not shared else torch.zeros(n, dtype=torch.long)
    yy = torch.arange(h).view(1, h, 1)
    xx = torch.arange(w).view(1, 1, w)
    # Mask of the cut rectangle in the source image, (N,1,H,W).
    cut_mask = (
        (yy >= cut_y[idx].view(-1, 1, 1)) & (yy < (cut_y + ph)[idx].view(-1, 1, 1))
        & (xx >= cut_x[idx].view(-1, 1, 1)) & (xx < (cut_x + pw)[idx].view(-1, 1, 1))
    ).unsqueeze(1).to(x.dtype).to(x.device)  # fmt: skip
    patch = x * cut_mask
    p = {k: v[idx].to(x.device) for k, v in dict(b=bright, c=contr, s=satur, h=hue).items()}
    patch = colour_jitter(patch, p["b"], p["c"], p["s"], p["h"], region=cut_mask)
    gmask = to_grey[idx].to(x.device).view(-1, 1, 1, 1)
    patch = torch.where(gmask, grey(patch).expand_as(patch), patch)
    bmask = blur[idx].to(x.device).view(-1, 1, 1, 1)
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    k = (k[:, None] * k[None, :] / 16).expand(c, 1, 3, 3)
    blurred = F.conv2d(F.pad(patch, (1, 1, 1, 1), mode="replicate"), k, groups=c) * cut_mask
    patch = torch.where(bmask, blurred, patch)
    patch = torch.where(black[idx].to(x.device).view(-1, 1, 1, 1), torch.zeros_like(patch), patch)

    # One geometric transform for the stack [patch; mask]: move the cut centre to the
    # canvas centre, flip, rotate, then move to the paste position. affine_grid maps
    # output coordinates to input coordinates, so the matrix is the inverse map.
    cy = (cut_y + ph.float() / 2)[idx]
    cx = (cut_x + pw.float() / 2)[idx]
    ty, tx = paste_y[idx], paste_x[idx]
    a = angle[idx]
    sgn = torch.where(flip[idx], -1.0, 1.0)
    cos, sin = torch.cos(a), torch.sin(a)
    # Normalised coordinates u = 2p/size - 1; output point (uo) → input point (ui):
    # ui = c_in + R^-1 diag(sgn,1) (uo - c_out) in pixel space, scaled per axis.
    sx, sy = w / 2.0, h / 2.0
    r00, r01 = cos * sgn, sin * sgn
    r10, r11 = -sin, cos
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = r00
    theta[:, 0, 1] = r01 * sy / sx
    theta[:, 1, 0] = r10 * sx / sy
    theta[:, 1, 1] = r11
    c_in = torch.stack([cx / sx - 1, cy / sy - 1], 1)
    c_out = torch.stack([tx / sx - 1, ty / sy - 1], 1)
    theta[:, :, 2] = c_in - (theta[:, :, :2] @ c_out.unsqueeze(-1)).squeeze(-1)
    stack = torch.cat([patch, cut_mask], 1)
    moved = _affine_sample(stack, theta.to(x.device), (h, w))
    pos = torch.stack([ty, tx], 1)
    return moved[:, :c], moved[:, c:], pos


def scar(x: Tensor, generator: torch.Generator | None = None, shared: bool = False) -> Tensor:
    """CutPaste "scar" (Li et al., CVPR 2021): paste a transformed thin patch elsewhere."""
    patch, mask, _ = scar_components(x, generator, shared)
    return clamp_box(x * (1 - mask) + patch)


def cutout(x: Tensor, generator: torch.Generator | None = None, shared: bool = False) -> Tensor:
    """Zero a random square of side 1/4–1/2 of the image (DeVries & Taylor, 2017)."""
    n, _, h, w = x.shape
    m = 1 if shared else n
    side = (_rand(m, generator, 0.25, 0.5) * min(h, w)).round().clamp(min=1)
    y0 = (_rand(m, generator) * (h - side + 1)).floor()
    x0 = (_rand(m, generator) * (w - side + 1)).floor()
    side, y0, x0 = (_expand(t, n, shared).view(-1, 1, 1) for t in (side, y0, x0))
    yy = torch.arange(h).view(1, h, 1)
    xx = torch.arange(w).view(1, 1, w)
    hole = (yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)
    return x * (~hole).unsqueeze(1).to(x.dtype).to(x.device)


def permutation(x: Tensor, generator: torch.Generator | None = None, shared: bool = False) -> Tensor:
    """Cut-permutation: swap the two halves of the image, top/bottom or left/right at random."""
    n, _, h, w = x.shape
    vertical = _expand((_rand(1 if shared else n, generator) < 0.5), n, shared).to(x.device)
    swapped_v = torch.roll(x, h // 2, dims=-2)
    swapped_h = torch.roll(x, w // 2, dims=-1)
    return torch.where(vertical.view(-1, 1, 1, 1), swapped_v, swapped_h)


def elastic(
    x: Tensor,
    generator: torch.Generator | None = None,
    shared: bool = False,
    alpha: float = 0.25,
    sigma: float = 0.1,
) -> Tensor:
    """Elastic distortion (Simard et al., 2003): a smoothed random displacement field.

    ``alpha``: displacement amplitude and ``sigma``: smoothing width, both as fractions
    of the image size.
    """
    n, _, h, w = x.shape
    m = 1 if shared else n
    field = torch.rand(m, 2, h, w, generator=generator) * 2 - 1
    radius = max(1, int(3 * sigma * min(h, w)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * (sigma * min(h, w)) ** 2))
    k = k / k.sum()
    field = F.conv2d(
        F.pad(field, (radius, radius, 0, 0), mode="reflect"),
        k.view(1, 1, 1, -1).expand(2, 1, 1, -1),
        groups=2,
    )
    field = F.conv2d(
        F.pad(field, (0, 0, radius, radius), mode="reflect"),
        k.view(1, 1, -1, 1).expand(2, 1, -1, 1),
        groups=2,
    )
    field = field / field.flatten(1).abs().amax(1).clamp(min=1e-8).view(-1, 1, 1, 1) * alpha * 2
    field = _expand(field, n, shared).to(x.device).to(x.dtype)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device, dtype=x.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], -1).unsqueeze(0) + field.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def default_transforms(image_size: int) -> tuple[list[str], int]:
    """COBRA's defaults (docs/METHODS.md): rotations with K = 4 up to 64 px, one scar group (K = 2) above."""
    return (["rotation"], 4) if image_size <= 64 else (["scar"], 2)


class PseudoAnomalies:
    """K transformation groups: 0 = identity, 1..K-1 = hard transforms.

    ``transforms``: ``"auto"`` or a comma-separated list / list of names from
    :data:`TRANSFORMS`. ``rotation`` contributes the groups 90°, 180°, 270° (as many
    as K needs); every other name contributes one group. ``groups`` (K) defaults to
    1 + the number of groups the list provides (K = 4 for rotations alone).
    """

    def __init__(self, transforms: str | list[str] = "auto", groups: int | None = None, image_size: int = 32):
        if transforms == "auto":
            names, k_default = default_transforms(image_size)
        else:
            names = (
                [t.strip() for t in transforms.split(",")]
                if isinstance(transforms, str)
                else list(transforms)
            )
            unknown = [t for t in names if t not in TRANSFORMS]
            if unknown or not names:
                from robustad.errors import UserError

                raise UserError(
                    f"unknown pseudo-anomaly transform(s) {unknown or names}; "
                    f"choose from {', '.join(TRANSFORMS)}"
                )
            k_default = 1 + sum(3 if t == "rotation" else 1 for t in names)
        k = int(groups) if groups is not None else k_default
        slots: list[tuple[str, int]] = []
        for t in names:
            slots += [(t, q) for q in (1, 2, 3)] if t == "rotation" else [(t, 0)]
        if not 2 <= k <= 1 + len(slots):
            from robustad.errors import UserError

            raise UserError(f"{k} groups do not fit the transforms {names}; give 2 ≤ K ≤ {1 + len(slots)}")
        if k == 2 and names[0] == "rotation":
            slots = [("rotation", 2)]  # with one rotation group, 180° is the unambiguous one
        self.names = names
        self.groups = k
        self.slots = slots[: k - 1]

    def describe(self) -> str:
        parts = [f"rot{90 * q}" if t == "rotation" else t for t, q in self.slots]
        return f"K={self.groups}: identity, " + ", ".join(parts)

    def apply(
        self, x: Tensor, group: int, generator: torch.Generator | None = None, shared: bool = False
    ) -> Tensor:
        """Υ_group(x) for images (N,C,H,W) in [0,1]; group 0 is the identity."""
        if group == 0:
            return x
        name, q = self.slots[group - 1]
        if name == "rotation":
            return rotate(x, q)
        fn = {"scar": scar, "cutout": cutout, "permutation": permutation, "elastic": elastic}[name]
        return fn(x, generator, shared)

    def expand(self, x: Tensor, generator: torch.Generator | None = None, shared: bool = False) -> Tensor:
        """All K groups stacked group-major: (K·N,C,H,W), group k at rows k·N..(k+1)·N."""
        return torch.cat([self.apply(x, k, generator, shared) for k in range(self.groups)])
