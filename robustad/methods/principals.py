"""PrincipaLS: an autoencoder with a principal latent space (Lo, Oza, Patel, TPAMI 2022).

The authors released no code (their repository holds a README only). This
re-implementation follows secondary summaries of the paper for the method's
structure; every detail those summaries do not give is marked *our choice* below,
and the ones taken from the summaries rather than the paper are *secondary*.

Model
    x → encoder E (convolutions, BatchNorm, ReLU, max-pooling; final sigmoid, so the
    latent Z ∈ [0,1]^{v×h×w}) → principal latent space → decoder D (mirror of E,
    nearest-neighbour upsampling, final sigmoid) → x̂.

    The principal latent space is two PCA stages in cascade, both fixed linear maps
    at test time (buffers), learned during training by a moving average:

    1. *Vector-PCA* (k_V = 1): the s = h·w pixel vectors of Z (each of dimension v)
       are projected on one direction: Z_V[i] = (Z[:, i] − μ_V)·u_V, an s-vector per image.
    2. *Spatial-PCA* (k_S = 8): Z_S = (Z_V − μ_S) U_S, with U_S ∈ ℝ^{s×k_S}
       orthonormal.

    The inverse cascade Ẑ_V = Z_S U_Sᵀ + μ_S, Z_PLS[:, i] = Ẑ_V[i] u_V + μ_V feeds the
    decoder. The whole latent map Z ↦ Z_PLS is an orthogonal projection (affine,
    idempotent), differentiable in Z and so in the input.

Score
    s(x) = mean over pixels of (x − D(PLS(E(x))))². No clamp, no ``no_grad``, the
    BatchNorm layers in eval mode: the attacks' white-box gradient is the true one.

Training (adversarial; secondary: "PGD-based adversarial training")
    min_θ E_x max_{‖δ‖∞ ≤ ε_train} s_θ(x + δ) on normal training images only (our
    choice: the same objective the evaluation attack maximises on normals). The inner
    maximisation is L∞ PGD with a random start, α = 2.5 ε/steps, the network in eval
    mode (our choice; :func:`robustad.methods.training_attacks.pgd_on_loss`, the
    evaluation attacks' projection and random start); the outer step is Adam on the
    mean squared reconstruction error of the attacked batch, in training mode.

    Moving-average PCA at every step, on the latents of the batch the step trains on:
    batch PCA by SVD (no gradient), then μ ← (1−η)μ + η μ_batch and U ← (1−η)U + η U_batch.
    Our choices (not in the sources): η_V = η_S = 0.1; each batch direction's sign is
    aligned with the running one before averaging; u_V is renormalised and U_S
    re-orthonormalised (QR) after averaging; both are initialised from the PCA of the
    clean, training-mode latents of one seeded batch before the first step (a pass that
    also moves BatchNorm's running statistics once, so the first eval-mode training
    attack does not see untouched ones); the spatial stage's batch PCA is taken of the Z_V given by
    the *updated* running vector-PCA (what the forward pass feeds it); the training
    forward pass uses the updated running PCA as constants, so gradients reach the
    encoder through the projections but never the PCA parameters.

Other choices of ours: the layer widths (32, 64) and v = 64 at the published size;
the number of 2× poolings (``pools="auto"``: two, or fewer when the latent grid would
have no more than k_S cells, e.g. one on 8×8 digits, where two would leave 2×2);
ε_train = the benchmark's default ε (8/255 up to 64 px, 2/255 above); 5 PGD steps;
Adam lr 1e-3, 30 epochs; batches of at most ``batch_size`` (≥ 32 advised) and more
than k_S images, so that the spatial batch PCA is defined (a smaller ragged last batch
is skipped). ``info()`` records these as ``paper_details_unverified``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from robustad.errors import UserError
from robustad.methods.autoencoders import conv_autoencoder_layers, pooled_sizes
from robustad.methods.base import Detector, RunContext, seeded_fit_start, store_hparams
from robustad.methods.training_attacks import pgd_on_loss
from robustad.registry import register_method
from robustad.threat import default_eps

#: the published parameters not found in any source read, recorded by ``info()``
UNVERIFIED = ["architecture", "eps_train", "eta", "epochs"]


class MovingPCA(nn.Module):
    """Running mean and top-``k`` principal directions of row vectors, by moving average.

    Buffers: ``mean`` (dim,), ``components`` (dim, k) with orthonormal columns, and
    ``initialised``. :meth:`update` folds in the PCA of one batch of rows; :meth:`codes`
    and :meth:`expand` are the fixed linear maps (differentiable in their input, not
    in the buffers).
    """

    def __init__(self, dim: int, k: int, rate: float):
        super().__init__()
        if not 1 <= k <= dim:
            raise UserError(f"a PCA of {dim}-dimensional vectors cannot keep {k} components")
        if not 0 < rate <= 1:
            raise UserError(f"the PCA moving-average rate must be in (0, 1], got {rate!r}")
        self.dim, self.k, self.rate = dim, k, rate
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.eye(dim, k))
        self.register_buffer("initialised", torch.tensor(False))

    @staticmethod
    def batch_pca(rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Mean (dim,) and top-k right singular vectors (dim, k) of the centred rows, in float64."""
        rows = rows.detach().double()
        mean = rows.mean(0)
        _, _, vh = torch.linalg.svd(rows - mean, full_matrices=False)
        return mean, vh[:k].t()

    @torch.no_grad()
    def update(self, rows: Tensor) -> None:
        """Fold the PCA of ``rows`` (M, dim), M > k, into the running estimate."""
        if rows.shape[0] <= self.k:
            raise ValueError(f"a batch PCA with {self.k} components needs more than {self.k} rows")
        mean_b, comp_b = self.batch_pca(rows, self.k)
        if not bool(self.initialised):
            self.mean.copy_(mean_b)
            self.components.copy_(comp_b)
            self.initialised.fill_(True)
            return
        old = self.components.double()
        # SVD directions have an arbitrary sign: match each to the running one first.
        flip = torch.where((comp_b * old).sum(0) < 0, -1.0, 1.0).to(comp_b.dtype)
        comp = (1 - self.rate) * old + self.rate * comp_b * flip
        q, r = torch.linalg.qr(comp)
        sign = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)  # keep each column's direction
        self.components.copy_(q * sign)
        self.mean.copy_((1 - self.rate) * self.mean.double() + self.rate * mean_b)

    def codes(self, rows: Tensor) -> Tensor:
        """(M, dim) → (M, k): coordinates along the principal directions."""
        return (rows - self.mean) @ self.components

    def expand(self, codes: Tensor) -> Tensor:
        """(M, k) → (M, dim): back to the input space (mean added)."""
        return codes @ self.components.t() + self.mean

    def project(self, rows: Tensor) -> Tensor:
        """The orthogonal projection onto the principal affine subspace, (M, dim) → (M, dim)."""
        return self.expand(self.codes(rows))


