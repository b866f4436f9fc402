"""DRÆM: a discriminatively trained reconstruction embedding for surface anomaly detection
(Zavrtanik, Kristan, Skočaj, ICCV 2021), after the authors' code (``VitjanZ/DRAEM``:
``model_unet.py``, ``train_DRAEM.py``, ``test_DRAEM.py``, ``data_loader.py``, ``loss.py``).

Model (as the code)
    *Reconstructive sub-network*: an encoder–decoder without skips. Encoder stages of
    2 × [conv3×3 – BN – ReLU] at widths w·(1, 2, 4, 8, 8), w = ``rec_width`` (128),
    with a 2× max-pool between stages (4 at the published 256 px); the decoder
    upsamples bilinearly (``align_corners=True``), each time conv3×3–BN–ReLU and then
    2 × [conv3×3–BN–ReLU] narrowing towards w, and ends in a conv3×3 to the image's
    channels with no activation. *Discriminative sub-network*: a U-Net (base width
    ``disc_width`` 64, stage widths 64·(1, 2, 4, 8, 8, 8), 5 max-pools, skip
    connections) on concat(reconstruction, image), ending in 2-channel logits; the
    anomaly map M is the softmax's channel 1. Convolution weights N(0, 0.02), BatchNorm
    weights N(1, 0.02) and biases 0.

Training (as the code)
    Simulated anomalies (:func:`simulate_anomalies`): a Perlin noise map
    (:func:`perlin_noise`) at a lattice resolution 2^a × 2^b, a, b uniform in
    {``min_perlin_scale``, …, ``perlin_scale`` − 1} = {0, …, 5}, rotated by a uniform
    angle in ±90° (bilinear, zero fill) and thresholded at 0.5 gives the mask m; a
    texture t is augmented by 3 distinct random operations out of 10
    (:data:`TEXTURE_OPS`); the image becomes x·(1 − m) + m·((1 − β)·t + β·x) with
    β ~ U[0, 0.8). With probability 0.5 the image is left clean (empty mask). Before
    that the clean image itself is rotated by ±90° with probability 0.3 (it is then
    also the reconstruction target). Loss = L2(rec, clean) + (1 − SSIM(rec, clean),
    11×11 Gaussian window, σ 1.5) + focal loss (γ 2, smoothing 1e-5) of the softmax
    map against m. Adam, lr 1e-4 for both networks, batches of 8, 700 epochs (the
    README's; the released checkpoints are named ``…_800_bs8``), the learning rate
    ×0.2 at 80 % and 90 % of the epochs.

Score (as the code)
    s(x) = max over pixels of AvgPool_{k×k, stride 1, pad k//2}(M(x)), k = 21 at 256 px;
    ``anomaly_map`` is M(x) itself, at the input's size. The reconstruction is *not*
    detached on the score path (the released test script detaches it, which changes no
    value, only the gradient): the attack's gradient runs through both networks.
    BatchNorm is in eval mode, there is no clamp, threshold or argmax on the score
    path; the max over pixels is differentiable almost everywhere (the gradient flows
    through the arg-max pixel). ``surrogate_score`` is the smooth stand-in for
    adaptive attacks: τ·logsumexp over pixels of the pooled logit
    margin z₁ − z₀ (it does not saturate as the softmax does), τ =
    ``surrogate_temperature``; the attacks judge their points by the true score.

Differences (ours, recorded in ``info()`` and the registry metadata)
    * *Texture source.* The code draws textures from DTD (5,640 images), which cannot
      be downloaded here. ``anomaly_source_dir`` takes any folder of images (searched
      recursively, e.g. DTD's ``images/``), resized to the working size as the code
      does; without it the textures are synthetic: fractal Perlin colour noise
      (:func:`fractal_texture`, independent per channel). ``info()["anomaly_source"]``
      says which ("textures" or "synthetic").
    * The 10 imgaug texture operations are re-implemented in torch (approximately:
      PIL's and imgaug's exact value mappings are not reproduced, and hue/saturation
      do nothing on grey images).
    * Grey images keep one channel (the reconstruction has the image's channels, the
      discriminator sees 2·C): nothing pretrained expects three, and an attacker
      perturbs the one channel either way.
    * Inputs are scored at their native size unless ``image_size`` is set (then they
      are resized inside the model, bilinear, antialiased when shrinking, and the map
      is resized back); images stay RGB (the code reads BGR with OpenCV).
    * Small images: ``rec_pools``/``disc_pools`` ``"auto"`` keep the published 4 and 5
      poolings but no more than leave a 2×2 map (2 on 8×8 digits, 3 at 28 px); the
      upsamplings go back to the exact encoder sizes (odd sizes round-trip);
      ``pool_size="auto"`` scales the 21-pixel averaging window with the image (the odd
      number nearest 21·size/256: 1 on 8×8, 3 at 28 px, 19 at 224 px, 21 at 256 px);
      the Perlin exponents stop below log2(size), so a noise cell is at least 2 px
      (no change at 256 px).
    * The SSIM's dynamic range is fixed to 1 (the code infers it from the
      reconstruction's values, which gives 1 for images in [0, 1]).
    * A training batch of one image is skipped (BatchNorm); ``max_train`` takes a
      seeded subset of the training images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustad.errors import UserError
from robustad.methods.base import Detector, RunContext, seeded_fit_start, store_hparams
from robustad.methods.views import grey, hue_rotate
from robustad.registry import register_method

# -- Perlin noise and the simulated anomalies -------------------------------------------------


def _fade(t: Tensor) -> Tensor:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin_noise(
    shape: tuple[int, int],
    res: tuple[int, int],
    generator: torch.Generator | None = None,
    batch: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """2-D Perlin noise (H,W) in [−1, 1] on a lattice of ``res`` = (rows, columns) cells;
    ``batch=B`` gives B independent maps (B,H,W).

    The code's ``rand_perlin_2d_np``: a random unit gradient at each of the
    (res₀+1)×(res₁+1) lattice points (angles uniform, drawn from ``generator`` on the
    CPU), dot products with the offsets to the four corners of a pixel's cell, blended
    with the quintic fade 6t⁵ − 15t⁴ + 10t³, times √2. Pixel i sits at lattice
    coordinate i·res/size, so the result equals the code's when the size is a multiple
    of ``res`` and is defined for any size. Float32, computed on ``device`` (the random
    angles are drawn on the CPU whatever the device).
    """
    h, w = (int(s) for s in shape)
    ry, rx = (int(r) for r in res)
    if ry < 1 or rx < 1:
        raise ValueError(f"the Perlin lattice needs at least one cell per axis, got {res}")
    lead = () if batch is None else (int(batch),)
    angles = 2 * math.pi * torch.rand(*lead, ry + 1, rx + 1, generator=generator, dtype=torch.float64)
    angles = angles.to(device)
    gy, gx = torch.cos(angles), torch.sin(angles)  # gradient (row, column) components
    ys = torch.arange(h, dtype=torch.float64, device=angles.device) * ry / h
    xs = torch.arange(w, dtype=torch.float64, device=angles.device) * rx / w
    iy, ix = ys.floor().long(), xs.floor().long()
    fy, fx = torch.meshgrid(ys - iy, xs - ix, indexing="ij")
    iy, ix = iy.view(-1, 1), ix.view(1, -1)

    def corner(dy: int, dx: int) -> Tensor:
        return (fy - dy) * gy[..., iy + dy, ix + dx] + (fx - dx) * gx[..., iy + dy, ix + dx]

    n00, n10, n01, n11 = corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)
    ty, tx = _fade(fy), _fade(fx)
    top = n00 + ty * (n10 - n00)
    bottom = n01 + ty * (n11 - n01)
    return (math.sqrt(2) * (top + tx * (bottom - top))).float()


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate images (N,C,H,W) about their centres by ``degrees`` (N,): bilinear, zero fill
    (imgaug's ``Affine(rotate=…)`` defaults)."""
    n, _, h, w = x.shape
    a = degrees.to(torch.float64) * math.pi / 180
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos, sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = -sin * w / h, cos
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def perlin_exponents(size: int, min_scale: int, max_scale: int) -> tuple[int, int]:
    """The range [low, high) of Perlin lattice exponents for images of ``size`` pixels:
    the published {0, …, 5} (``max_scale`` 6), stopped below log2(size) so that a cell
    is at least 2 px (our choice; no change at 256 px)."""
    high = min(int(max_scale), max(int(math.floor(math.log2(max(size, 2)))), 1))
    low = min(int(min_scale), high - 1)
    return low, high


