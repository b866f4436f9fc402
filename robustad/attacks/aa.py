"""``aa``: AutoAttack (Croce & Hein, ICML 2020) adapted to anomaly detection.

Four members, each run on every sample with its whole budget, three of them built
on the AutoAttack package's code (PyPI ``pyautoattack``) through the two-logit view
of the detector (``attacks/adapter.py``):

- ``apgd-ad``: APGD on the view's margin ``z_other − z_y``, an increasing affine
  function of the anomaly objective ``d·s`` (the margin replaces APGD-DLR, which
  needs a third-largest logit and is undefined for two classes);
- ``apgd-ce``: APGD on the two-logit cross entropy ``softplus(d·(s−τ)/T)``. Under
  L∞ a monotone transform of ``d·s`` gives APGD the same sign steps and the same
  step-size decisions, so from the same start it would retrace ``apgd-ad``; it gets
  its own seed (other random starts) so it explores elsewhere;
- ``apgd-surrogate``: the suite's APGD (``attacks/apgd.py``) following the gradient
  of the detector's smooth ``surrogate_score`` (adaptive attack, Tramèr et al. 2020)
  while every point is judged by the true score; only for detectors that have one;
- ``square``: the Square Attack on the margin (``attacks/square.py``), a black box
  whose budget (5,000 queries by default, as in AutoAttack) can expose masking.

Every sample keeps the point with the highest ``d·s`` among the members' points
and the clean input, so ``aa`` is at least as strong as each member on every
sample. The three traps of docs/THREAT_MODEL.md are avoided by construction:
1. no APGD-DLR, APGD-T or FAB-T (undefined or crashing with two classes);
2. APGD runs with ``best_loss=True`` (highest-loss point, not "the clean image
   unless a threshold was crossed"), and the best point is chosen here by ``d·s``;
3. no member stops a sample early: APGD's single runs never do, and the Square
   subclass reports a margin that never crosses zero.

After ``perturb``, ``member_scores[name]`` holds each member's per-sample
adversarial score (the better of its point and the clean input), which the
runner turns into per-member AUROCs, the fraction of samples each member alone
decides, and the ``masking?`` flag. AutoAttack's members draw random numbers for
the whole batch, so ``aa`` is not batch-independent: the batch size is part of
its results' identity.
"""

from __future__ import annotations

import logging

import torch

from robustad.attacks.adapter import TwoLogitView, margin_objective
from robustad.attacks.apgd import APGD
from robustad.attacks.base import Attack, direction, objective, seeded_global_rng
from robustad.attacks.square import run_square
from robustad.errors import UserError
from robustad.registry import register_attack

MEMBERS = ("apgd-ad", "apgd-ce", "apgd-surrogate", "square")
WHITE_BOX_MEMBERS = ("apgd-ad", "apgd-ce", "apgd-surrogate")
#: offsets added to the attack seed, one per member, so no two members share random starts
MEMBER_SEED_OFFSET = {name: i for i, name in enumerate(MEMBERS)}

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
    description="AutoAttack for AD: per-sample worst case of APGD (d·s), APGD (2-logit CE), "
    "APGD on the surrogate score (where the detector has one), Square",
)
class AutoAttackAD(Attack):
    batch_independent = False

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

    def _member_point(self, name, detector, view, x, y, threat, eot_iter) -> torch.Tensor:
        seed = self.seed + MEMBER_SEED_OFFSET[name]
        if name == "square":
            return run_square(view, x, y, threat, self.square_queries, self.square_p_init, seed)
        if name == "apgd-surrogate":
            member = APGD(self.apgd_steps, self.apgd_restarts, adaptive=True, eot_draws=self.eot_draws,
                          seed=seed)  # fmt: skip
            return member.perturb(detector, x, y, threat)
        atk = anomaly_apgd(view, "ad" if name == "apgd-ad" else "ce", threat.norm, threat.eps,
                           self.apgd_steps, self.apgd_restarts, eot_iter, seed)  # fmt: skip
        with seeded_global_rng(seed, x.device):
            return atk.perturb(x, y.long(), best_loss=True).detach()

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        clean_obj = best.value.clone()
        clean_scores = direction(y).to(clean_obj.dtype) * clean_obj
        view = TwoLogitView.calibrated(detector, score_fn, clean_scores, y)
        eot_iter = self.eot_draws if getattr(detector, "stochastic", False) else 1
        has_surrogate = callable(getattr(detector, "surrogate_score", None))
        self.member_scores = {}
        for name in self.members:
            if name == "apgd-surrogate" and not has_surrogate:
                continue  # nothing to adapt to: the plain APGD members cover the true score
            x_m = self._member_point(name, detector, view, x, y, threat, eot_iter)
            with torch.no_grad():
                obj = objective(score_fn(x_m), y)
            best.update(x_m, obj)
            # As a stand-alone attack the member would also keep the clean input.
            self.member_scores[name] = (direction(y).to(obj.dtype) * torch.maximum(obj, clean_obj)).cpu()