@register_method(
    "principals",
    paper="Adversarially Robust One-class Novelty Detection (Lo, Oza, Patel, TPAMI 2022)",
    year=2022,
    adversarially_trained=True,
    pretrained=False,
    source="re-implementation: no official code; structure from secondary summaries of the paper",
    our_choices="widths, pooling, eps_train, PGD steps, PCA rates 0.1, sign alignment, QR, "
    "first-batch init, epochs, optimiser",
)
class PrincipaLS(Detector):
    """Parameters: encoder ``widths`` (two conv widths) and ``latent_channels`` (v),
    ``pools`` (2× max-poolings, ``"auto"`` or 0–2), ``k_spatial`` (k_S; k_V is 1),
    ``pca_rate`` (η_V = η_S), the schedule (``epochs``, ``batch_size``, ``lr``),
    ``max_train`` (a seeded subset of the training images; None = all), and the
    adversarial training: ``eps_train`` (``"auto"``: the benchmark's default L∞ ε for
    the image size, or a number; 0 trains clean) and ``train_attack_steps`` (PGD steps,
    0 trains clean). Every default is our choice (see the module docstring)."""

    fit_version = 1

    def __init__(
        self,
        widths: tuple[int, int] = (32, 64),
        latent_channels: int = 64,
        pools: int | str = "auto",
        k_spatial: int = 8,
        pca_rate: float = 0.1,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        eps_train: float | str = "auto",
        train_attack_steps: int = 5,
        max_train: int | None = None,
    ):
        super().__init__()
        store_hparams(self, locals())

    # -- the model --------------------------------------------------------------------------
    def resolved_pools(self, h: int, w: int) -> int:
        if self.pools != "auto":
            p = int(self.pools)
            if not 0 <= p <= 2:
                raise UserError(f"pools must be 'auto' or 0, 1 or 2, got {self.pools!r}")
            return p
        for p in (2, 1, 0):
            if (h >> p) * (w >> p) > self.k_spatial:
                return p
        return 0

    def build(self, input_shape: tuple[int, int, int]) -> None:
        super().build(input_shape)
        c, h, w = self.input_shape
        pools = self.resolved_pools(h, w)
        self.latent_hw = pooled_sizes(h, w, pools)[-1]
        s = self.latent_hw[0] * self.latent_hw[1]
        if s <= self.k_spatial:
            raise UserError(
                f"principals: the latent grid {self.latent_hw[0]}×{self.latent_hw[1]} has {s} cells, "
                f"not more than k_spatial={self.k_spatial}; use fewer pools or a smaller k_spatial"
            )
        v = int(self.latent_channels)
        enc, dec, _ = conv_autoencoder_layers(c, h, w, self.widths, v, pools)
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.vector_pca = MovingPCA(v, 1, self.pca_rate)
        self.spatial_pca = MovingPCA(s, self.k_spatial, self.pca_rate)
        self.register_buffer("train_images_used", torch.tensor(0))

    def principal_latent(self, z: Tensor) -> Tensor:
        """Z (N,v,h,w) → Z_PLS (N,v,h,w) through the vector- and spatial-PCA cascade and back."""
        n, v, h, w = z.shape
        rows = z.permute(0, 2, 3, 1).reshape(n * h * w, v)
        zv = self.vector_pca.codes(rows).view(n, h * w)
        zv_hat = self.spatial_pca.project(zv)
        rows_hat = self.vector_pca.expand(zv_hat.reshape(n * h * w, 1))
        return rows_hat.view(n, h, w, v).permute(0, 3, 1, 2)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder(self.principal_latent(self.encoder(x)))

    def score(self, x: Tensor) -> Tensor:
        """Mean squared reconstruction error per image; (N,) for (N,C,H,W) in [0,1]."""
        return ((x - self.reconstruct(x)) ** 2).flatten(1).mean(1)

    # -- facts recorded with results ------------------------------------------------------------
    def resolved_eps_train(self) -> float:
        if self.eps_train == "auto":
            size = min(self.input_shape[1:]) if self.input_shape else 32
            return default_eps("Linf", int(size))
        return float(self.eps_train)

    @property
    def adversarial(self) -> bool:
        return self.train_attack_steps > 0 and self.resolved_eps_train() > 0

    def info(self) -> dict[str, Any]:
        if self.input_shape is None:
            return {}
        h, w = self.latent_hw
        return {
            "latent": f"{self.latent_channels}x{h}x{w}, k_V=1, k_S={self.k_spatial}",
            "pca": f"moving average, rate {self.pca_rate}, fixed at test time",
            "epochs": self.epochs,
            "eps_train": round(self.resolved_eps_train(), 6) if self.adversarial else 0.0,
            "train_attack_steps": self.train_attack_steps if self.adversarial else 0,
            "train_images_used": int(self.train_images_used),
            "paper_details_unverified": list(UNVERIFIED),
        }

    # -- training -----------------------------------------------------------------------------
    @torch.no_grad()
    def update_pca(self, z: Tensor) -> None:
        """Fold a batch of latents (N,v,h,w) into both running PCAs (vector stage first)."""
        n, v, h, w = z.shape
        rows = z.detach().permute(0, 2, 3, 1).reshape(n * h * w, v)
        self.vector_pca.update(rows)
        self.spatial_pca.update(self.vector_pca.codes(rows).view(n, h * w))

    def training_attack(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The inner maximisation: L∞ PGD on the reconstruction error, network in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return pgd_on_loss(self.score, x, self.resolved_eps_train(), self.train_attack_steps, generator)
        finally:
            self.train(was_training)

    def fit(self, data, ctx: RunContext | None = None) -> PrincipaLS:
        ctx = ctx or RunContext()
        x, gen = seeded_fit_start(self, data.train_x, self.max_train, ctx.seed)
        self.train_images_used.fill_(len(x))
        self.to(ctx.device)
        x = x.to(ctx.device)
        bs = min(self.batch_size, len(x))
        if bs <= self.k_spatial:
            raise UserError(
                f"principals needs batches of more than k_spatial={self.k_spatial} images "
                f"(batch_size {self.batch_size}, {len(x)} training images)"
            )
        opt = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=self.lr)
        self.train()
        with torch.no_grad():  # initialise the PCA from the first batch (training-mode latents)
            self.update_pca(self.encoder(x[torch.randperm(len(x), generator=gen)[:bs].to(x.device)]))
        for epoch in range(self.epochs):
            perm = torch.randperm(len(x), generator=gen).to(x.device)
            total = torch.zeros((), dtype=torch.float64, device=x.device)
            seen = 0
            for i in range(0, len(x), bs):
                xb = x[perm[i : i + bs]]
                if len(xb) <= self.k_spatial:  # ragged last batch: the spatial batch PCA is undefined
                    continue
                if self.adversarial:
                    xb = self.training_attack(xb, gen)
                z = self.encoder(xb)
                self.update_pca(z)
                loss = ((xb - self.decoder(self.principal_latent(z))) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().double() * len(xb)
                seen += len(xb)
            ctx.report(epoch + 1, self.epochs, loss=total.item() / max(seen, 1))
        self.eval()
        return self
