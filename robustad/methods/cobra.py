"""COBRA: anomaly-aware contrastive adversarial training (ICLR 2025; docs/METHODS.md).

CSI's model and score (:mod:`robustad.methods.contrastive`) trained with three
L∞ PGD attacks per step (A_P intra-group, A_N inter-group toward the opposite,
R on the group head) and the opposite-pair term, which pushes each image away
from its own pseudo-anomalies. ``opposite_weight=0`` reproduces the public
release, which ships the term switched off.
"""

from __future__ import annotations

from robustad.methods.base import store_hparams
from robustad.methods.contrastive import ShiftedContrastiveDetector
from robustad.registry import register_method


@register_method(
    "cobra",
    paper="Mitigating Spurious Negative Pairs for Robust Industrial Anomaly Detection (ICLR 2025)",
    year=2025,
    adversarially_trained=True,
    pretrained=False,
)
class COBRA(ShiftedContrastiveDetector):
    """CSI's parameters plus ``opposite_weight`` (λ_opp), ``eps_train`` (``"auto"``:
    8/255 up to 64 px, 2/255 above; or a number) and ``train_attack_steps`` (steps of
    each of the three training attacks, α = 2.5 ε / steps, random start). ``amp``,
    ``channels_last``, ``torch_compile``: CSI's training-speed switches (CUDA only; the
    training attacks' steps and projections stay float32)."""

    # 2: the loss takes the release's normalisation (sum over positives, opposite
    # pairs summed into the same 1/N; see contrastive_loss.cobra_loss). 3: augmentation rows
    # without jitter skip it, and the training attacks see the gradient at the box
    # bounds (methods/box.py)
    fit_version = 3

    def __init__(
        self,
        width: int = 64,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        stem: str = "auto",
        weights: str | None = None,
        proj_dim: int = 128,
        pseudo_anomalies: str = "auto",
        groups: int | None = None,
        epochs: int = 100,
        batch_size: int = 32,
        lr: float = 0.1,
        warmup_epochs: float = 10,
        weight_decay: float = 1e-6,
        temperature: float = 0.5,
        test_views: int = 10,
        test_crop_scale: float = 0.54,
        max_train: int | None = None,
        opposite_weight: float = 1.0,
        eps_train: float | str = "auto",
        train_attack_steps: int = 10,
        amp: str | None = None,
        channels_last: bool = False,
        torch_compile: bool = False,
    ):
        super().__init__()
        if amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        if isinstance(eps_train, str) and eps_train != "auto":
            from robustad.threat import parse_eps

            eps_train = parse_eps(eps_train)
        store_hparams(self, locals())
