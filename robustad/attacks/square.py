"""``square``: the Square Attack (Andriushchenko et al., ECCV 2020), a score-based
black-box attack: random square-shaped updates at the corners of the ε-ball,
kept when they raise ``d·s``. It needs no gradient, so it still works when
gradients are masked (zero, shattered, rounded); a Square result well below the
white-box ones is the ``masking?`` flag of docs/THREAT_MODEL.md.

Built on AutoAttack's implementation (PyPI ``pyautoattack``, L∞ and L2) run on
the two-logit view of the detector (``attacks/adapter.py``). AutoAttack's Square
stops optimising a sample as soon as its classification margin crosses zero
(trap 3 of docs/THREAT_MODEL.md); here the reported margin never does, so every
sample uses the whole query budget, and the loss it minimises is the view's
``z_y − z_other``, a decreasing affine function of ``d·s``.
"""

from __future__ import annotations

import torch

from robustad.attacks.adapter import TwoLogitView, margin_objective
from robustad.attacks.base import Attack, objective, seeded_global_rng
from robustad.errors import UserError
from robustad.registry import register_attack


def _square_base():
    try:
        from pyautoattack.square import SquareAttack
    except ImportError as exc:  # a core dependency; only a broken install lands here
        raise UserError(
            "the square and aa attacks need the pyautoattack package; install it with "
            "'pip install pyautoattack'"
        ) from exc
    return SquareAttack


def anomaly_square(view: TwoLogitView, norm: str, eps: float, queries: int, p_init: float, seed: int):
    """AutoAttack's SquareAttack on ``view`` that never lets a sample drop out."""

    class AnomalySquare(_square_base()):
        def random_int(self, low=0, high=1, shape=(1,)):
            # Upstream draws window corners from [low, high), so with high = h - s the
            # last row and column are never perturbed (15 of 64 pixels of an 8×8
            # image); corners are valid up to h - s inclusive.
            return (low + (high - low + 1) * torch.rand(list(shape), device=self.device)).long()

        def margin_and_loss(self, x, y):
            # Margin fixed at +1: "never misclassified", so no sample stops early and
            # no step is accepted just for crossing a threshold.
            loss = -margin_objective(self.predict(x), y)
            return torch.ones_like(loss), loss

    return AnomalySquare(view, norm=norm, n_queries=queries, eps=eps, p_init=p_init, n_restarts=1,
                         seed=seed, verbose=False, loss="margin",
                         # AutoAttack's own 5000-query schedule; smaller budgets
                         # compress it so they still reach the small squares.
                         resc_schedule=queries < 5000,
                         device=None)  # fmt: skip


def run_square(
    view: TwoLogitView, x: torch.Tensor, y: torch.Tensor, threat, queries: int, p_init: float, seed: int
) -> torch.Tensor:
    """One Square run on every sample of the batch: (N,C,H,W) → best points found (N,C,H,W)."""
    atk = anomaly_square(view, threat.norm, threat.eps, queries, p_init, seed)
    atk.init_hyperparam(x)
    # AutoAttack draws from the global RNG; fork it so the run is seeded and leaves
    # the caller's random state alone.
    with seeded_global_rng(seed, x.device):
        _, x_best = atk.attack_single_run(x, y.long())
    return x_best


@register_attack(
    "square",
    description="Square Attack (Andriushchenko et al. 2020), score-based black box, query budget",
)
class Square(Attack):
    white_box = False
    batch_independent = False  # AutoAttack's Square draws for the whole batch

    def __init__(self, queries: int = 1000, p_init: float = 0.8, restarts: int = 1, seed: int = 0):
        super().__init__(seed=seed)
        if queries < 1 or restarts < 1:
            raise ValueError("square needs queries >= 1 and restarts >= 1")
        self.queries = queries
        self.p_init = p_init
        self.restarts = restarts

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        view = TwoLogitView(detector, score_fn)
        for r in range(self.restarts):
            x_sq = run_square(view, x, y, threat, self.queries, self.p_init, self.seed + 1000 * r)
            with torch.no_grad():
                best.update(x_sq, objective(score_fn(x_sq), y))
