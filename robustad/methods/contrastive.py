"""Contrastive learning with shifted instances: the scoring model CSI and COBRA share.

CSI (Tack et al., NeurIPS 2020) and COBRA (ICLR 2025; docs/METHODS.md) use
the same encoder F, projection head G, group head H, light augmentations, group
transforms (pseudo-anomalies) and anomaly score; COBRA adds three adversarial
training attacks and the opposite-pair term to the loss. Both are
:class:`ShiftedContrastiveDetector` with different switches; ``csi.py`` and
``cobra.py`` only register them with their own parameter lists.

This module holds the model and its score: :class:`ShiftedContrastiveNet`, and the
detector's build, fixed test views, bank and weights, score and surrogate score,
recorded facts and checkpoint loading. The rest lives beside it:

- :mod:`robustad.methods.views`: the light augmentations and colour/geometry primitives;
- :mod:`robustad.methods.pseudo_anomalies`: the group transforms Υ_k;
- :mod:`robustad.methods.contrastive_loss`: the loss (L_COBRA, CSI's NT-Xent) and its
  index sets, in the block layout described there;
- :mod:`robustad.methods.contrastive_training`: the training loop (views, training
  attacks, SGD, the speed switches' code path); :meth:`ShiftedContrastiveDetector.fit`
  delegates to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustad.errors import UserError
from robustad.methods.base import Detector, RunContext
from robustad.methods.contrastive_training import ContrastiveTrainer
from robustad.methods.encoders import resnet_for
from robustad.methods.knn import soft_max
from robustad.methods.pseudo_anomalies import PseudoAnomalies
from robustad.methods.views import apply_light_aug, sample_light_aug_params


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


# -- the detector ------------------------------------------------------------------------------
class ShiftedContrastiveDetector(Detector):
    """CSI / COBRA. Subclasses set the parameters; this class holds the model and its
    score, and :meth:`fit` hands training to
    :class:`~robustad.methods.contrastive_training.ContrastiveTrainer`.

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

    # -- training (the loop: robustad.methods.contrastive_training) ------------------------
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

    def fit(self, data, ctx: RunContext | None = None) -> ShiftedContrastiveDetector:
        """Train (SGD, momentum 0.9, linear warm-up then cosine decay), then the bank and weights.

        The training loop is :class:`~robustad.methods.contrastive_training.ContrastiveTrainer`
        (:meth:`~robustad.methods.contrastive_training.ContrastiveTrainer.fit`). The
        training images are moved to ``ctx.device`` once, not per batch. The
        training-speed switches (:meth:`speed_switches`) apply to the training steps;
        the score statistics are computed in float32, in the default memory format.
        """
        return ContrastiveTrainer(self).fit(data, ctx)