def fractal_texture(
    channels: int,
    shape: tuple[int, int],
    generator: torch.Generator,
    octaves: int = 4,
    device: torch.device | str | None = None,
) -> Tensor:
    """Synthetic anomaly source (our choice, in place of DTD): fractal Perlin noise,
    independent per channel (colour noise on RGB), Σ_o 2^(−o) · perlin(2^(e₀+o)) from a
    random base exponent e₀, octaves up to cells of 2 px, min–max scaled to [0, 1] per
    channel. (C,H,W)."""
    h, w = shape
    top = max(int(math.floor(math.log2(max(min(h, w), 2)))) - 1, 0)
    base = int(torch.randint(0, max(top - 1, 0) + 1, (1,), generator=generator))
    acc = torch.zeros(channels, h, w, device=device)
    for o in range(min(int(octaves), top - base + 1)):
        e = base + o
        acc = acc + perlin_noise((h, w), (2**e, 2**e), generator, batch=channels, device=device) / 2**o
    lo = acc.flatten(1).amin(1).view(-1, 1, 1)
    hi = acc.flatten(1).amax(1).view(-1, 1, 1)
    return (acc - lo) / (hi - lo).clamp(min=1e-8)


def _u(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _gamma(t: Tensor, g: torch.Generator) -> Tensor:
    return t.clamp(min=0) ** _u(g, 0.5, 2.0)  # GammaContrast((0.5, 2.0))


def _brightness(t: Tensor, g: torch.Generator) -> Tensor:
    mul, add = _u(g, 0.8, 1.2), _u(g, -30, 30) / 255  # MultiplyAndAddToBrightness
    return (t * mul + add).clamp(0, 1)


def _sharpness(t: Tensor, g: torch.Generator) -> Tensor:
    # PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image by a factor in [0, 2)
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=t.device) / 13
    c = t.shape[0]
    smooth = F.conv2d(F.pad(t[None], (1, 1, 1, 1), mode="replicate"), k.expand(c, 1, 3, 3), groups=c)[0]
    return (smooth + _u(g, 0.0, 2.0) * (t - smooth)).clamp(0, 1)


