"""Contrastive learning with shifted instances: the code CSI and COBRA share.

CSI (Tack et al., NeurIPS 2020) and COBRA (ICLR 2025; docs/METHODS.md) use
the same encoder F, projection head G, group head H, light augmentations, group
transforms (pseudo-anomalies) and anomaly score; COBRA adds three adversarial
training attacks and the opposite-pair term to the loss. Both are
:class:`ShiftedContrastiveDetector` with different switches; ``csi.py`` and
``cobra.py`` only register them with their own parameter lists.

Layout used everywhere: a *block* is one view of a batch of B images expanded to
its K groups, group-major (row ``k·B + i`` is image i in group k); several blocks
are concatenated, block b at rows ``b·K·B ...``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustad.errors import UserError
from robustad.methods.base import Detector, RunContext
from robustad.methods.encoders import resnet_for
from robustad.methods.knn import soft_max
from robustad.methods.pseudo_anomalies import PseudoAnomalies, colour_jitter, grey
from robustad.methods.training_attacks import pgd_on_loss

#: added inside the logs of the opposite-pair term, as the public release does, so a
#: term is bounded below by log(1e-8) ≈ -18.4 and cannot dominate the loss
LOG_FLOOR = 1e-8


# -- the model -------------------------------------------------------------------------
class ShiftedContrastiveNet(nn.Module):
    """Encoder F, projection head G (d → d → ReLU → proj_dim) and group head H (d → K).

    Input (N,C,H,W) in [0,1]; returns features (N,d), projections (N,proj_dim) (not
    normalised) and group logits (N,K).
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, proj_dim: int, groups: int):
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, proj_dim)
        )
        self.group_head = nn.Linear(feature_dim, groups)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = self.encoder(x)
        return f, self.proj(f), self.group_head(f)


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


# -- the loss --------------------------------------------------------------------------
def positive_mask(batch: int, groups: int, blocks: int) -> Tensor:
    """(N,N) bool, N = blocks·K·B: j is a positive of a when both are the same image in
    the same group, in different blocks (views)."""
    n = blocks * groups * batch
    idx = torch.arange(n)
    within = idx % (groups * batch)  # (group, image) identity inside a block
    block = idx // (groups * batch)
    return (within[:, None] == within[None, :]) & (block[:, None] != block[None, :])


def opposite_pairs(batch: int, groups: int, blocks: tuple[int, ...] = (0, 1)) -> Tensor:
    """(P,2) index pairs (x_i, Υ_k x_i) for i < B, k ≥ 1, inside each of ``blocks``."""
    pairs = []
    for b in blocks:
        off = b * groups * batch
        for k in range(1, groups):
            for i in range(batch):
                pairs.append((off + i, off + k * batch + i))
    return torch.tensor(pairs, dtype=torch.long).view(-1, 2)


def log_softmax_offdiag(z: Tensor, temperature: float) -> Tensor:
    """log p(a → j) = s_aj/τ − log Σ_{l≠a} exp(s_al/τ) for L2-normalised rows of z; (N,N).

    The diagonal (a sample against itself) is excluded from every denominator and
    set to -inf.
    """
    z = F.normalize(z, dim=1)
    sim = z @ z.t() / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    return sim - torch.logsumexp(sim, dim=1, keepdim=True)


