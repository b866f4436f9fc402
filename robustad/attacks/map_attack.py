"""``pgd-map``: PGD on the anomaly *map*, attacking localisation directly.

Image-score attacks move localisation only as a side effect. This attack raises the
map on normal pixels and lowers it on defect pixels: the objective of image i is

    J_i(x) = mean over pixels p of w_p · m_p(x),   w_p = +1 on normal pixels, −1 on defect pixels,

with m = ``detector.anomaly_map`` (N,H,W). Pixel labels come from the dataset's masks
(``perturb(..., masks=...)``; the runner passes ``OneClassData.test_masks``); without
masks an anomalous image counts as all defect and a normal one as all normal. Steps
follow the sign of the gradient (L∞) or its normalised direction (L2), so the map's
scale does not matter; uniform random start; the best iterate per image by J.
``adv_scores`` holds the image score at the returned point, so image AUROC under this
attack is reported beside the pixel AUROC it targets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustad.attacks.base import Attack, SampleRNG
from robustad.errors import UserError
from robustad.registry import register_attack
from robustad.threat import ThreatModel


def map_objective(maps: Tensor, weights: Tensor) -> Tensor:
    """(N,) mean of ``weights · maps`` over pixels."""
    return (weights * maps).flatten(1).mean(1)


def pixel_weights(y: Tensor, masks: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    """+1 on normal pixels, −1 on defect pixels, (N,H,W)."""
    if masks is None:
        defect = y.view(-1, 1, 1).expand(shape).float()
    else:
        defect = (masks > 0).float().reshape(shape)
    return 1.0 - 2.0 * defect


@register_attack("pgd-map", description="PGD on the anomaly map: raise normal pixels, lower defect pixels")
class MapPGD(Attack):
    #: the runner passes the test masks to this attack
    needs_masks = True
    #: the detector must have an anomaly_map (checked before training)
    needs_anomaly_map = True

    def __init__(self, steps: int = 10, restarts: int = 1, alpha: float | None = None, seed: int = 0):
        super().__init__(seed=seed)
        if steps < 1 or restarts < 1:
            raise ValueError("pgd-map needs steps >= 1 and restarts >= 1")
        self.steps, self.restarts, self.alpha = steps, restarts, alpha

    def perturb(
        self, detector, x: Tensor, y: Tensor, threat: ThreatModel, masks: Tensor | None = None
    ) -> Tensor:
        if not callable(getattr(detector, "anomaly_map", None)) or detector.anomaly_map(x[:1]) is None:
            raise UserError(
                f"pgd-map needs a detector with an anomaly map; {type(detector).__name__} has none"
            )
        was_training = detector.training
        detector.eval()
        try:
            x, y = x.detach(), y.to(x.device)
            with torch.no_grad():
                clean_maps = detector.anomaly_map(x)
            w = pixel_weights(y, None if masks is None else masks.to(x.device), tuple(clean_maps.shape))
            best_x, best_value = x.clone(), map_objective(clean_maps, w)
            alpha = self.alpha if self.alpha is not None else 2.5 * threat.eps / self.steps
            rng = SampleRNG(x, self.seed)
            self.stats = {}
            for _ in range(self.restarts):
                x_adv = threat.random_start(x, rng)
                for _ in range(self.steps + 1):
                    x_req = x_adv.detach().requires_grad_(True)
                    with torch.enable_grad():
                        value = map_objective(detector.anomaly_map(x_req), w)
                        (grad,) = torch.autograd.grad(value.sum(), x_req)
                    better = value.detach() > best_value
                    best_x[better] = x_adv.detach()[better]
                    best_value = torch.where(better, value.detach(), best_value)
                    x_adv = threat.project(x_adv + alpha * threat.ascent_direction(grad), x)
            with torch.no_grad():
                self.adv_scores = detector.score(best_x)
            self.stats["map_objective_gain"] = float((best_value - map_objective(clean_maps, w)).mean())
            return best_x
        finally:
            detector.train(was_training)