def _hue_saturation(t: Tensor, g: torch.Generator) -> Tensor:
    hue, sat = _u(g, -50, 50) / 255, _u(g, -50, 50) / 255  # AddToHueAndSaturation((-50, 50))
    if t.shape[0] != 3:
        return t  # nothing to do on grey images
    x = t[None]
    gr = grey(x)
    x = (gr + (1 + sat) * (x - gr)).clamp(0, 1)
    return hue_rotate(x, torch.tensor([hue])).clamp(0, 1)[0]


def _solarize(t: Tensor, g: torch.Generator) -> Tensor:
    p, thr = _u(g, 0, 1), _u(g, 32, 128) / 255  # Solarize(0.5, threshold=(32, 128))
    return torch.where(t >= thr, 1 - t, t) if p < 0.5 else t


def _posterize(t: Tensor, g: torch.Generator) -> Tensor:
    bits = int(torch.randint(1, 9, (1,), generator=g))  # Posterize(nb_bits=(1, 8))
    q = 2 ** (8 - bits)
    return torch.div((t * 255).round(), q, rounding_mode="floor") * q / 255


def _invert(t: Tensor, g: torch.Generator) -> Tensor:
    return 1 - t


def _autocontrast(t: Tensor, g: torch.Generator) -> Tensor:
    lo = t.flatten(1).amin(1).view(-1, 1, 1)
    hi = t.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(hi > lo, (t - lo) / (hi - lo).clamp(min=1e-8), t)


def _equalize(t: Tensor, g: torch.Generator) -> Tensor:
    """Histogram equalisation per channel on 256 levels (PIL ``ImageOps.equalize``: a level
    maps to the share of pixels darker than it, out of all but the brightest level's)."""
    levels = (t * 255).round().long().clamp(0, 255)
    out = []
    for ch in levels:
        hist = torch.bincount(ch.flatten(), minlength=256).double()
        below = hist.cumsum(0) - hist
        span = float(hist.sum() - hist[hist > 0][-1])
        out.append((below[ch] / span).clamp(max=1).float() if span > 0 else ch.float() / 255)
    return torch.stack(out)


def _rotate45(t: Tensor, g: torch.Generator) -> Tensor:
    return rotate(t[None], torch.tensor([_u(g, -45, 45)]))[0]  # Affine(rotate=(-45, 45))


#: the code's 10 texture augmentations, in its order; 3 distinct ones are applied per texture
TEXTURE_OPS = (
    ("gamma", _gamma),
    ("brightness", _brightness),
    ("sharpness", _sharpness),
    ("hue_saturation", _hue_saturation),
    ("solarize", _solarize),
    ("posterize", _posterize),
    ("invert", _invert),
    ("autocontrast", _autocontrast),
    ("equalize", _equalize),
    ("rotate", _rotate45),
)