def cobra_loss(
    z: Tensor, batch: int, groups: int, blocks: int, temperature: float = 0.5, opposite_weight: float = 1.0
) -> Tensor:
    """L_COBRA: multi-positive NT-Xent plus the opposite-pair term, over N = blocks·K·B anchors.

    ``z``: (N, D) projections in the block layout (not necessarily normalised).

        L = (1/N) [ Σ_a Σ_{p∈P(a)} −log p(a → p)
                    + λ Σ_{(i,k,block)} (log(p(x_i → Υ_k x_i) + 1e-8) + log(p(Υ_k x_i → x_i) + 1e-8)) ]

    P(a) = :func:`positive_mask` (the same image and group in the other blocks), every
    other sample in the denominator. The opposite pairs are those of
    :func:`opposite_pairs`: inside blocks 0 and 1 (V1, V2), image i with each of its
    pseudo-anomalies k ≥ 1. λ = ``opposite_weight``; 0 is plain multi-positive NT-Xent
    (the public release). Returns a scalar.

    Normalisation (the method's description leaves it open; docs/METHODS.md): that of the authors' release
    (``training/contrastive_loss.py``), where the 12 positive diagonals of the 4-block
    similarity matrix and the opposite pairs are summed together and divided by the
    number of anchors once. So each anchor sums over its positives (three in COBRA's
    four blocks, one in CSI's two: CSI's loss is the usual NT-Xent either way), and the
    opposite term weighs (K−1)/(2K) of a per-pair mean (3/8 at K = 4). The pairs are
    those of docs/METHODS.md (image i with each Υ_k x_i); the release's switched-off code pairs the
    two halves of each block, the same set at K = 2. An earlier
    version averaged over positives and over pairs, which at K = 4 and four blocks made
    λ = 1 eight times stronger relative to the positives than the release (3 · 8/3),
    and collapsed training on one Fashion-MNIST class (results/README.md).
    """
    logp = log_softmax_offdiag(z, temperature)
    n = len(z)
    pos = _loss_index(batch, groups, blocks, z.device, "positive_mask")
    pos_sum = -logp.masked_fill(~pos, 0.0).sum()
    if opposite_weight == 0 or groups < 2:
        return pos_sum / n
    pairs = _loss_index(batch, groups, blocks, z.device, "opposite_pairs")
    p = logp.exp()
    a, o = pairs[:, 0], pairs[:, 1]
    opp_sum = (torch.log(p[a, o] + LOG_FLOOR) + torch.log(p[o, a] + LOG_FLOOR)).sum()
    return (pos_sum + opposite_weight * opp_sum) / n


@functools.lru_cache(maxsize=32)
def _loss_index(batch: int, groups: int, blocks: int, device: torch.device, which: str) -> Tensor:
    """:func:`positive_mask` or :func:`opposite_pairs` of a layout, made once per device.

    The same tensors as building them at every step (they depend on the layout only),
    without a host-to-device copy and a Python loop per training step on a GPU.
    Callers must not modify them in place.
    """
    if which == "positive_mask":
        return positive_mask(batch, groups, blocks).to(device)
    return opposite_pairs(batch, groups, tuple(range(min(blocks, 2)))).to(device)


