"""``aa``: AutoAttack (Croce & Hein, ICML 2020) adapted to anomaly detection.

Three members, each run on every sample with its whole budget, built on the
AutoAttack package's code (PyPI ``pyautoattack``) through the two-logit view of
the detector (``attacks/adapter.py``):

- ``apgd-ad``: APGD on the view's margin ``z_other − z_y``, an increasing affine
  function of the anomaly objective ``d·s`` (the margin replaces APGD-DLR, which
  needs a third-largest logit and is undefined for two classes);
- ``apgd-ce``: APGD on the two-logit cross entropy ``softplus(d·(s−τ)/T)``;
- ``square``: the Square Attack on the same margin (``attacks/square.py``).

Every sample keeps the point with the highest ``d·s`` among the members' points
and the clean input, so ``aa`` is at least as strong as each member on every
sample. The three traps of THREAT_MODEL.md are avoided by construction:
1. no APGD-DLR, APGD-T or FAB-T (undefined or crashing with two classes);
2. APGD runs with ``best_loss=True`` (highest-loss point, not "the clean image
   unless a threshold was crossed"), and the best point is chosen here by ``d·s``;
3. no member stops a sample early: APGD's single runs never do, and the Square
   subclass reports a margin that never crosses zero.

After ``perturb``, ``member_scores[name]`` holds each member's per-sample
adversarial score (the better of its point and the clean input), which the
runner turns into per-member AUROCs and the ``masking?`` flag.
"""

from __future__ import annotations

import logging

import torch

from robustad.attacks.adapter import TwoLogitView, margin_objective
from robustad.attacks.base import Attack, direction, objective, objective_and_grad
from robustad.attacks.square import run_square
from robustad.errors import UserError
from robustad.registry import register_attack

MEMBERS = ("apgd-ad", "apgd-ce", "square")
WHITE_BOX_MEMBERS = ("apgd-ad", "apgd-ce")

# AutoAttack reports zero gradients through a logger; we measure them ourselves.
_AA_LOG = logging.getLogger("robustad.attacks.aa.autoattack")
_AA_LOG.addHandler(logging.NullHandler())
_AA_LOG.propagate = False


def anomaly_apgd(view: TwoLogitView, loss: str, norm: str, eps: float, steps: int, restarts: int,
                 eot_iter: int, seed: int):  # fmt: skip
    """AutoAttack's APGDAttack on ``view`` with loss ``"ad"`` (the margin) or ``"ce"``."""
    try:
        from pyautoattack.autopgd_base import APGDAttack
    except ImportError as exc:
        raise UserError("the aa attack needs the pyautoattack package; install it with "
                        "'pip install pyautoattack'") from exc  # fmt: skip

    class AnomalyAPGD(APGDAttack):
        def dlr_loss(self, logits, y):
            # Selected through loss="dlr": the two-class margin instead of DLR.
            return margin_objective(logits, y)

    return AnomalyAPGD(view, n_iter=steps, norm=norm, n_restarts=restarts, eps=eps, seed=seed,
                       loss="dlr" if loss == "ad" else "ce", eot_iter=eot_iter, rho=0.75,
                       verbose=False, logger=_AA_LOG)  # fmt: skip


@register_attack(
    "aa",
    white_box=True,
    description="AutoAttack for AD: per-sample worst case of APGD (d·s), APGD (2-logit CE), Square",
)
class AutoAttackAD(Attack):
    def __init__(
        self,
        apgd_steps: int = 100,
        apgd_restarts: int = 1,
        square_queries: int = 5000,
        square_p_init: float = 0.8,
        members: tuple[str, ...] | list[str] = MEMBERS,
        eot_draws: int = 10,
        seed: int = 0,
    ):
        super().__init__(seed=seed)
        members = tuple(members)
        bad = [m for m in members if m not in MEMBERS]
        if bad or not members:
            raise UserError(f"aa members {bad or '[]'} are not valid; choose from {', '.join(MEMBERS)}")
        if apgd_steps < 1 or apgd_restarts < 1 or square_queries < 1:
            raise UserError("aa needs apgd_steps, apgd_restarts and square_queries of at least 1")
        self.apgd_steps = apgd_steps
        self.apgd_restarts = apgd_restarts
        self.square_queries = square_queries
        self.square_p_init = square_p_init
        self.members = members
        self.eot_draws = eot_draws
        self.member_scores: dict[str, torch.Tensor] = {}

    def _member_point(self, name, view, x, y, threat, eot_iter) -> torch.Tensor:
        if name == "square":
            return run_square(view, x, y, threat, self.square_queries, self.square_p_init, self.seed)
        atk = anomaly_apgd(view, "ad" if name == "apgd-ad" else "ce", threat.norm, threat.eps,
                           self.apgd_steps, self.apgd_restarts, eot_iter, self.seed)  # fmt: skip
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seeded, caller's RNG untouched
            torch.manual_seed(self.seed)
            return atk.perturb(x, y.long(), best_loss=True).detach()

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        clean_obj = best.value.clone()
        clean_scores = direction(y).to(clean_obj.dtype) * clean_obj
        view = TwoLogitView.calibrated(detector, score_fn, clean_scores, y)
        # One gradient at the clean input for the zero-grad flag (AutoAttack's own
        # check only prints).
        self._record_zero_grad(objective_and_grad(score_fn, x, y)[1])
        eot_iter = self.eot_draws if getattr(detector, "stochastic", False) else 1
        self.member_scores = {}
        for name in self.members:
            x_m = self._member_point(name, view, x, y, threat, eot_iter)
            with torch.no_grad():
                obj = objective(score_fn(x_m), y)
            best.update(x_m, obj)
            # As a stand-alone attack the member would also keep the clean input.
            self.member_scores[name] = (direction(y).to(obj.dtype) * torch.maximum(obj, clean_obj)).cpu()
