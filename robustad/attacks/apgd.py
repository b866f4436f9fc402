"""``apgd``: Auto-PGD (Croce & Hein, ICML 2020) on the anomaly objective ``d·s``.

What makes it "auto", all per sample:

- initial step η = 2ε, heavy-ball momentum α = 0.75 (the first step has none);
- checkpoints w_j = ⌈p_j·steps⌉ with p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06);
- at each checkpoint η is halved, and the iterate restarts from the best point
  of the run, when (1) fewer than ρ = 0.75 of the steps since the last
  checkpoint increased the objective, or (2) η was not halved at the last
  checkpoint and the best objective has not improved since it;
- ``restarts`` runs from uniform random starts; every sample keeps the best
  point of all steps and restarts, the clean input included.

``adaptive=True`` follows the gradient of the detector's ``surrogate_score``
while the step-size rule and the best point use the true score. Stochastic
detectors get EOT over ``eot_draws`` draws.
"""

from __future__ import annotations

import math

import torch

from robustad.attacks.base import Attack
from robustad.registry import register_attack
from robustad.threat import per_sample


def checkpoints(steps: int) -> list[int]:
    """Iterations (1-based counts of steps done) at which APGD checks its step size."""
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1:
            break
        p.append(nxt)
    # round first: 0.22 + 0.19 is 0.41000000000000003 in floats, whose ceil is off by one
    return sorted({math.ceil(round(pj * steps, 9)) for pj in p[1:]} - {0})


@register_attack(
    "apgd",
    description="Auto-PGD (Croce & Hein 2020) on d·s: momentum, step-size halving, restarts",
)
class APGD(Attack):
    def __init__(
        self,
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        adaptive: bool = False,
        eot_draws: int = 10,
        seed: int = 0,
    ):
        super().__init__(seed=seed)
        if steps < 1 or restarts < 1:
            raise ValueError("apgd needs steps >= 1 and restarts >= 1")
        self.steps = steps
        self.restarts = restarts
        self.rho = rho
        self.momentum = momentum
        self.adaptive = adaptive
        self.eot_draws = eot_draws

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        oracle = self.gradient_oracle(detector, score_fn, self.adaptive, self.eot_draws)
        checks = set(checkpoints(self.steps))
        for _ in range(self.restarts):
            self._single_run(oracle, x, y, threat, best, generator, checks)

    def _single_run(self, oracle, x, y, threat, best, generator, checks) -> None:
        def where(mask, a, b):
            return torch.where(per_sample(mask, a), a, b)

        x_cur = threat.random_start(x, generator)
        f_cur, g_cur = oracle(x_cur, y)
        best.update(x_cur, f_cur)
        x_prev = x_cur
        x_max, f_max, g_max = x_cur, f_cur, g_cur  # the best point of this run
        eta = torch.full((len(x),), 2.0 * threat.eps, device=x.device, dtype=x.dtype)
        increases = torch.zeros(len(x), device=x.device)
        f_max_last = f_max
        halved_last = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        last_check = 0
        for k in range(self.steps):
            a = 1.0 if k == 0 else self.momentum
            z = threat.project(x_cur + per_sample(eta, x) * threat.ascent_direction(g_cur), x)
            x_new = threat.project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev), x)
            f_new, g_new = oracle(x_new, y)
            best.update(x_new, f_new)
            increases += (f_new > f_cur).float()
            improved = f_new > f_max
            x_max, f_max, g_max = where(improved, x_new, x_max), torch.where(improved, f_new, f_max), \
                where(improved, g_new, g_max)  # fmt: skip
            x_prev, x_cur, f_cur, g_cur = x_cur, x_new, f_new, g_new
            if k + 1 in checks:
                oscillating = increases < self.rho * (k + 1 - last_check)
                stalled = ~halved_last & (f_max <= f_max_last)
                halve = oscillating | stalled
                eta = torch.where(halve, eta / 2, eta)
                # Restart the halved samples from their best point, without momentum.
                x_cur, g_cur = where(halve, x_max, x_cur), where(halve, g_max, g_cur)
                f_cur = torch.where(halve, f_max, f_cur)
                x_prev = where(halve, x_max, x_prev)
                halved_last, f_max_last = halve, f_max
                increases.zero_()
                last_check = k + 1
