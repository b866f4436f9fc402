"""Deep SVDD (Ruff et al., ICML 2018), the one-class objective.

A bias-free encoder φ maps normal training images close to a centre c, fixed
from the mean initial embedding of the training data (coordinates too close to
zero pushed to ±eta, so the trivial all-zero solution is not the centre). Training
minimises the mean squared distance to c with weight decay; the anomaly score is
the squared distance ‖φ(x) − c‖².

As in the authors' published PyTorch code:

* the centre is the mean of the initial network's outputs with the network in eval
  mode (BatchNorm's running statistics, not each chunk's batch statistics), and the
  same ε-adjustment (``eta``) of its near-zero coordinates;
* with ``pretrain_epochs > 0`` the encoder is first initialised from an autoencoder
  (the encoder plus the mirrored ``ConvDecoder``) trained on the normal training
  images: the summed squared reconstruction error per image, averaged over the
  batch, Adam with ``pretrain_lr`` / ``pretrain_weight_decay``, the learning rate
  multiplied by 0.1 at each of ``pretrain_lr_milestones`` (epochs), in batches of
  ``batch_size`` (the authors' commands use the same batch size for both phases).
  All of the encoder's state is copied, BatchNorm running statistics included, and
  the centre is computed from that network. Off by default: the CPU presets
  (``quick``, ``fmnist``) skip it; ``standard`` and ``paper`` use the authors' MNIST
  settings.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from robustad.methods.base import Detector, RunContext, store_hparams
from robustad.methods.encoders import ConvDecoder, ConvEncoder
from robustad.registry import register_method


@register_method(
    "deepsvdd",
    paper="Deep One-Class Classification (Ruff et al., ICML 2018)",
    year=2018,
    adversarially_trained=False,
    pretrained=False,
)
class DeepSVDD(Detector):
    # 2: the centre is initialised with the network in eval mode (it was in training
    # mode, so BatchNorm normalised each chunk of 512 training images by its own
    # statistics and the chunks updated the running statistics before training began);
    # this changes every fitted Deep SVDD, so the cached ones must be refitted
    fit_version = 2

    def __init__(
        self,
        width: int = 16,
        depth: int = 3,
        rep_dim: int = 32,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        eta: float = 0.1,
        pretrain_epochs: int = 0,
        pretrain_lr: float = 1e-4,
        pretrain_weight_decay: float = 0.5e-3,
        pretrain_lr_milestones: tuple[int, ...] = (),
    ):
        super().__init__()
        store_hparams(self, locals())
        self.encoder: ConvEncoder | None = None
        #: filled by a fit with pretraining: per-epoch reconstruction losses and learning
        #: rates, and the autoencoder's encoder state the one-class training started from
        #: (not saved with the detector)
        self.pretrain_record: dict | None = None

    def build(self, input_shape: tuple[int, int, int]) -> None:
        super().build(input_shape)
        c, h, w = self.input_shape
        self.encoder = ConvEncoder(c, min(h, w), self.width, self.depth, self.rep_dim, bias=False)
        self.register_buffer("center", torch.zeros(self.rep_dim))

    @torch.no_grad()
    def _init_center(self, x: Tensor) -> None:
        embeddings = torch.cat([self.encoder(x[i : i + 512]) for i in range(0, len(x), 512)])
        c = embeddings.mean(0)
        c[(c.abs() < self.eta) & (c < 0)] = -self.eta
        c[(c.abs() < self.eta) & (c >= 0)] = self.eta
        self.center.copy_(c)

    def _pretrain(self, x: Tensor, ctx: RunContext) -> None:
        """Train encoder + mirrored decoder as an autoencoder; copy its encoder into ours."""
        c, h, w = self.input_shape
        if h != w:
            raise ValueError(f"Deep SVDD pretraining needs square images, got {h}×{w}")
        encoder = copy.deepcopy(self.encoder)
        decoder = ConvDecoder(c, h, self.width, self.depth, self.rep_dim, bias=False).to(x.device)
        autoencoder = nn.Sequential(encoder, decoder).train()
        opt = torch.optim.Adam(
            autoencoder.parameters(), lr=self.pretrain_lr, weight_decay=self.pretrain_weight_decay
        )
        gen = torch.Generator().manual_seed(ctx.seed)
        losses, lrs = [], []
        for epoch in range(self.pretrain_epochs):
            for group in opt.param_groups:
                group["lr"] = self.pretrain_lr * 0.1 ** sum(epoch >= m for m in self.pretrain_lr_milestones)
            lrs.append(opt.param_groups[0]["lr"])
            perm = torch.randperm(len(x), generator=gen).to(x.device)
            total = torch.zeros((), dtype=torch.float64, device=x.device)
            for idx in self._batches(perm):
                loss = ((autoencoder(x[idx]) - x[idx]) ** 2).flatten(1).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().double() * len(idx)
            losses.append(total.item() / len(x))
        self.encoder.load_state_dict(encoder.state_dict())
        self.pretrain_record = {
            "losses": losses,
            "lrs": lrs,
            "encoder_state": {k: v.detach().clone() for k, v in encoder.state_dict().items()},
        }

    def _batches(self, perm):
        """Index batches of ``batch_size`` in the order of ``perm``; a last batch of one
        image is skipped (BatchNorm needs two samples in training mode)."""
        for i in range(0, len(perm), self.batch_size):
            idx = perm[i : i + self.batch_size]
            if len(idx) >= 2:
                yield idx

    def fit(self, data, ctx: RunContext | None = None) -> DeepSVDD:
        ctx = ctx or RunContext()
        x = data.train_x
        self.build(tuple(x.shape[1:]))
        self.to(ctx.device)
        x = x.to(ctx.device)  # resident on the device for the whole fit, not copied per batch
        self.pretrain_record = None
        if self.pretrain_epochs > 0:
            self._pretrain(x, ctx)
        # the centre from the initial network in eval mode, as the authors' init_center_c
        self.eval()
        self._init_center(x)
        self.train()
        opt = torch.optim.Adam(self.encoder.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(ctx.seed)
        for epoch in range(self.epochs):
            perm = torch.randperm(len(x), generator=gen).to(x.device)
            # float64 on the device: the same sum as adding on the host, without a
            # device-to-host wait per step
            total = torch.zeros((), dtype=torch.float64, device=x.device)
            for idx in self._batches(perm):
                z = self.encoder(x[idx])
                loss = ((z - self.center) ** 2).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().double() * len(idx)
            ctx.report(epoch + 1, self.epochs, loss=total.item() / len(x))
        self.eval()
        return self

    def score(self, x: Tensor) -> Tensor:
        return ((self.encoder(x) - self.center) ** 2).sum(1)

    def info(self) -> dict:
        return {
            "pretraining": (
                f"autoencoder, {self.pretrain_epochs} epochs" if self.pretrain_epochs > 0 else "none"
            ),
            "pretrain_epochs": int(self.pretrain_epochs),
            "centre": "mean of the initial network's eval-mode outputs (eta-adjusted)",
        }