def anchored_nt_xent(z_anchor: Tensor, z_other: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Per-anchor NT-Xent against a fixed set: −log softmax_j(⟨a, o_j⟩/τ)[target]; (N,).

    Each anchor's loss depends on that anchor alone, so a per-sample attack on the
    anchors is well defined (the training attacks A_P and A_N).
    """
    sim = F.normalize(z_anchor, dim=1) @ F.normalize(z_other, dim=1).t() / temperature
    return F.cross_entropy(sim, target, reduction="none")


def group_derangement(groups: int, generator: torch.Generator) -> Tensor:
    """A random permutation of 0..K-1 with no fixed point (for K = 2, the swap)."""
    while True:
        perm = torch.randperm(groups, generator=generator)
        if not (perm == torch.arange(groups)).any():
            return perm


# -- training attacks: pgd_on_loss lives in robustad.methods.training_attacks ------------


# -- the detector ------------------------------------------------------------------------------
class ShiftedContrastiveDetector(Detector):
    """CSI / COBRA. Subclasses set the parameters; this class holds all the behaviour.

    Attributes read here (set by the subclass constructors through ``store_hparams``
    or as class attributes): width, blocks, stem, weights, proj_dim, pseudo_anomalies,
    groups, epochs, batch_size, lr, warmup_epochs, weight_decay, temperature,
    test_views, max_train, opposite_weight, eps_train, train_attack_steps, and the
    training-speed switches amp, channels_last, torch_compile (:meth:`speed_switches`).
    """

    opposite_weight: float = 0.0
    eps_train: float | str = 0.0
    train_attack_steps: int = 0
    # Training-speed switches (constructor parameters of CSI and COBRA). They act on
    # CUDA only and on the training step only; see speed_switches.
    amp: str | None = None
    channels_last: bool = False
    torch_compile: bool = False
    #: set on an instance (not a constructor parameter) to plan the epochs while
    #: training: called after each epoch but the last with (epochs done, seconds that
    #: epoch took), returns the total number of epochs to train (clamped to between the
    #: epochs done and ``epochs``); the warm-up and the cosine decay are rescaled to it.
    #: None (the default): ``epochs``. For time-budgeted measurements
    #: (benchmarks/gpu_paper_check.py); it makes a fit depend on the clock.
    epoch_plan: Callable[[int, float], int] | None = None

    def build(self, input_shape: tuple[int, int, int]) -> None:
        super().build(input_shape)
        _, h, w = self.input_shape
        size = min(h, w)
        self.pseudo = PseudoAnomalies(self.pseudo_anomalies, self.groups, size)
        k = self.pseudo.groups
        encoder = resnet_for(size, self.width, tuple(self.blocks), self.weights, self.stem)
        self.net = ShiftedContrastiveNet(encoder, encoder.feature_dim, self.proj_dim, k)
        self.low_res = size <= 64
        # Crop area 0.08–1 as in CSI, but keeping at least 6 px a side: on 8×8 digits an
        # 8% crop is a 2×2 patch with nothing left to recognise (no effect from 22 px up).
        self.min_crop_scale = max(0.08, (6 / size) ** 2)
        # Fixed parameters of the S test views, shared by every image: buffers, so a
        # checkpoint carries them and scores do not depend on any RNG at test time.
        self.register_buffer("view_params", self.test_view_params())
        # Fixed per-group parameters for random pseudo-anomaly transforms (e.g. scar):
        # the seed of the shared draw, so Υ_k is one fixed function at test time.
        self.register_buffer("group_seed", torch.tensor(777, dtype=torch.long))
        self.register_buffer("bank", torch.zeros(0, k, self.proj_dim))
        self.register_buffer("weight_sim", torch.ones(k))
        self.register_buffer("weight_group", torch.ones(k))

    def test_view_params(self) -> Tensor:
        """The S fixed test views, (S, len(AUG_COLUMNS)), identical for every image.

        S > 1: light augmentations drawn once from a fixed seed, with a square crop of
        area ``test_crop_scale`` (0.54 in CSI and COBRA) at low resolution. S = 1 (CPU
        presets): the central view of that distribution, the centred crop with no flip,
        jitter (factors 1) or greyscale. One random draw is a noisy stand-in for the
        view mean the score is defined by (the draw of seed 12345 darkens every image to
        0.67 brightness and 0.74 contrast and crops off-centre; see results/README.md).
        """
        if not 0 < self.test_crop_scale <= 1:
            raise UserError(f"test_crop_scale must be in (0, 1], got {self.test_crop_scale!r}")
        scale = self.test_crop_scale if self.low_res else None
        if self.test_views == 1:
            side = math.sqrt(scale) if scale is not None else 1.0
            return torch.tensor([[0.0, side, side, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
        gen = torch.Generator().manual_seed(12345)
        return sample_light_aug_params(self.test_views, gen, crop=self.low_res, fixed_crop_scale=scale)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The bank's size is known only after fit; take it from the checkpoint.
        key = prefix + "bank"
        if key in state_dict:
            self.bank = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- facts recorded with results ------------------------------------------------------
    def resolved_eps_train(self) -> float:
        if self.eps_train == "auto":
            size = min(self.input_shape[1:]) if self.input_shape else 32
            return 8 / 255 if size <= 64 else 2 / 255
        return float(self.eps_train)

    def info(self) -> dict[str, Any]:
        if self.input_shape is None:
            return {}
        return {
            "encoder": self.net.encoder.describe(),
            "weights": "random init" if self.weights is None else f"local file {self.weights}",
            "epochs": self.epochs,
            "eps_train": round(self.resolved_eps_train(), 6),
            "train_attack_steps": self.train_attack_steps if self.adversarial else 0,
            "test_views": self.test_views,
            "test_crop_scale": self.test_crop_scale,
            "pseudo_anomalies": self.pseudo.describe(),
            "opposite_weight": self.opposite_weight,
            "train_images_used": int(self.bank.shape[0]),
            **self._speed_info(),
        }

    def _speed_info(self) -> dict[str, Any]:
        # Recorded only when a switch was asked for, so default fits record what they did before.
        out: dict[str, Any] = {}
        notes = getattr(self, "_speed_notes", None)
        if notes is not None and (self.amp is not None or self.channels_last or self.torch_compile):
            out["training_speedups"] = notes
        trained = getattr(self, "_epochs_trained", None)
        if trained is not None and trained != self.epochs:
            out["epochs_trained"] = trained
        return out

    @property
    def adversarial(self) -> bool:
        return self.train_attack_steps > 0 and self.resolved_eps_train() > 0

    # -- the score ------------------------------------------------------------------------
    def group_views(self, x: Tensor) -> Tensor:
        """The K·S fixed test views of x, (K·S·N,C,H,W), ordered (group, view, image)."""
        gen = torch.Generator().manual_seed(int(self.group_seed))
        out = []
        for k in range(self.pseudo.groups):
            xk = self.pseudo.apply(x, k, gen, shared=True)
            for s in range(self.test_views):
                out.append(apply_light_aug(xk, self.view_params[s : s + 1].expand(len(x), -1)))
        return torch.cat(out)

    def group_embeddings(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """f_k(x) (N,K,D), the view-mean projection, and the view-mean group logit (N,K)."""
        n, k, s = len(x), self.pseudo.groups, self.test_views
        _, z, logits = self.net(self.group_views(x))
        z = z.view(k, s, n, -1).mean(1).transpose(0, 1)
        own = logits.view(k, s, n, k).mean(1)  # (K,N,K): group k's views, all logits
        h = own[torch.arange(k), :, torch.arange(k)].transpose(0, 1)  # H(...)[k] for group k
        return z, h

    def normality_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per group: max_m ⟨f_k(x), a_{m,k}⟩ and the group logit, each (N,K), unweighted."""
        z, h = self.group_embeddings(x)
        sim = torch.einsum("nkd,mkd->nkm", z, self.bank).amax(dim=2)
        return sim, h

    def score(self, x: Tensor) -> Tensor:
        """s(x) = −mean_k (w_k · max_m ⟨f_k(x), a_{m,k}⟩ + v_k · H[k]); (N,) for (N,C,H,W) in [0,1]."""
        sim, h = self.normality_terms(x)
        return -(sim * self.weight_sim + h * self.weight_group).mean(1)

    def surrogate_score(self, x: Tensor, temperature: float = 0.05) -> Tensor:
        """A smooth stand-in for :meth:`score` for adaptive attacks; (N,).

        The max over the bank passes gradient through the current nearest neighbour
        only; here ‖f_k‖ · τ·logsumexp_m(cos/τ) replaces ‖f_k‖ · max_m cos, which
        overestimates it by at most ‖f_k‖ · τ·log M.
        """
        z, h = self.group_embeddings(x)
        norm = z.norm(dim=2)
        cos = torch.einsum("nkd,mkd->nkm", F.normalize(z, dim=2), self.bank)
        sim = norm * soft_max(cos, temperature, dim=2)
        return -(sim * self.weight_sim + h * self.weight_group).mean(1)

    @torch.no_grad()
    def _fit_score_statistics(self, x: Tensor, device: str, batch: int = 256) -> None:
        """The bank a_{m,k} and the weights w_k, v_k, computed once after training."""
        self.eval()
        zs = [self.group_embeddings(x[i : i + batch].to(device))[0] for i in range(0, len(x), batch)]
        self.bank = F.normalize(torch.cat(zs), dim=2)
        sims, hs = [], []
        for i in range(0, len(x), batch):
            s, h = self.normality_terms(x[i : i + batch].to(device))
            sims.append(s)
            hs.append(h)
        mean_sim, mean_h = torch.cat(sims).mean(0), torch.cat(hs).mean(0)
        # 1/mean as in CSI. A short training run can leave a group's mean logit at or
        # below zero; 1/mean would then flip the sign of that term (a higher logit of the
        # right group would read as *less* normal) or blow it up, so the weight is
        # 1/max(|mean|, 1e-3): identical to CSI's whenever the mean logit is positive.
        self.weight_sim = 1.0 / mean_sim.clamp(min=1e-6)
        self.weight_group = 1.0 / mean_h.abs().clamp(min=1e-3)

    # -- training ---------------------------------------------------------------------------
    def speed_switches(self, device: str | torch.device) -> tuple[torch.dtype | None, bool, bool, str]:
        """What the training-speed switches do on ``device``: (autocast dtype or None,
        channels_last, torch.compile, a note recorded in :meth:`info`).

        ``amp``: None (float32 training), ``"bf16"`` or ``"fp16"`` (``torch.autocast`` of
        the network's forward passes in the training step, COBRA's training attacks
        included; fp16 with a ``GradScaler``). The losses, the attacks' steps and
        projections, the bank and weights (:meth:`_fit_score_statistics`), the score and
        every evaluation attack stay float32, so the attacked function is the reported
        one. ``channels_last``: the network in channels-last memory format while it
        trains (back to the default format before the score statistics).
        ``torch_compile``: ``torch.compile`` of the network for the training forwards
        (unmeasured: off in every preset). All three act on CUDA only; on any other
        device they are ignored (the note says so) and training is the float32 code
        path, bit for bit.
        """
        if self.amp not in (None, "bf16", "fp16"):
            raise UserError(f"amp must be None, 'bf16' or 'fp16', got {self.amp!r}")
        asked = [n for n, on in (("amp " + str(self.amp), self.amp is not None),
                                 ("channels_last", self.channels_last),
                                 ("torch_compile", self.torch_compile)) if on]  # fmt: skip
        if torch.device(device).type != "cuda":
            note = f"{', '.join(asked)} ignored on {torch.device(device).type} (CUDA only); float32 training"
            return None, False, False, note if asked else "none"
        dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.amp]
        done = [f"{self.amp} autocast (training step only)"] if dtype is not None else ["float32 training"]
        done += ["channels_last"] * bool(self.channels_last) + ["torch.compile"] * bool(self.torch_compile)
        return dtype, bool(self.channels_last), bool(self.torch_compile), ", ".join(done)

    def _train_forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The network's forward pass in the training step (loss and training attacks).

        With the switches off (the default, and always off the GPU) it is ``self.net(x)``.
        With them on, the input goes channels-last, the compiled network runs under
        autocast, and the outputs come back as float32 for the losses.
        """
        dtype = getattr(self, "_amp_dtype", None)
        net = self.__dict__.get("_compiled_net")
        net = self.net if net is None else net
        if dtype is None and net is self.net and not getattr(self, "_channels_last_on", False):
            return self.net(x)
        if getattr(self, "_channels_last_on", False):
            x = x.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            return net(x)
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = net(x)
        return tuple(o.float() for o in out)

    def _expand_and_augment(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """One view of a batch: random flip, the K groups, then light augmentations; (K·B,...)."""
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        xk = self.pseudo.expand(x, gen)
        params = sample_light_aug_params(len(xk), gen, crop=self.low_res, min_crop_scale=self.min_crop_scale)
        return apply_light_aug(xk, params)

    def training_attacks(
        self, v1: Tensor, v2: Tensor, batch: int, gen: torch.Generator, perm: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """A_P (intra-group), A_N (inter-group) and R (group head), network in eval mode.

        ``v1``, ``v2``: two views in the block layout, (K·B,C,H,W) in [0,1]. ``perm``: the
        group derangement of A_N (drawn from ``gen`` when None). Returns three (K·B,C,H,W)
        tensors inside the ε_train ball of their starting view.
        """
        k = self.pseudo.groups
        eps, steps, tau = self.resolved_eps_train(), self.train_attack_steps, self.temperature
        was_training = self.net.training
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        try:
            # fp16 autocast: the attack losses are scaled so their input gradients do not
            # underflow (a step follows the gradient's sign, which scaling keeps).
            fwd = self._train_forward
            if getattr(self, "_amp_dtype", None) is torch.float16:
                sc = lambda loss: 1024.0 * loss  # noqa: E731
            else:
                sc = lambda loss: loss  # noqa: E731  (the same tensor: float32 unchanged)
            with torch.no_grad():
                z1 = fwd(v1)[1]
                z2 = fwd(v2)[1]
            idx = torch.arange(k * batch, device=v1.device)
            group = idx // batch
            image = idx % batch
            # A_P: from V1, maximise the loss whose positive is the same (image, group) in V2.
            a_p = pgd_on_loss(
                lambda xa: sc(anchored_nt_xent(fwd(xa)[1], z2, idx, tau)), v1, eps, steps, gen, +1
            )
            # A_N: from V2, minimise the loss whose positive is the same image in another
            # group of V1 (a derangement of the groups): pulls each sample to its opposite.
            perm = (group_derangement(k, gen) if perm is None else perm).to(v1.device)
            target_n = perm[group] * batch + image
            a_n = pgd_on_loss(
                lambda xa: sc(anchored_nt_xent(fwd(xa)[1], z1, target_n, tau)), v2, eps, steps, gen, -1
            )
            # R: from V2, maximise the cross entropy of the group head.
            r = pgd_on_loss(
                lambda xa: sc(F.cross_entropy(fwd(xa)[2], group, reduction="none")), v2, eps, steps, gen, +1
            )
        finally:
            for p in self.net.parameters():
                p.requires_grad_(True)
            self.net.train(was_training)
        return a_p, a_n, r

    def training_loss(self, x: Tensor, gen: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """L_COBRA (or CSI's NT-Xent) + L_CLS for one batch (B,C,H,W) in [0,1].

        Returns the loss and its two terms as detached 0-d tensors (``.item()`` reads
        one; not read here, so a GPU step does not wait on the host for them). The
        network runs through :meth:`_train_forward` (autocast etc. where switched on);
        the losses are computed in float32.
        """
        b, k = len(x), self.pseudo.groups
        v1 = self._expand_and_augment(x, gen)
        v2 = self._expand_and_augment(x, gen)
        group = torch.arange(k, device=x.device).repeat_interleave(b)
        if self.adversarial:
            a_p, a_n, r = self.training_attacks(v1, v2, b, gen)
            _, z, logits = self._train_forward(torch.cat([v1, v2, a_p, a_n, r]))
            z, logits = z[: 4 * k * b], torch.cat([logits[: 2 * k * b], logits[4 * k * b :]])
            blocks = 4
        else:
            _, z, logits = self._train_forward(torch.cat([v1, v2]))
            blocks = 2
        l_con = cobra_loss(z, b, k, blocks, self.temperature, self.opposite_weight)
        l_cls = F.cross_entropy(logits, group.repeat(len(logits) // len(group)))
        return l_con + l_cls, {"contrastive": l_con.detach(), "group_ce": l_cls.detach()}

    def training_subset(self, x: Tensor, seed: int) -> Tensor:
        """``max_train`` images drawn without replacement (seeded), or all of them."""
        if self.max_train is None or len(x) <= self.max_train:
            return x
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: self.max_train]
        return x[idx.sort().values]

    def fit(self, data, ctx: RunContext | None = None) -> ShiftedContrastiveDetector:
        """Train (SGD, momentum 0.9, linear warm-up then cosine decay), then the bank and weights.

        The training images are moved to ``ctx.device`` once, not per batch. The
        training-speed switches (:meth:`speed_switches`) apply to the training steps;
        the score statistics are computed in float32, in the default memory format.
        """
        ctx = ctx or RunContext()
        x = self.training_subset(data.train_x, ctx.seed)
        self.build(tuple(x.shape[1:]))
        self.to(ctx.device)
        x = x.to(ctx.device)  # resident on the device for the whole fit
        amp_dtype, channels_last, compile_net, self._speed_notes = self.speed_switches(ctx.device)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._amp_dtype, self._channels_last_on = amp_dtype, channels_last
        if compile_net:
            self.__dict__["_compiled_net"] = torch.compile(self.net)  # not a registered submodule
        scaler = torch.amp.GradScaler(torch.device(ctx.device).type) if amp_dtype is torch.float16 else None
        try:
            self._train(x, ctx, scaler)
        finally:
            self._amp_dtype, self._channels_last_on = None, False
            self.__dict__.pop("_compiled_net", None)
            if channels_last:
                self.net.to(memory_format=torch.contiguous_format)
        self._fit_score_statistics(x, ctx.device)
        self.eval()
        return self

    def _train(self, x: Tensor, ctx: RunContext, scaler: torch.amp.GradScaler | None) -> None:
        gen = torch.Generator().manual_seed(ctx.seed)
        opt = torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        bs = min(self.batch_size, len(x))
        steps_per_epoch = max(1, len(x) // bs)  # drop the ragged last batch (BatchNorm, fixed layout)
        epochs = self.epochs

        def schedule(n_epochs: int) -> tuple[int, int]:
            # (total steps, warm-up steps); the warm-up keeps its share of the epochs.
            total = n_epochs * steps_per_epoch
            warmup_epochs = (
                self.warmup_epochs if n_epochs == self.epochs else self.warmup_epochs * n_epochs / self.epochs
            )
            return total, min(total - 1, int(warmup_epochs * steps_per_epoch))

        total, warmup = schedule(epochs)

        def lr_at(step: int) -> float:
            # Linear warm-up, then cosine decay to zero.
            if step < warmup:
                return self.lr * (step + 1) / warmup
            return self.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        self.loss_history: list[float] = []
        step = 0
        epoch = 0
        while epoch < epochs:
            started = time.perf_counter()
            self.net.train()
            perm = torch.randperm(len(x), generator=gen).to(x.device)
            # float64 on the device: the same sum as adding loss.item() per step on the
            # host, without a device-to-host wait per step
            running = torch.zeros((), dtype=torch.float64, device=x.device)
            for i in range(steps_per_epoch):
                xb = x[perm[i * bs : (i + 1) * bs]]
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                loss, _ = self.training_loss(xb, gen)
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                running += loss.detach().double()
                step += 1
            self.loss_history.append(running.item() / steps_per_epoch)
            epoch += 1
            ctx.report(epoch, epochs, loss=self.loss_history[-1])
            if self.epoch_plan is not None and epoch < epochs:
                planned = max(
                    epoch, min(self.epochs, int(self.epoch_plan(epoch, time.perf_counter() - started)))
                )
                if planned != epochs:
                    epochs = planned
                    total, warmup = schedule(epochs)
        self._epochs_trained = epoch
