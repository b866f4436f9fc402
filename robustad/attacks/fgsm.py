"""``fgsm``: one steepest-ascent step of size ε (Goodfellow et al., 2015)."""

import torch

from robustad.attacks.base import Attack, objective, objective_and_grad
from robustad.registry import register_attack


@register_attack("fgsm", description="one signed-gradient step of size ε")
class FGSM(Attack):
    def __init__(self, seed: int = 0):
        super().__init__(seed=seed)

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        _, grad = objective_and_grad(score_fn, x, y)
        x_adv = threat.project(x + threat.eps * threat.ascent_direction(grad), x)
        with torch.no_grad():
            best.update(x_adv, objective(score_fn(x_adv), y))