def augment_texture(t: Tensor, generator: torch.Generator, ops: int = 3) -> Tensor:
    """``ops`` distinct operations of :data:`TEXTURE_OPS` in random order, on (C,H,W) in [0,1]."""
    for i in torch.randperm(len(TEXTURE_OPS), generator=generator)[:ops].tolist():
        t = TEXTURE_OPS[i][1](t, generator)
    return t.clamp(0, 1)


class SimulatedAnomalies(NamedTuple):
    """One batch of simulated anomalies (:func:`simulate_anomalies`), on the images' device."""

    images: Tensor  #: (N,C,H,W) the augmented images, the networks' input
    masks: Tensor  #: (N,1,H,W) 0/1: where the texture was blended in
    noise: Tensor  #: (N,1,H,W) the rotated Perlin noise whose threshold gave the mask
    textures: Tensor  #: (N,C,H,W) the augmented textures
    betas: Tensor  #: (N,) the blend weights β of the images
    anomalous: Tensor  #: (N,) bool: whether the image was given an anomaly (else left clean)


def blend(x: Tensor, texture: Tensor, mask: Tensor, beta: Tensor) -> Tensor:
    """x·(1 − m) + m·((1 − β)·t + β·x): the texture blended into the image inside the mask."""
    b = beta.view(-1, 1, 1, 1).to(x.dtype)
    return x * (1 - mask) + mask * ((1 - b) * texture + b * x)


def simulate_anomalies(
    x: Tensor,
    generator: torch.Generator,
    textures: Tensor | None = None,
    *,
    min_perlin_scale: int = 0,
    perlin_scale: int = 6,
    threshold: float = 0.5,
    beta_max: float = 0.8,
    anomaly_prob: float = 0.5,
) -> SimulatedAnomalies:
    """The code's ``augment_image`` for a batch (N,C,H,W) in [0,1], on the batch's device.

    Per image: a Perlin noise map at lattice resolution (2^a, 2^b), a and b uniform in
    :func:`perlin_exponents`, rotated by U(−90°, 90°) and thresholded (> ``threshold``)
    into the mask; a texture (a random one of ``textures`` (K,C,H,W), else
    :func:`fractal_texture`) augmented by :func:`augment_texture`; β ~ U[0, ``beta_max``);
    the image :func:`blend`-ed. With probability 1 − ``anomaly_prob`` the image stays
    clean and its mask empty. Every draw comes from ``generator`` (on the CPU, so a
    seed gives the same draws on every device; the arithmetic runs on the batch's device).
    """
    n, c, h, w = x.shape
    low, high = perlin_exponents(min(h, w), min_perlin_scale, perlin_scale)
    noise, angles, tex, betas, anomalous = [], [], [], [], []
    for _ in range(n):
        a, b = (int(v) for v in torch.randint(low, high, (2,), generator=generator))
        noise.append(perlin_noise((h, w), (2**a, 2**b), generator, device=x.device))
        angles.append(_u(generator, -90, 90))
        if textures is not None and len(textures):
            t = textures[int(torch.randint(len(textures), (1,), generator=generator))].to(x.device).float()
        else:
            t = fractal_texture(c, (h, w), generator, device=x.device)
        tex.append(augment_texture(t, generator))
        betas.append(_u(generator, 0.0, beta_max))
        anomalous.append(_u(generator, 0.0, 1.0) < anomaly_prob)
    noise_t = rotate(torch.stack(noise)[:, None], torch.tensor(angles))
    anomalous_t = torch.tensor(anomalous, device=x.device)
    masks = (noise_t > threshold).to(x.dtype) * anomalous_t.view(-1, 1, 1, 1).to(x.dtype)
    textures_t = torch.stack(tex).to(x.dtype)
    betas_t = torch.tensor(betas, dtype=x.dtype, device=x.device)
    images = blend(x, textures_t, masks, betas_t)
    return SimulatedAnomalies(images, masks, noise_t, textures_t, betas_t, anomalous_t)


