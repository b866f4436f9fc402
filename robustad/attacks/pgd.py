"""``pgd``: projected gradient ascent on ``d·s`` (Madry et al., 2018).

Step size α = 2.5 ε / steps by default (so the iterate can cross the ball from
any start), uniform random start, ``restarts`` independent runs, and the best
iterate per sample over all steps and restarts (not the last one).
"""

from __future__ import annotations

import torch

from robustad.attacks.base import (
    Attack,
    ascent_direction,
    objective,
    objective_and_grad,
    project,
    random_start,
)
from robustad.registry import register_attack


@register_attack("pgd", white_box=True, description="projected gradient ascent, best iterate")
class PGD(Attack):
    def __init__(
        self,
        steps: int = 10,
        restarts: int = 1,
        alpha: float | None = None,
        random_start: bool = True,
        seed: int = 0,
    ):
        super().__init__(seed=seed)
        if steps < 1 or restarts < 1:
            raise ValueError("pgd needs steps >= 1 and restarts >= 1")
        self.steps = steps
        self.restarts = restarts
        self.alpha = alpha
        self.random_start = random_start

    def step_size(self, eps: float) -> float:
        return self.alpha if self.alpha is not None else 2.5 * eps / self.steps

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        alpha = self.step_size(threat.eps)
        for _ in range(self.restarts):
            x_adv = random_start(x, threat, generator) if self.random_start else x.clone()
            for _ in range(self.steps):
                # The objective at x_adv comes with its gradient, so the best-point
                # update costs no extra forward pass.
                obj, grad = objective_and_grad(score_fn, x_adv, y)
                self._record_zero_grad(grad)
                best.update(x_adv, obj)
                x_adv = project(x_adv + alpha * ascent_direction(grad, threat.norm), x, threat)
            with torch.no_grad():  # the final iterate has not been scored yet
                best.update(x_adv, objective(score_fn(x_adv), y))
