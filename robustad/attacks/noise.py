"""``noise``: uniform random points of the ε-ball, a sanity check that should barely
move AUROC. Like every attack it keeps the best of its draws and the clean input."""

import torch

from robustad.attacks.base import Attack, objective
from robustad.registry import register_attack


@register_attack("noise", description="uniform random δ in the ε-ball")
class UniformNoise(Attack):
    white_box = False

    def __init__(self, draws: int = 1, seed: int = 0):
        super().__init__(seed=seed)
        self.draws = draws

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        with torch.no_grad():
            for _ in range(self.draws):
                x_rand = threat.random_start(x, generator)
                best.update(x_rand, objective(score_fn(x_rand), y))
