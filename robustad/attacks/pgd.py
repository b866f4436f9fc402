"""``pgd``: projected gradient ascent on ``d·s`` (Madry et al., 2018).

Step size α = 2.5 ε / steps by default (so the iterate can cross the ball from
any start), uniform random start, ``restarts`` independent runs, and the best
iterate per sample over all steps and restarts (not the last one).

``adaptive=True`` follows the gradient of the detector's ``surrogate_score``
(Tramèr et al., 2020) while each sample's best point is still chosen by the
true score. For detectors that declare ``stochastic = True`` the gradient is
averaged over ``eot_draws`` draws (EOT) automatically; ``eot-pgd`` always does.
"""

from __future__ import annotations

import torch

from robustad.attacks.base import (
    Attack,
    objective,
)
from robustad.registry import register_attack


@register_attack("pgd", description="projected gradient ascent, best iterate")
class PGD(Attack):
    def __init__(
        self,
        steps: int = 10,
        restarts: int = 1,
        alpha: float | None = None,
        random_start: bool = True,
        adaptive: bool = False,
        eot_draws: int = 10,
        seed: int = 0,
    ):
        super().__init__(seed=seed)
        if steps < 1 or restarts < 1:
            raise ValueError("pgd needs steps >= 1 and restarts >= 1")
        self.steps = steps
        self.restarts = restarts
        self.alpha = alpha
        self.random_start = random_start
        self.adaptive = adaptive
        self.eot_draws = eot_draws

    #: average gradients over draws even for detectors that are not stochastic
    always_eot = False

    def step_size(self, eps: float) -> float:
        return self.alpha if self.alpha is not None else 2.5 * eps / self.steps

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        alpha = self.step_size(threat.eps)
        oracle = self.gradient_oracle(detector, score_fn, self.adaptive, self.eot_draws, self.always_eot)
        for _ in range(self.restarts):
            x_adv = threat.random_start(x, generator) if self.random_start else x.clone()
            for _ in range(self.steps):
                # The objective at x_adv comes with its gradient, so the best-point
                # update costs no extra forward pass.
                obj, grad = oracle(x_adv, y)
                best.update(x_adv, obj)
                x_adv = threat.project(x_adv + alpha * threat.ascent_direction(grad), x)
            with torch.no_grad():  # the final iterate has not been scored yet
                best.update(x_adv, objective(score_fn(x_adv), y))


@register_attack(
    "eot-pgd",
    description="PGD with the gradient averaged over draws (EOT), for stochastic detectors",
)
class EOTPGD(PGD):
    always_eot = True
