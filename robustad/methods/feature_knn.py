"""ZARND and MSAD: k nearest training features of a (pretrained) ResNet's global feature.

Both score s(x) = Σ_{j≤k} ‖f(x) − f_(j)‖² with f(x) = normalize₂(GAP(ResNet(x))), the
sum of squared Euclidean distances to the ``k`` = 2 nearest training features
(faiss ``IndexFlatL2`` in both releases; here the exact torch k-NN over the whole
bank, recomputed at every call, so the gradient is the score's own).
``surrogate_score`` replaces the k smallest by k × the soft-min over the bank, at a
temperature of ``surrogate_temperature`` × the median nearest-neighbour distance
within the bank, for the adaptive attacks.

ZARND (Mirzaei et al., ICASSP 2024) trains nothing; its release attacks a
mean-embedding surrogate (MSE to the mean training feature), which is not the
score: here the attack sees the exact k-NN score. MSAD (Reiss & Hoshen, AAAI 2023)
fine-tunes the backbone with the mean-shifted contrastive loss first.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robustad.methods import knn
from robustad.methods import weights as wts
from robustad.methods.backbones import ImageNetInput, ResNetLayers
from robustad.methods.base import Detector, RunContext, seeded_fit_start, store_hparams
from robustad.methods.contrastive_loss import log_softmax_offdiag
from robustad.methods.views import apply_light_aug, sample_light_aug_params
from robustad.registry import register_method


class GlobalFeatureKNN(wts.PretrainedBackbone, Detector):
    """Shared body: in-model ImageNet input, GAP feature, k-NN bank, surrogate."""

    resize_mode = "bicubic"

    def build(self, input_shape: tuple[int, int, int]) -> None:
        super().build(input_shape)
        self.preprocess = ImageNetInput(self.input_size, self.resize_to, self.resize_mode)
        self.extractor = ResNetLayers(wts.build_backbone(self.backbone, wts.RANDOM_INIT),
                                      ("pool",))  # fmt: skip
        self.register_buffer("bank", torch.zeros(0, 1))
        self.register_buffer("surrogate_tau", torch.ones(()))
        self.register_buffer("train_images_used", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "bank" in state_dict:  # the bank's size is known only after fit
            self.bank = torch.empty_like(state_dict[prefix + "bank"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def load_weights(self, ctx: RunContext) -> wts.ResolvedWeights:
        resolved = wts.resolve(self.backbone, self.weights)
        if resolved.pretrained:
            self.extractor = ResNetLayers(wts.build_backbone(self.backbone, resolved), ("pool",))
        self._resolved = resolved
        return resolved

    def raw_features(self, x: Tensor) -> Tensor:
        """GAP feature of the backbone, before normalisation."""
        return self.extractor(self.preprocess(x))["pool"]

    def features(self, x: Tensor) -> Tensor:
        return F.normalize(self.raw_features(x), dim=1)

    @torch.no_grad()
    def fit_bank(self, x: Tensor, gen: torch.Generator, device: str) -> None:
        self.eval()
        self.bank = torch.cat([self.features(x[i : i + 256].to(device)) for i in range(0, len(x), 256)])
        sample = self.bank[torch.randperm(len(self.bank), generator=gen)[:2000].to(self.bank.device)]
        d, _ = knn.knn_distances(sample, self.bank, k=min(2, len(self.bank)), squared=True)
        median = float(d[:, -1].median()) if len(self.bank) > 1 else 1.0
        self.surrogate_tau.fill_(self.surrogate_temperature * max(median, 1e-8))

    def score(self, x: Tensor) -> Tensor:
        d, _ = knn.knn_distances(self.features(x), self.bank, k=min(self.k, len(self.bank)), squared=True)
        return d.sum(1)

    def surrogate_score(self, x: Tensor, temperature: float | None = None) -> Tensor:
        tau = float(self.surrogate_tau) if temperature is None else temperature
        return self.k * knn.soft_knn_distance(self.features(x), self.bank, tau, squared=True)

    def info(self) -> dict[str, Any]:
        resolved = getattr(self, "_resolved", None)
        facts = resolved.info() if resolved else {"pretrained": self.weights is not None}
        return {
            **facts,
            "bank_size": int(self.bank.shape[0]),
            "train_images_used": int(self.train_images_used),
            "surrogate_temperature_abs": float(self.surrogate_tau),
            "resize": f"torch {self.resize_mode} inside the model (PIL's bicubic, a = -0.5, not reproduced)",
            "grey_input": "repeated to 3 channels inside the model (the releases repeat before the attack)",
        }


@register_method(
    "zarnd",
    paper="Killing It With Zero-Shot: Adversarially Robust Novelty Detection (Mirzaei et al., ICASSP 2024)",
    year=2024,
    adversarially_trained=False,
    pretrained=True,
    weights_found=lambda: wts.weights_status("resnet18"),
)
class ZARND(GlobalFeatureKNN):
    """Zero-shot k-NN on an (adversarially pretrained) ImageNet ResNet; nothing is trained.

    The release's README uses a robust ResNet-18 (L∞ ε = 8/255 on ImageNet): pass the
    converted state dict as ``weights=PATH`` and its ε as ``backbone_robust_eps``
    (recorded). ``weights="imagenet"`` is the standard torchvision ResNet, which the
    release also offers. Images are resized to ``input_size`` (bicubic) in the model.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        weights: str | None = "imagenet",
        backbone_robust_eps: float | None = None,
        input_size: int | None = 224,
        resize_to: int | None = None,
        k: int = 2,
        surrogate_temperature: float = 0.05,
        max_train: int | None = None,
    ):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        store_hparams(self, locals())

    def fit(self, data, ctx: RunContext | None = None) -> ZARND:
        ctx = ctx or RunContext()
        x, gen = seeded_fit_start(self, data.train_x, self.max_train, ctx.seed)
        self.load_weights(ctx)
        self.to(ctx.device)
        self.train_images_used.fill_(len(x))
        self.fit_bank(x, gen, ctx.device)
        return self

    def info(self) -> dict[str, Any]:
        return {**super().info(), "backbone_robust_eps": self.backbone_robust_eps}


