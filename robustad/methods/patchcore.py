"""PatchCore (Roth et al., CVPR 2022): nearest-neighbour distances of locally aggregated
mid-level patch features to a coreset memory bank.

Two variants behind one switch, ``variant``:

``"paper"`` (the authors' code)
    Each of ``layer2``/``layer3`` is unfolded into 3×3 neighbourhoods (zero padding),
    ``layer3``'s are bilinearly upsampled to ``layer2``'s grid, each flattened
    neighbourhood (C·9 values, channel-major) is adaptive-average-pooled to
    ``embed_dim`` values per layer, and the two layers' vectors are pooled together to
    ``embed_dim`` (1024 at the published size). Coreset: the approximate greedy
    k-center on a 128-d random projection, initial distances to 10 random starts.
    Patch score: the *squared* distance to the nearest bank entry; image score: the
    largest patch score.
``"anomalib"``
    3×3 average pooling of each layer (zero padding counted), ``layer3`` bilinearly
    upsampled, concatenation (1536 dims for WideResNet-50-2); k-center greedy on a
    sparse Johnson–Lindenstrauss projection. Patch score: Euclidean distance; image
    score re-weighted as in eq. 7: with p* the most anomalous patch, m* its nearest
    bank entry and N_b(m*) the ``num_neighbors`` bank entries nearest to m* (m* first,
    stored at fit time), s = (1 − softmax(‖φ_p* − m‖ for m in N_b(m*))[m*]) · d_p*.

Gradients reach the pixels: the resize, crop and ImageNet normalisation are inside
the model (``backbones.ImageNetInput``), the frozen backbone runs in eval mode *with*
autograd, and distances are exact and computed out of place over the whole bank at
every call (``knn.knn_distances``; anomalib runs the extractor under ``no_grad`` and
ends its distance in an in-place ``sqrt_``). The exact score passes gradient only
through the arg-max patch and its current neighbour; ``surrogate_score`` (soft-min
over the bank, soft-max over patches, re-weighting dropped) is the smooth objective
for the adaptive attacks, at a temperature of ``surrogate_temperature`` × the
median nearest-neighbour distance within the bank.

``anomaly_map``: the patch scores on ``layer2``'s grid, upsampled to the model's input
size (bilinear for ``paper``, nearest for ``anomalib``), Gaussian-blurred with σ =
``map_sigma`` (radius 4σ; half-sample-symmetric borders as scipy's ``reflect``,
which anomalib's torch ``reflect`` approximates), then mapped back to the native
image (the inverse of the in-model resize and crop; pixels outside a centre crop
take the nearest border value).

Weights (``weights``, robustad.methods.weights): ``"imagenet"`` needs torchvision's
file on disk; ``None`` is a random-feature k-NN, flagged ``[random weights]``, not
PatchCore. Our deviations: the resize is torch's (PIL's bicubic kernel is not
reproduced), grey images are repeated to three channels inside the model, and ε is
measured in native pixels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robustad.errors import UserError
from robustad.methods import knn
from robustad.methods import weights as wts
from robustad.methods.backbones import ImageNetInput, ResNetLayers, channels_of
from robustad.methods.base import Detector, RunContext, seeded_fit_start, store_hparams
from robustad.registry import register_method

VARIANTS = ("paper", "anomalib")


def gaussian_blur(maps: Tensor, sigma: float, border: str = "symmetric") -> Tensor:
    """Separable Gaussian blur of (N,H,W) maps, radius round(4σ), any map size.

    ``border``: ``symmetric`` (scipy's ``reflect``: d c b a | a b c d) or ``reflect``
    (torch's: d c b | a b c d). Padding is done by indexing, so a radius larger than
    the map is fine.
    """
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps[:, None]
    for dim in (2, 3):
        n = out.shape[dim]
        idx = torch.arange(-radius, n + radius, device=maps.device)
        if border == "symmetric":
            period = 2 * n
            idx = idx % period
            idx = torch.where(idx >= n, period - 1 - idx, idx)
        else:
            period = max(2 * n - 2, 1)
            idx = idx % period
            idx = torch.where(idx >= n, period - idx, idx)
        out = out.index_select(dim, idx)
        k = kernel.view(1, 1, -1, 1) if dim == 2 else kernel.view(1, 1, 1, -1)
        out = F.conv2d(out, k)
    return out[:, 0]


def paper_embedding(maps: list[Tensor], embed_dim: int) -> Tensor:
    """The authors' locally aware patch features, (N, P, embed_dim) on the first map's grid.

    Each map is unfolded into 3×3 neighbourhoods (zero padding), deeper ones are
    bilinearly upsampled to the first map's grid, each flattened neighbourhood (C·9
    values, channel-major) is adaptive-average-pooled to ``embed_dim`` values, and the
    layers' vectors, side by side, are pooled to ``embed_dim`` again.
    """
    n = len(maps[0])
    h, w = maps[0].shape[-2:]
    pooled = []
    for fmap in maps:
        c = fmap.shape[1]
        fmap = F.unfold(fmap, 3, padding=1).view(n, c * 9, *fmap.shape[-2:])
        if fmap.shape[-2:] != (h, w):
            fmap = F.interpolate(fmap, size=(h, w), mode="bilinear", align_corners=False)
        fmap = fmap.flatten(2).transpose(1, 2).reshape(n * h * w, 1, c * 9)
        pooled.append(F.adaptive_avg_pool1d(fmap, embed_dim))
    return F.adaptive_avg_pool1d(torch.cat(pooled, 2), embed_dim).view(n, h * w, embed_dim)


def anomalib_embedding(maps: list[Tensor]) -> Tensor:
    """anomalib's patch features: 3×3 average pooling (padding counted), deeper maps
    bilinearly upsampled to the first one's grid, concatenated: (N, P, ΣC)."""
    h, w = maps[0].shape[-2:]
    out = []
    for fmap in maps:
        fmap = F.avg_pool2d(fmap, 3, stride=1, padding=1)
        if fmap.shape[-2:] != (h, w):
            fmap = F.interpolate(fmap, size=(h, w), mode="bilinear", align_corners=False)
        out.append(fmap)
    return torch.cat(out, 1).flatten(2).transpose(1, 2)


@register_method(
    "patchcore",
    paper="Towards Total Recall in Industrial Anomaly Detection (Roth et al., CVPR 2022)",
    year=2022,
    adversarially_trained=False,
    pretrained=True,
    localises=True,
    weights_found=lambda: wts.weights_status("wide_resnet50_2"),
)
class PatchCore(wts.PretrainedBackbone, Detector):
    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: tuple[str, ...] = ("layer2", "layer3"),
        variant: str = "paper",
        weights: str | None = "imagenet",
        input_size: int | None = 224,
        resize_to: int | None = 256,
        embed_dim: int = 1024,
        coreset_ratio: float = 0.1,
        coreset_proj_dim: int = 128,
        num_neighbors: int = 9,
        map_sigma: float = 4.0,
        surrogate_temperature: float = 0.05,
        max_train: int | None = None,
        batch_size: int = 32,
        max_bank_bytes: float = 8e9,
        knn_backend: str = "torch",
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if input_size is None and resize_to is not None:
            raise ValueError("resize_to (a centre crop) needs an input_size")
        if resize_to is not None and resize_to < input_size:
            raise ValueError(f"resize_to {resize_to} must be at least input_size {input_size}")
        if knn_backend not in ("torch", "faiss"):
            raise ValueError(f"knn_backend must be 'torch' or 'faiss', got {knn_backend!r}")
        if num_neighbors < 1 or embed_dim < 1:
            raise ValueError("num_neighbors and embed_dim must be positive")
        layers = tuple(layers)
        store_hparams(self, locals())
        self.layers = layers
        self._resolved: wts.ResolvedWeights | None = None

    # -- model -------------------------------------------------------------------
    @property
    def squared(self) -> bool:
        return self.variant == "paper"

    def build(self, input_shape: tuple[int, int, int]) -> None:
        super().build(input_shape)
        self.preprocess = ImageNetInput(self.input_size, self.resize_to, "bilinear")
        self.extractor = ResNetLayers(wts.build_backbone(self.backbone, wts.RANDOM_INIT),
                                      self.layers)  # fmt: skip
        dim = self.feature_dim()
        self.register_buffer("bank", torch.zeros(0, dim))
        self.register_buffer("bank_neighbors", torch.zeros(0, self.num_neighbors, dtype=torch.long))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("train_images_used", torch.zeros((), dtype=torch.long))

    def feature_dim(self) -> int:
        if self.variant == "paper":
            return self.embed_dim
        return sum(channels_of(self.backbone, name) for name in self.layers)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the bank's size is known only after fit: take it from the checkpoint
        for key in ("bank", "bank_neighbors"):
            if prefix + key in state_dict:
                setattr(self, key, torch.empty_like(state_dict[prefix + key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def patch_features(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(N, P, D) patch features and the (h, w) grid of the first layer."""
        maps = self.extractor(self.preprocess(x))
        maps = [maps[name] for name in self.layers]
        if self.variant == "paper":
            return paper_embedding(maps, self.embed_dim), tuple(maps[0].shape[-2:])
        return anomalib_embedding(maps), tuple(maps[0].shape[-2:])

    # -- fit ---------------------------------------------------------------------
    def fit(self, data, ctx: RunContext | None = None) -> PatchCore:
        ctx = ctx or RunContext()
        resolved = wts.resolve(self.backbone, self.weights)
        x, gen = seeded_fit_start(self, data.train_x, self.max_train, ctx.seed)
        if resolved.pretrained:
            self.extractor = ResNetLayers(wts.build_backbone(self.backbone, resolved), self.layers)
        self._resolved = resolved
        self.train_images_used.fill_(len(x))
        self.to(ctx.device).eval()
        feats = []
        with torch.no_grad():
            first, _ = self.patch_features(x[:1].to(ctx.device))
            n_patches = len(x) * first.shape[1]
            bank_bytes = n_patches * self.feature_dim() * 4
            if bank_bytes > self.max_bank_bytes:
                raise UserError(
                    f"patchcore's feature set would take {bank_bytes / 1e9:.1f} GB (> max_bank_bytes "
                    f"{self.max_bank_bytes / 1e9:.1f} GB): lower max_train or input_size"
                )
            for i in range(0, len(x), self.batch_size):
                f, _ = self.patch_features(x[i : i + self.batch_size].to(ctx.device))
                feats.append(f.flatten(0, 1))
                ctx.report(i + len(f), len(x), phase=0)
        feats = torch.cat(feats)
        n_select = max(1, int(self.coreset_ratio * len(feats)))
        if n_select >= len(feats):
            index = torch.arange(len(feats))
        elif self.variant == "paper":
            index = knn.approximate_greedy_coreset(feats, n_select, gen, self.coreset_proj_dim)
        else:
            index = knn.kcenter_greedy_coreset(feats, n_select, gen)
        self.bank = feats[index.to(feats.device)].contiguous()
        with torch.no_grad():
            b = min(self.num_neighbors, len(self.bank))
            _, nbrs = knn.knn_distances(self.bank, self.bank, k=b)
            # m* first, even when the bank holds exact duplicates of it
            own = torch.arange(len(self.bank), device=nbrs.device)[:, None]
            rest = (
                torch.stack([r[r != i][: b - 1] for i, r in zip(own[:, 0], nbrs)]) if b > 1 else nbrs[:, :0]
            )
            self.bank_neighbors = torch.cat([own, rest], 1)
            sample = self.bank[torch.randperm(len(self.bank), generator=gen)[:2000].to(self.bank.device)]
            d, _ = knn.knn_distances(sample, self.bank, k=min(2, len(self.bank)), squared=self.squared)
            median = float(d[:, -1].median()) if len(self.bank) > 1 else 1.0
            self.temperature.fill_(self.surrogate_temperature * max(median, 1e-6))
        return self

    # -- score -------------------------------------------------------------------
    def patch_scores(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        """Per-patch nearest distances (N,P), their bank indices, the features, the grid."""
        f, grid = self.patch_features(x)
        n, p, dim = f.shape
        # faiss finds the neighbours faster in very large banks; distances are torch's either way
        search = knn.faiss_knn_distances if self.knn_backend == "faiss" else knn.knn_distances
        d, idx = search(f.reshape(n * p, dim), self.bank, k=1, squared=self.squared)
        return d.view(n, p), idx.view(n, p), f, grid

    def score(self, x: Tensor) -> Tensor:
        d, idx, f, _ = self.patch_scores(x)
        top, p_star = d.max(dim=1)
        if self.variant == "paper" or self.num_neighbors == 1:
            return top
        rows = torch.arange(len(x), device=x.device)
        phi = f[rows, p_star]  # (N, D): the most anomalous patch
        neighbours = self.bank_neighbors[idx[rows, p_star]]  # (N, b): m* first
        dist = knn.distances_to(phi, self.bank, neighbours, squared=False)
        weight = 1.0 - torch.softmax(dist, dim=1)[:, 0]
        return weight * top

    def surrogate_score(self, x: Tensor, temperature: float | None = None) -> Tensor:
        """Soft-min over the bank, soft-max over patches (re-weighting dropped)."""
        tau = float(self.temperature) if temperature is None else temperature
        f, _ = self.patch_features(x)
        n, p, dim = f.shape
        d = knn.soft_knn_distance(f.reshape(n * p, dim), self.bank, tau, squared=self.squared).view(n, p)
        return knn.soft_max(d, tau, dim=1)

    def anomaly_map(self, x: Tensor) -> Tensor:
        d, _, _, (h, w) = self.patch_scores(x)
        maps = d.view(len(x), 1, h, w)
        size = self.input_size or x.shape[-1]
        mode = "bilinear" if self.variant == "paper" else "nearest"
        maps = F.interpolate(
            maps, size=(size, size), mode=mode, **({"align_corners": False} if mode == "bilinear" else {})
        )
        maps = gaussian_blur(
            maps[:, 0], self.map_sigma, "symmetric" if self.variant == "paper" else "reflect"
        )
        # back to native pixels: the crop covers the centre fraction of the resized image
        frac = self.preprocess.crop_fraction()
        H, W = x.shape[-2:]
        ch, cw = max(1, round(H * frac)), max(1, round(W * frac))
        maps = F.interpolate(maps[:, None], size=(ch, cw), mode="bilinear", align_corners=False)
        if (ch, cw) != (H, W):
            top, left = (H - ch) // 2, (W - cw) // 2
            maps = F.pad(maps, (left, W - cw - left, top, H - ch - top), mode="replicate")
        return maps[:, 0]

    def info(self) -> dict[str, Any]:
        resolved = self._resolved
        facts = resolved.info() if resolved else {"pretrained": self.weights is not None}
        return {
            **facts,
            "bank_size": int(self.bank.shape[0]),
            "feature_dim": int(self.bank.shape[1]) if self.bank.numel() else self.feature_dim(),
            "train_images_used": int(self.train_images_used),
            "surrogate_temperature_abs": float(self.temperature),
            "resize": "torch bilinear inside the model (PIL's resize not reproduced)",
            "grey_input": "repeated to 3 channels inside the model",
        }
