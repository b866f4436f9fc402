"""Attacks used inside adversarial training (COBRA, PrincipaLS).

They share the evaluation attacks' threat-model geometry (projection onto the ε-ball
and the box, random start, steepest-ascent step: :mod:`robustad.attacks.base`), so a
method trains against the same perturbation set it is later attacked in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustad.threat import ThreatModel


def pgd_on_loss(
    loss_fn, x: Tensor, eps: float, steps: int, generator: torch.Generator, sign: float = 1.0
) -> Tensor:
    """L∞ PGD for adversarial training: random start, α = 2.5 ε / steps, last iterate.

    ``loss_fn``: (N,C,H,W) → (N,) per-sample losses; ascends ``sign · loss`` (``sign
    = -1`` minimises). Gradients go to the input only. Projection and random start
    are ``ThreatModel``'s, as for the evaluation attacks, so both use the same
    threat-model geometry.
    """
    threat = ThreatModel("Linf", eps)
    alpha = 2.5 * eps / steps
    x = x.detach()
    x_adv = threat.random_start(x, generator)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(sign * loss_fn(x_adv).sum(), x_adv)
        x_adv = threat.project(x_adv.detach() + alpha * threat.ascent_direction(grad), x)
    return x_adv.detach()