def nt_xent(u1: Tensor, u2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent over the 2B rows [u1; u2] (unit vectors): each row's positive is
    its other view, the 2B − 2 other rows are its negatives."""
    z = torch.cat([u1, u2])
    b = len(u1)
    logp = log_softmax_offdiag(z, temperature)
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return -logp[torch.arange(2 * b, device=z.device), pos].mean()


def random_blur(
    x: Tensor, generator: torch.Generator, p: float = 0.5, sigma=(0.1, 2.0), ref: int = 224
) -> Tensor:
    """MoCo-v2's Gaussian blur (p 0.5, σ ∈ [0.1, 2] at 224 px, scaled to the image size)."""
    from robustad.methods.patchcore import gaussian_blur

    out = []
    apply = torch.rand(len(x), generator=generator) < p
    s = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(len(x), generator=generator)
    for img, a, sg in zip(x, apply, s):
        if a:
            img = gaussian_blur(img, float(sg) * x.shape[-1] / ref)
        out.append(img)
    return torch.stack(out)


@register_method(
    "msad",
    paper="Mean-Shifted Contrastive Loss for Anomaly Detection (Reiss & Hoshen, AAAI 2023)",
    year=2023,
    adversarially_trained=False,
    pretrained=True,
    weights_found=lambda: wts.weights_status("resnet152"),
)
class MSAD(GlobalFeatureKNN):
    """Mean-shifted contrastive fine-tuning of an ImageNet ResNet, then k-NN (k = 2).

    As released: the centre c is the mean training feature (test transform, before
    training, not renormalised); two MoCo-v2 views per image (random resized crop
    0.2–1, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, greyscale p 0.2, Gaussian blur
    p 0.5, flip); NT-Xent at temperature 0.25 over normalize(f(x) − c); SGD lr 1e-5,
    weight decay 5e-5, no momentum, 20 epochs, batches of 64; the whole network stays in
    eval mode (frozen BatchNorm statistics, trainable affine parameters); ResNet-152
    freezes conv1, bn1, layer1, layer2, ResNet-18 nothing. The bank is the *unshifted*
    normalised training features after training. Ours: the augmentations are applied at
    the native size before the in-model resize (the blur's σ scaled accordingly).
    """

    def __init__(
        self,
        backbone: str = "resnet152",
        weights: str | None = "imagenet",
        input_size: int | None = 224,
        resize_to: int | None = 256,
        epochs: int = 20,
        batch_size: int = 64,
        lr: float = 1e-5,
        weight_decay: float = 5e-5,
        nt_xent_temperature: float = 0.25,
        k: int = 2,
        surrogate_temperature: float = 0.05,
        max_train: int | None = None,
    ):
        super().__init__()
        if k < 1 or epochs < 0 or batch_size < 2:
            raise ValueError("msad needs k ≥ 1, epochs ≥ 0 and batch_size ≥ 2")
        store_hparams(self, locals())

    @property
    def resize_mode(self) -> str:  # type: ignore[override]
        return "bilinear" if self.backbone == "resnet152" else "bicubic"

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("stem", "blocks.0", "blocks.1") if self.backbone == "resnet152" else ()

    def fit(self, data, ctx: RunContext | None = None) -> MSAD:
        ctx = ctx or RunContext()
        x, gen = seeded_fit_start(self, data.train_x, self.max_train, ctx.seed)
        self.load_weights(ctx)
        self.to(ctx.device)
        self.train_images_used.fill_(len(x))
        params = []
        for name, p in self.extractor.named_parameters():
            trainable = not name.startswith(self.frozen_prefixes())
            p.requires_grad_(trainable)
            if trainable:
                params.append(p)
        self.eval()  # the release fine-tunes in eval mode: BatchNorm statistics stay frozen
        with torch.no_grad():
            centre = torch.cat(
                [self.raw_features(x[i : i + 256].to(ctx.device)) for i in range(0, len(x), 256)]
            )
            centre = F.normalize(centre, dim=1).mean(0)
        opt = torch.optim.SGD(params, lr=self.lr, weight_decay=self.weight_decay)
        bs = min(self.batch_size, len(x))
        steps = math.ceil(len(x) / bs)
        for epoch in range(self.epochs):
            perm = torch.randperm(len(x), generator=gen)
            total = 0.0
            for i in range(0, len(x), bs):
                xb = x[perm[i : i + bs]]
                if len(xb) < 2:
                    continue
                views = []
                for _ in range(2):
                    aug = sample_light_aug_params(len(xb), gen, crop=True, min_crop_scale=0.2)
                    views.append(random_blur(apply_light_aug(xb, aug), gen).to(ctx.device))
                u1, u2 = (F.normalize(self.features(v) - centre, dim=1) for v in views)
                loss = nt_xent(u1, u2, self.nt_xent_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
            ctx.report(epoch + 1, self.epochs, loss=total / steps)
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        self.fit_bank(x, gen, ctx.device)
        return self
