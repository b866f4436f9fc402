"""APAE: approximate projection plus feature weighting (Goodge, Hooi, Ng, Ng, IJCAI 2020,
"Robustness of Autoencoders for Anomaly Detection Under Adversarial Impact").

The authors' code (``agoodge/APAE``) is for tabular sensor windows (SWaT/WADI). This is
the image version, built from the defence as the code computes it; no image
implementation of APAE is public, so the image-specific parts are *our choice*.

Model (our choice for images)
    The convolutional autoencoder shared with PrincipaLS
    (:mod:`robustad.methods.autoencoders`, sigmoid latent map and sigmoid output)
    without its PCA stages, plus a linear bottleneck from the v×h×w latent map to a
    ``latent_dim``-vector z (no activation, as the authors' fully connected AE has none
    at its code layer) and back. ``latent_dim=None`` makes the latent map itself z.

Training (as the authors' code)
    SmoothL1 reconstruction loss (β = 1, mean over pixels and images), Adam (lr 1e-3,
    betas (0.5, 0.999)), batches of 256, at most 200 epochs, a seeded random 15%
    validation split, and early stopping once the last validation batch's loss is
    below 0.003. Our choices: the validation loss is computed in eval mode after each
    epoch; a training batch of one image is skipped (BatchNorm).

Score
    1. *Approximate projection.* z₀ = E(x), then K steps of plain gradient descent on
       L(z) = Σ_pixels SmoothL1(D(z), x), step α = 1e-2, the gradient recomputed (not
       accumulated) each step, as the paper's algorithm; ``accumulate_grad=True``
       reproduces the released code, which never zeroes the latent's gradient (each
       step applies the sum of all gradients so far). L is summed per image, so each
       image's latent descends on its own loss: the score of an image does not depend
       on the batch. x̂ = D(z_K). K defaults to 1000 as in the code (``standard`` and
       ``paper``); the CPU presets use a few steps (our choice: ``quick`` 3, ``fmnist`` 5,
       recorded in ``info()``), so their projection is far from converged.
    2. *Feature weighting.* e_p(x) = SmoothL1(x_p, x̂_p) per pixel (and channel);
       w_p = 1 / (ε_w + median over training images of e_p), ε_w = 1e-3, the training
       errors from the *plain* reconstruction D(E(x_train)) as in the code (our choice:
       over all the fitted training images, validation split included; the median of an
       even count is the mean of the two middle values, as numpy's). s(x) = Σ_p w_p e_p(x).
       (On [0,1] pixels and a sigmoid output every residual is below 1, so SmoothL1 with
       β = 1 is half the squared error throughout: the score is a weighted squared error.)

    ``projection="released"`` scores as the released ``main.py`` does: it computes the
    projection and then discards it, so the score is the weighted error of the plain
    reconstruction D(E(x)).

The attack sees through the inner loop
    When gradients are enabled, ``score`` *unrolls* the K descent steps: each step's
    latent gradient is taken with ``create_graph=True``, so the input gradient of s
    includes every path through z₀ = E(x) and through the K steps' dependence on x and
    on the previous latent (second derivatives through the decoder). Without gradients
    (``torch.no_grad``, clean scoring) the same steps run without that graph: the
    same values, a fraction of the memory. The descent starts from the encoder's code,
    a deterministic function of the input; nothing is random at test time. There is
    no clamp on the score path and BatchNorm is in eval mode.

    ``surrogate_score`` is the BPDA variant (stop-gradient on z_K: only the direct error
    term's gradient): the same value, used only by attacks run with ``adaptive=True``
    (and by ``aa``'s extra surrogate member), which judge their points by the true,
    unrolled score. It is never the default score or gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustad.errors import UserError
from robustad.methods.autoencoders import conv_autoencoder_layers
from robustad.methods.base import Detector, RunContext, seeded_fit_start, store_hparams
from robustad.registry import register_method

#: the published parameters not found in any source read, recorded by ``info()``
UNVERIFIED = ["architecture (image version)", "layer sizes"]


def median_over_images(errors: Tensor) -> Tensor:
    """The median over dim 0, the mean of the two middle values for an even count (numpy's)."""
    n = errors.shape[0]
    s = errors.sort(0).values
    return (s[(n - 1) // 2] + s[n // 2]) / 2


def feature_weights(train_errors: Tensor, eps: float) -> Tensor:
    """w_p = 1 / (eps + median over training images of e_p); ``train_errors`` (N, ...) → (...)."""
    return 1.0 / (eps + median_over_images(train_errors))


def feature_errors(x: Tensor, x_hat: Tensor) -> Tensor:
    """Elementwise SmoothL1 (β = 1) between an image and its reconstruction."""
    return F.smooth_l1_loss(x_hat, x, reduction="none", beta=1.0)


@register_method(
    "apae",
    paper="Robustness of Autoencoders for Anomaly Detection Under Adversarial Impact "
    "(Goodge, Hooi, Ng, Ng, IJCAI 2020)",
    year=2020,
    adversarially_trained=False,
    pretrained=False,
    source="re-implementation for images of agoodge/APAE (tabular); the inner latent descent "
    "is unrolled for the attacks; BPDA only as surrogate_score (adaptive attacks)",
    our_choices="image AE (PrincipaLS-style conv AE + linear bottleneck), per-pixel weights, "
    "weights' median over all fitted training images, eval-mode validation loss, CPU presets' K",
)
class APAE(Detector):
    """Parameters: the autoencoder (``widths``, ``latent_channels`` v, ``pools``,
    ``latent_dim``: the linear bottleneck's size, None for none), the approximate
    projection (``inner_steps`` K, ``inner_lr`` α, ``accumulate_grad``, ``projection``
    ``"paper"`` or ``"released"``), the weighting's ``weight_eps`` ε_w, and the training
    (``epochs``, ``batch_size``, ``lr``, ``betas``, ``val_fraction``, ``early_stop_loss``,
    ``max_train``: a seeded subset of the training images, None = all). The training and
    projection defaults are the authors' code's; the architecture is our choice."""

    fit_version = 1

    def __init__(
        self,
        widths: tuple[int, int] = (32, 64),
        latent_channels: int = 64,
        pools: int = 2,
        latent_dim: int | None = 64,
        inner_steps: int = 1000,
        inner_lr: float = 1e-2,
        accumulate_grad: bool = False,
        projection: str = "paper",
        weight_eps: float = 1e-3,
        epochs: int = 200,
        batch_size: int = 256,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        val_fraction: float = 0.15,
        early_stop_loss: float = 0.003,
        max_train: int | None = None,
    ):
        super().__init__()
        store_hparams(self, locals())

    # -- the model --------------------------------------------------------------------------
    def build(self, input_shape: tuple[int, int, int]) -> None:
        super().build(input_shape)
        if self.projection not in ("paper", "released"):
            raise UserError(f"apae: projection must be 'paper' or 'released', got {self.projection!r}")
        if int(self.inner_steps) < 0:
            raise UserError(f"apae: inner_steps must be >= 0, got {self.inner_steps!r}")
        c, h, w = self.input_shape
        v = int(self.latent_channels)
        try:
            enc, dec, (lh, lw) = conv_autoencoder_layers(c, h, w, self.widths, v, int(self.pools))
        except ValueError as exc:
            raise UserError(f"apae: {exc}") from exc
        if lh < 1 or lw < 1:
            raise UserError(f"apae: {h}×{w} images cannot be pooled {self.pools} times")
        self.latent_hw = (lh, lw)
        if self.latent_dim is not None:
            d = int(self.latent_dim)
            enc += [nn.Flatten(), nn.Linear(v * lh * lw, d)]
            dec = [nn.Linear(d, v * lh * lw), nn.Unflatten(1, (v, lh, lw)), *dec]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("weights", torch.ones(input_shape))
        self.register_buffer("train_images_used", torch.tensor(0))
        self.register_buffer("val_images_used", torch.tensor(0))
        self.register_buffer("epochs_run", torch.tensor(0))

    def inner_loss(self, z: Tensor, x: Tensor) -> Tensor:
        """L(z) per image: Σ over pixels of SmoothL1(D(z), x), (N,)."""
        return feature_errors(x, self.decoder(z)).flatten(1).sum(1)

    def latent_descent(self, x: Tensor, unroll: bool) -> Tensor:
        """z_K: K gradient steps on L from z₀ = E(x).

        ``unroll=True`` keeps the graph of every step (``create_graph=True``), so z_K is
        differentiable in x through z₀ and through each step; ``unroll=False`` runs the
        same steps on detached values (z_K carries no graph).
        """
        z = self.encoder(x)
        if not unroll:
            z, x = z.detach(), x.detach()
        total: Tensor | None = None
        for _ in range(int(self.inner_steps)):
            with torch.enable_grad():  # the descent needs ∇_z L even when scoring under no_grad
                if not z.requires_grad:  # nothing upstream needs a gradient (or not unrolling)
                    z = z.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.inner_loss(z, x).sum(), z, create_graph=unroll)
            if self.accumulate_grad:  # the released code never zeroes the gradient
                total = g if total is None else total + g
                g = total
            z = z - self.inner_lr * g
            if not unroll:
                z = z.detach()
        return z

    def reconstruct(self, x: Tensor, unroll: bool = True) -> Tensor:
        """x̂: D(z_K) (``projection="paper"``) or D(E(x)) (``"released"``)."""
        if self.projection == "released":
            return self.decoder(self.encoder(x))
        return self.decoder(self.latent_descent(x, unroll))

    def weighted_error(self, x: Tensor, x_hat: Tensor) -> Tensor:
        return (feature_errors(x, x_hat) * self.weights).flatten(1).sum(1)

    def score(self, x: Tensor) -> Tensor:
        """Σ_p w_p SmoothL1(x_p, x̂_p), (N,) for (N,C,H,W) in [0,1]; the inner descent is
        unrolled whenever gradients are enabled."""
        return self.weighted_error(x, self.reconstruct(x, unroll=torch.is_grad_enabled()))

    def surrogate_score(self, x: Tensor) -> Tensor:
        """BPDA: the score's value, with the gradient through z_K stopped (the direct
        error term's only). For ``adaptive=True`` attacks only, never the default."""
        if self.projection == "released":
            return self.score(x)  # no inner loop: nothing to stop
        return self.weighted_error(x, self.decoder(self.latent_descent(x, unroll=False)))

    # -- facts recorded with results ------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        if self.input_shape is None:
            return {}
        h, w = self.latent_hw
        latent = f"{self.latent_channels}x{h}x{w}" + (f" -> {self.latent_dim}" if self.latent_dim else "")
        return {
            "latent": latent,
            "projection": self.projection,
            "inner_steps": int(self.inner_steps) if self.projection == "paper" else 0,
            "inner_lr": self.inner_lr,
            "accumulate_grad": bool(self.accumulate_grad),
            "inner_gradient": "unrolled (create_graph); BPDA only as surrogate_score",
            "epochs_run": int(self.epochs_run),
            "train_images_used": int(self.train_images_used),
            "val_images_used": int(self.val_images_used),
            "paper_details_unverified": list(UNVERIFIED),
        }

    # -- training -----------------------------------------------------------------------------
    def _loss(self, xb: Tensor) -> Tensor:
        return F.smooth_l1_loss(self.decoder(self.encoder(xb)), xb, beta=1.0)

    @torch.no_grad()
    def fit_weights(self, x: Tensor) -> None:
        """w from the plain reconstruction errors of training images (eval mode)."""
        self.eval()
        batches = x.split(max(int(self.batch_size), 1))
        errs = torch.cat([feature_errors(xb, self.decoder(self.encoder(xb))) for xb in batches])
        self.weights.copy_(feature_weights(errs.double(), self.weight_eps).to(self.weights.dtype))

    def fit(self, data, ctx: RunContext | None = None) -> APAE:
        ctx = ctx or RunContext()
        x, gen = seeded_fit_start(self, data.train_x, self.max_train, ctx.seed)
        self.to(ctx.device)
        x = x.to(ctx.device)
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        n_val = int(round(self.val_fraction * len(x))) if len(x) > 1 else 0
        n_val = min(n_val, len(x) - 1)
        x_val, x_tr = x[perm[:n_val]], x[perm[n_val:]]
        self.train_images_used.fill_(len(x_tr))
        self.val_images_used.fill_(len(x_val))
        bs = max(int(self.batch_size), 1)
        opt = torch.optim.Adam(
            [*self.encoder.parameters(), *self.decoder.parameters()], lr=self.lr, betas=tuple(self.betas)
        )
        epochs_run = 0
        for epoch in range(int(self.epochs)):
            self.train()
            order = torch.randperm(len(x_tr), generator=gen).to(x.device)
            total = torch.zeros((), dtype=torch.float64, device=x.device)
            seen = 0
            for i in range(0, len(x_tr), bs):
                xb = x_tr[order[i : i + bs]]
                if len(xb) < 2:  # BatchNorm needs two images in training mode
                    continue
                loss = self._loss(xb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().double() * len(xb)
                seen += len(xb)
            epochs_run = epoch + 1
            logs = {"loss": total.item() / max(seen, 1)}
            stop = False
            if len(x_val):
                self.eval()
                with torch.no_grad():
                    last = self._loss(x_val.split(bs)[-1]).item()
                logs["val_last_batch"] = last
                stop = last < self.early_stop_loss  # the authors' early stop
            ctx.report(epoch + 1, int(self.epochs), **logs)
            if stop:
                break
        self.epochs_run.fill_(epochs_run)
        self.fit_weights(x)
        self.eval()
        return self