def rotate_some(x: Tensor, generator: torch.Generator, prob: float, max_degrees: float = 90.0) -> Tensor:
    """Each image rotated by U(−90°, 90°) with probability ``prob`` (the code's 0.3 on the clean image)."""
    do = torch.rand(len(x), generator=generator) < prob
    angles = (2 * torch.rand(len(x), generator=generator) - 1) * max_degrees
    if not bool(do.any()):
        return x
    return torch.where(do.view(-1, 1, 1, 1).to(x.device), rotate(x, angles), x)


# -- losses ------------------------------------------------------------------------------------


def gaussian_window(size: int, sigma: float, channels: int) -> Tensor:
    """The code's SSIM window: outer product of a normalised 1-D Gaussian, (C,1,k,k)."""
    t = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float().expand(channels, 1, size, size).contiguous()


def ssim(a: Tensor, b: Tensor, window: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM of two batches (the code's ``ssim``: zero-padded Gaussian statistics)."""
    c = a.shape[1]
    win = window.to(a.dtype).to(a.device)
    pad = win.shape[-1] // 2
    conv = lambda t: F.conv2d(t, win, padding=pad, groups=c)  # noqa: E731
    mu1, mu2 = conv(a), conv(b)
    s11 = conv(a * a) - mu1 * mu1
    s22 = conv(b * b) - mu2 * mu2
    s12 = conv(a * b) - mu1 * mu2
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu1 * mu2 + c1) * (2 * s12 + c2)
    den = (mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2)
    return (num / den).mean()


def focal_loss(probs: Tensor, target: Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> Tensor:
    """The code's ``FocalLoss`` (α = 1) on class probabilities (N,K,H,W) and labels (N,1,H,W).

    One-hot labels clamped to [smooth/(K−1), 1 − smooth]; p_t = Σ_k onehot_k p_k + smooth;
    loss = mean over pixels of −(1 − p_t)^γ log p_t.
    """
    k = probs.shape[1]
    p = probs.permute(0, 2, 3, 1).reshape(-1, k)
    onehot = F.one_hot(target.reshape(-1).long(), k).to(p.dtype)
    onehot = onehot.clamp(smooth / (k - 1), 1.0 - smooth)
    pt = (onehot * p).sum(1) + smooth
    return (-((1 - pt) ** gamma) * pt.log()).mean()


# -- the networks ------------------------------------------------------------------------------


def _block(cin: int, cout: int) -> nn.Sequential:
    """2 × [conv3×3 – BN – ReLU]."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class Upsample(nn.Module):
    """Bilinear upsampling (``align_corners=True``, as the code) to an exact size."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=True)


def stage_widths(base: int, stages: int) -> list[int]:
    """The code's stage widths base·(1, 2, 4, 8, 8, …): doubling up to 8× base."""
    return [int(base) * min(2**i, 8) for i in range(stages)]


def pooled_sizes(h: int, w: int, pools: int) -> list[tuple[int, int]]:
    sizes = [(h, w)]
    for _ in range(pools):
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


class ReconstructiveNet(nn.Module):
    """Encoder–decoder without skips (the code's ``ReconstructiveSubNetwork`` at ``pools`` = 4)."""

    def __init__(self, channels: int, base: int, pools: int, size: tuple[int, int]):
        super().__init__()
        e = stage_widths(base, pools + 1)
        sizes = pooled_sizes(*size, pools)
        self.encoder = nn.ModuleList(
            [_block(channels, e[0])] + [_block(e[i - 1], e[i]) for i in range(1, pools + 1)]
        )
        ups, blocks = [], []
        d = e[pools]
        for k in range(1, pools + 1):
            out = e[max(pools - k - 1, 0)]
            ups.append(nn.Sequential(Upsample(sizes[pools - k]), *_conv_bn_relu(d, d)))
            blocks.append(nn.Sequential(*_conv_bn_relu(d, d), *_conv_bn_relu(d, out)))
            d = out
        self.ups, self.blocks = nn.ModuleList(ups), nn.ModuleList(blocks)
        self.out = nn.Conv2d(d, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.encoder):
            x = block(F.max_pool2d(x, 2) if i else x)
        for up, block in zip(self.ups, self.blocks):
            x = block(up(x))
        return self.out(x)


class DiscriminativeNet(nn.Module):
    """U-Net with skips, 2-channel logits (the code's ``DiscriminativeSubNetwork`` at ``pools`` = 5)."""

    def __init__(self, channels: int, base: int, pools: int, size: tuple[int, int]):
        super().__init__()
        f = stage_widths(base, pools + 1)
        sizes = pooled_sizes(*size, pools)
        self.encoder = nn.ModuleList(
            [_block(channels, f[0])] + [_block(f[i - 1], f[i]) for i in range(1, pools + 1)]
        )
        ups, blocks = [], []
        d = f[pools]
        for k in range(1, pools + 1):
            u = f[max(pools - k - 1, 0)]
            skip = f[pools - k]
            ups.append(nn.Sequential(Upsample(sizes[pools - k]), *_conv_bn_relu(d, u)))
            blocks.append(nn.Sequential(*_conv_bn_relu(u + skip, u), *_conv_bn_relu(u, u)))
            d = u
        self.ups, self.blocks = nn.ModuleList(ups), nn.ModuleList(blocks)
        self.out = nn.Conv2d(d, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for k, (up, block) in enumerate(zip(self.ups, self.blocks), start=1):
            x = block(torch.cat([up(x), skips[-1 - k]], 1))
        return self.out(x)


def init_weights(module: nn.Module) -> None:
    """The code's ``weights_init``: conv weights N(0, 0.02), BN weights N(1, 0.02), BN biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def auto_pools(size: int, published: int) -> int:
    """The published number of poolings, or fewer so the smallest map stays at least 2×2."""
    return max(0, min(published, int(math.floor(math.log2(max(size, 1)))) - 1))


def auto_pool_size(size: int) -> int:
    """The odd window nearest 21·size/256 (21 at 256 px, the code's), at least 1."""
    return max(1, 2 * int(round((21 * size / 256 - 1) / 2)) + 1)


def load_textures(folder: str | Path, channels: int, size: tuple[int, int]) -> Tensor:
    """Every image under ``folder`` (recursively), resized to ``size`` as the code does
    (the whole image, aspect not kept), grey or RGB to match ``channels``: (K,C,H,W)."""
    from robustad.datasets.images import is_image, load_images

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"draem: anomaly_source_dir {folder} is not a folder of texture images")
    files = sorted(p for p in root.rglob("*") if is_image(p))
    if not files:
        raise UserError(f"draem: anomaly_source_dir {folder} holds no images (.png/.jpg/…)")
    side = max(max(size), 8)
    arr, _ = load_images(files, side, "L" if channels == 1 else "RGB")
    t = torch.from_numpy(arr).float() / 255
    t = t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2)
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return t.clamp(0, 1).contiguous()


# -- the detector ----------------------------------------------------------------------------


@register_method(
    "draem",
    paper="DRAEM: A discriminatively trained reconstruction embedding for surface anomaly detection "
    "(Zavrtanik, Kristan, Skočaj, ICCV 2021)",
    year=2021,
    adversarially_trained=False,
    pretrained=False,
    localises=True,
    source="re-implementation of VitjanZ/DRAEM (model_unet.py, train_DRAEM.py, test_DRAEM.py, "
    "data_loader.py, loss.py); the score keeps the reconstruction's gradient",
    our_choices="textures: anomaly_source_dir (e.g. DTD) else synthetic fractal Perlin colour noise; "
    "imgaug ops re-implemented in torch; grey kept 1-channel; native size unless image_size; "
    "pools and averaging window scaled for small images; Perlin cells >= 2 px; SSIM range 1; "
    "smooth surrogate_score (tau*LSE of the pooled logit margin) for adaptive attacks",
)
class DRAEM(Detector):
    """Parameters: the networks (``rec_width`` 128, ``disc_width`` 64, ``rec_pools`` and
    ``disc_pools``: ``"auto"`` or a number, published 4 and 5), the input (``image_size``:
    None scores at the native size, a number resizes inside the model, the code's 256),
    the score (``pool_size``: the averaging window, ``"auto"`` or an odd number, the
    code's 21; ``surrogate_temperature`` τ of ``surrogate_score``), the simulated
    anomalies (``anomaly_source_dir``: a folder of texture images such as DTD's, None for
    synthetic textures; ``perlin_scale``/``min_perlin_scale``: the exponent range
    [min, max) of the Perlin lattice; ``threshold``; ``beta_max``; ``anomaly_prob``;
    ``rotate_prob``), the losses (``focal_gamma``, ``focal_smooth``, ``ssim_window``,
    ``ssim_sigma``) and the training (``epochs``, ``batch_size``, ``lr``,
    ``lr_milestones`` as fractions of the epochs, ``lr_gamma``, ``max_train``: a
    seeded subset of the training images, None = all). Defaults are the code's."""

    fit_version = 1

    def __init__(
        self,
        rec_width: int = 128,
        disc_width: int = 64,
        rec_pools: int | str = "auto",
        disc_pools: int | str = "auto",
        image_size: int | None = None,
        pool_size: int | str = "auto",
        surrogate_temperature: float = 1.0,
        anomaly_source_dir: str | None = None,
        perlin_scale: int = 6,
        min_perlin_scale: int = 0,
        threshold: float = 0.5,
        beta_max: float = 0.8,
        anomaly_prob: float = 0.5,
        rotate_prob: float = 0.3,
        focal_gamma: float = 2.0,
        focal_smooth: float = 1e-5,
        ssim_window: int = 11,
        ssim_sigma: float = 1.5,
        epochs: int = 700,
        batch_size: int = 8,
        lr: float = 1e-4,
        lr_milestones: tuple[float, ...] = (0.8, 0.9),
        lr_gamma: float = 0.2,
        max_train: int | None = None,
    ):
        super().__init__()
        store_hparams(self, locals())

    # -- the model --------------------------------------------------------------------------
    def _pools(self, value: int | str, published: int, size: int, what: str) -> int:
        if value == "auto":
            return auto_pools(size, published)
        p = int(value)
        if p < 0 or (size >> p) < 1:
            raise UserError(
                f"draem: {what}={value!r} does not fit {size}-px images (at most {int(math.log2(size))})"
            )
        return p

    def build(self, input_shape: tuple[int, int, int]) -> None:
        super().build(input_shape)
        c, h, w = self.input_shape
        if self.image_size is not None:
            s = int(self.image_size)
            if s < 2:
                raise UserError(f"draem: image_size must be at least 2 (or None), got {self.image_size!r}")
            self.work_hw = (s, s)
        else:
            self.work_hw = (h, w)
        side = min(self.work_hw)
        self.rec_p = self._pools(self.rec_pools, 4, side, "rec_pools")
        self.disc_p = self._pools(self.disc_pools, 5, side, "disc_pools")
        k = auto_pool_size(side) if self.pool_size == "auto" else int(self.pool_size)
        if k < 1 or k % 2 == 0:
            raise UserError(f"draem: pool_size must be 'auto' or an odd number >= 1, got {self.pool_size!r}")
        self.window = k
        self.reconstructive = ReconstructiveNet(c, int(self.rec_width), self.rec_p, self.work_hw)
        self.discriminative = DiscriminativeNet(2 * c, int(self.disc_width), self.disc_p, self.work_hw)
        init_weights(self)
        self.register_buffer("train_images_used", torch.tensor(0))
        self.register_buffer("texture_images_used", torch.tensor(0))
        self.register_buffer("epochs_run", torch.tensor(0))

    def to_working_size(self, x: Tensor) -> Tensor:
        """Images at the networks' size: unchanged, or resized (bilinear, antialiased when shrinking)."""
        if tuple(x.shape[-2:]) == tuple(self.work_hw):
            return x
        shrink = x.shape[-2] > self.work_hw[0] or x.shape[-1] > self.work_hw[1]
        return F.interpolate(x, size=self.work_hw, mode="bilinear", align_corners=False, antialias=shrink)

    def forward_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction, 2-channel logits) at the working size for images at the working size."""
        rec = self.reconstructive(x)
        return rec, self.discriminative(torch.cat([rec, x], 1))

    def logits(self, x: Tensor) -> Tensor:
        return self.forward_logits(self.to_working_size(x))[1]

    def _pool(self, m: Tensor) -> Tensor:
        k = self.window
        return F.avg_pool2d(m, k, stride=1, padding=k // 2) if k > 1 else m

    def score(self, x: Tensor) -> Tensor:
        """max over pixels of the k×k mean-filtered anomaly map M(x); (N,) for (N,C,H,W) in [0,1]."""
        m = torch.softmax(self.logits(x), dim=1)[:, 1:]
        return self._pool(m).flatten(1).amax(1)

    def surrogate_score(self, x: Tensor, temperature: float | None = None) -> Tensor:
        """τ·logsumexp over pixels of the k×k mean-filtered logit margin z₁ − z₀: smooth in
        every pixel and free of the softmax's saturation. For adaptive attacks only (they
        judge their points by :meth:`score`); not on the score's scale."""
        tau = float(self.surrogate_temperature if temperature is None else temperature)
        z = self.logits(x)
        margin = self._pool(z[:, 1:] - z[:, :1]).flatten(1)
        return tau * torch.logsumexp(margin / tau, dim=1)

    def anomaly_map(self, x: Tensor) -> Tensor:
        """M(x), the softmax anomaly channel, (N,H,W) at the input's size."""
        m = torch.softmax(self.logits(x), dim=1)[:, 1:]
        if tuple(m.shape[-2:]) != tuple(x.shape[-2:]):
            m = F.interpolate(m, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        return m[:, 0]

    # -- facts recorded with results ------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        if self.input_shape is None:
            return {}
        c, h, w = self.input_shape
        n_tex = int(self.texture_images_used)
        size = f"{self.work_hw[0]}x{self.work_hw[1]}"
        return {
            "reconstructive": f"widths {stage_widths(self.rec_width, self.rec_p + 1)}, {self.rec_p} pools",
            "discriminative": f"widths {stage_widths(self.disc_width, self.disc_p + 1)}, {self.disc_p} pools",
            "input": f"native {size}" if self.work_hw == (h, w) else f"resized {h}x{w} -> {size} (bilinear)",
            "channels": c,
            "pool_size": self.window,
            "anomaly_source": "textures" if n_tex else "synthetic",
            "anomaly_source_detail": (
                f"{n_tex} images from {self.anomaly_source_dir}" if n_tex else "fractal Perlin colour noise"
            ),
            "perlin_exponents": list(
                perlin_exponents(min(self.work_hw), self.min_perlin_scale, self.perlin_scale)
            ),
            "epochs_run": int(self.epochs_run),
            "train_images_used": int(self.train_images_used),
            "surrogate": f"tau*logsumexp of the pooled logit margin, tau={self.surrogate_temperature}",
        }

    # -- training -----------------------------------------------------------------------------
    def loss(self, sim: SimulatedAnomalies, clean: Tensor) -> tuple[Tensor, dict[str, float]]:
        """L2 + (1 − SSIM) on the reconstruction of the augmented images, focal on the map."""
        rec, logits = self.forward_logits(sim.images)
        l2 = F.mse_loss(rec, clean)
        window = gaussian_window(int(self.ssim_window), float(self.ssim_sigma), clean.shape[1])
        l_ssim = 1 - ssim(rec, clean, window)
        focal = focal_loss(torch.softmax(logits, 1), sim.masks, self.focal_gamma, self.focal_smooth)
        total = l2 + l_ssim + focal
        return total, {"l2": l2.item(), "ssim": l_ssim.item(), "focal": focal.item()}

    def fit(self, data, ctx: RunContext | None = None) -> DRAEM:
        ctx = ctx or RunContext()
        x, gen = seeded_fit_start(self, data.train_x, self.max_train, ctx.seed)
        c = x.shape[1]
        textures = None
        if self.anomaly_source_dir:
            textures = load_textures(self.anomaly_source_dir, c, self.work_hw)
            self.texture_images_used.fill_(len(textures))
        self.train_images_used.fill_(len(x))
        self.to(ctx.device)
        if textures is not None:
            textures = textures.to(ctx.device)
        with torch.no_grad():  # the augmentation runs on the device too (its draws on the CPU)
            x = self.to_working_size(x.float().to(ctx.device))
        bs = max(int(self.batch_size), 1)
        epochs = int(self.epochs)
        opt = torch.optim.Adam(
            [*self.reconstructive.parameters(), *self.discriminative.parameters()], lr=self.lr
        )
        milestones = [int(epochs * float(f)) for f in self.lr_milestones]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=self.lr_gamma)
        kw = dict(
            min_perlin_scale=self.min_perlin_scale,
            perlin_scale=self.perlin_scale,
            threshold=self.threshold,
            beta_max=self.beta_max,
            anomaly_prob=self.anomaly_prob,
        )
        for epoch in range(epochs):
            self.train()
            order = torch.randperm(len(x), generator=gen).to(x.device)
            sums: dict[str, float] = {}
            steps = 0
            for i in range(0, len(x), bs):
                xb = x[order[i : i + bs]]
                if len(xb) < 2:  # BatchNorm needs two images in training mode
                    continue
                clean = rotate_some(xb, gen, self.rotate_prob)
                sim = simulate_anomalies(clean, gen, textures, **kw)
                loss, parts = self.loss(sim, clean)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                for k, v in {"loss": loss.item(), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v
            sched.step()
            self.epochs_run.fill_(epoch + 1)
            ctx.report(epoch + 1, epochs, **{k: v / max(steps, 1) for k, v in sums.items()})
        self.eval()
        return self
