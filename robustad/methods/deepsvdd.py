"""Deep SVDD (Ruff et al., ICML 2018), the one-class objective.

A bias-free encoder φ maps normal training images close to a centre c, fixed
from the mean initial embedding of the training data (coordinates too close to
zero pushed to ±eta, so the trivial all-zero solution is not the centre). Training
minimises the mean squared distance to c with weight decay; the anomaly score is
the squared distance ‖φ(x) − c‖².
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustad.methods.base import Detector, RunContext, store_hparams
from robustad.methods.encoders import ConvEncoder
from robustad.registry import register_method


@register_method(
    "deepsvdd",
    paper="Deep One-Class Classification (Ruff et al., ICML 2018)",
    year=2018,
    adversarially_trained=False,
    differentiable=True,
    pretrained=False,
)
class DeepSVDD(Detector):
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
    ):
        super().__init__()
        store_hparams(self, locals())
        self.encoder: ConvEncoder | None = None

    def build(self, input_shape: tuple[int, int, int]) -> None:
        super().build(input_shape)
        c, h, w = self.input_shape
        self.encoder = ConvEncoder(c, min(h, w), self.width, self.depth, self.rep_dim, bias=False)
        self.register_buffer("center", torch.zeros(self.rep_dim))

    @torch.no_grad()
    def _init_center(self, x: Tensor, device: str) -> None:
        embeddings = torch.cat([self.encoder(x[i : i + 512].to(device)) for i in range(0, len(x), 512)])
        c = embeddings.mean(0)
        c[(c.abs() < self.eta) & (c < 0)] = -self.eta
        c[(c.abs() < self.eta) & (c >= 0)] = self.eta
        self.center.copy_(c)

    def fit(self, data, ctx: RunContext | None = None) -> DeepSVDD:
        ctx = ctx or RunContext()
        x = data.train_x
        self.build(tuple(x.shape[1:]))
        self.to(ctx.device)
        x = x.to(ctx.device)  # resident on the device for the whole fit, not copied per batch
        self.train()
        self._init_center(x, ctx.device)
        opt = torch.optim.Adam(self.encoder.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(ctx.seed)
        for epoch in range(self.epochs):
            perm = torch.randperm(len(x), generator=gen).to(x.device)
            # float64 on the device: the same sum as adding on the host, without a
            # device-to-host wait per step
            total = torch.zeros((), dtype=torch.float64, device=x.device)
            for i in range(0, len(x), self.batch_size):
                idx = perm[i : i + self.batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples in training mode
                    continue
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
