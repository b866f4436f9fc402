"""CSI: contrastive learning with shifted instances (Tack et al., NeurIPS 2020).

COBRA's non-robust parent: the same encoder, heads, light augmentations, group
transforms and anomaly score (the model and score in
:mod:`robustad.methods.contrastive`, the views in :mod:`robustad.methods.views`,
the training loop in :mod:`robustad.methods.contrastive_training`), trained
on clean views only with multi-positive NT-Xent (no opposite-pair term) plus the
group-classification cross entropy.
"""

from __future__ import annotations

from robustad.methods.base import store_hparams
from robustad.methods.contrastive import ShiftedContrastiveDetector
from robustad.registry import register_method


@register_method(
    "csi",
    paper="CSI: Novelty Detection via Contrastive Learning on Distributionally Shifted Instances "
    "(Tack et al., NeurIPS 2020)",
    year=2020,
    adversarially_trained=False,
    pretrained=False,
)
class CSI(ShiftedContrastiveDetector):
    """Parameters: encoder ``width``/``blocks``/``stem`` (``weights``: None = random init,
    or a local state_dict file), ``proj_dim``, pseudo-anomaly ``pseudo_anomalies``
    (``"auto"`` or names) and ``groups`` (K, None = default), training schedule, the
    NT-Xent ``temperature``, the number of fixed ``test_views`` S and the
    area of their crop ``test_crop_scale`` (low resolution only), ``max_train``
    (a seeded subset of the training images; None = all), and the training-speed
    switches ``amp`` (None, ``"bf16"`` or ``"fp16"``: autocast of the training step),
    ``channels_last`` and ``torch_compile`` (unmeasured), which act on CUDA only and
    leave the score, its statistics and every attack in float32
    (:meth:`~robustad.methods.contrastive.ShiftedContrastiveDetector.speed_switches`)."""

    # 2: augmentation rows without colour jitter skip it (exact identity, no clamps)
    fit_version = 2

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
        amp: str | None = None,
        channels_last: bool = False,
        torch_compile: bool = False,
    ):
        super().__init__()
        if amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        store_hparams(self, locals())
