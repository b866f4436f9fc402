"""Toy detectors with closed-form worst cases, shared by the attack tests, and
checks that the closed forms are right (against brute force on tiny inputs).

- ``Quadratic``: s(x) = ‖x − c‖² (sum over pixels) for a fixed image c.
- ``Rounded``: s(x) = round(K·mean(x))/K, a score whose input gradient is zero
  everywhere (obfuscated gradients), and ``overlapping_batch`` data on which
  such a mean-based detector has a clean AUROC well inside (50, 100).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import robustad as ra
from robustad.attacks.base import objective
from robustad.methods.base import Detector


class Quadratic(Detector):
    """s(x) = ‖x − c‖², summed over pixels; c is one image broadcast over the batch."""

    def __init__(self, center: torch.Tensor):
        super().__init__()
        self.register_buffer("center", center.clone())
        self._anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def score(self, x):
        return ((x - self.center) ** 2).flatten(1).sum(1) + self._anchor


class Rounded(Detector):
    """s(x) = round(K·mean(x))/K: piecewise constant, zero gradient everywhere."""

    def __init__(self, levels: int = 100):
        super().__init__()
        self.levels = levels
        self._anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def score(self, x):
        return torch.round(self.levels * x.flatten(1).mean(1)) / self.levels + self._anchor


def interior_batch(n=40, c=1, h=6, w=6, seed=0):
    """Pixels in [0.3, 0.7] (so L2 steps of 0.5 never reach the box) and labels 0,1,0,1,..."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, c, h, w, generator=g), torch.arange(n) % 2


def quadratic_problem(seed=0):
    """x in [0.3,0.7] and c in {0.05, 0.95} per pixel: every pixel is farther from c
    than ε, so the L∞ optimum is a corner and L2 steps of 0.5 never reach the box."""
    x, y = interior_batch(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    center = torch.where(torch.rand(x[0].shape, generator=g) < 0.5, 0.05, 0.95)
    return x, y, Quadratic(center)


def quadratic_worst_objective(x, y, center, threat) -> torch.Tensor:
    """max over the threat model of d·‖x+δ−c‖², per sample (N,).

    L∞: separable per pixel; normals take the endpoint of [x−ε, x+ε]∩[0,1] farther
    from c, anomalies the point of that interval nearest to c. L2 (box not binding):
    normals ‖x−c‖+ε, anomalies max(‖x−c‖−ε, 0), squared.
    """
    d = 1.0 - 2.0 * y.float()
    if threat.norm == "Linf":
        lo, hi = (x - threat.eps).clamp(0, 1), (x + threat.eps).clamp(0, 1)
        far = torch.maximum((lo - center) ** 2, (hi - center) ** 2).flatten(1).sum(1)
        near = ((torch.minimum(torch.maximum(center, lo), hi) - center) ** 2).flatten(1).sum(1)
        return torch.where(y == 0, far, -near)
    dist = (x - center).flatten(1).norm(dim=1)
    return torch.where(y == 0, (dist + threat.eps) ** 2, -((dist - threat.eps).clamp(min=0) ** 2)) * d.abs()


def overlapping_batch(n=200, seed=0):
    """Images whose mean separates normals (lower) from anomalies (higher) imperfectly."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    base = 0.40 + 0.10 * torch.rand(n, generator=g) + 0.05 * y.float()
    x = (base.view(-1, 1, 1, 1) + 0.1 * (2 * torch.rand(n, 1, 8, 8, generator=g) - 1)).clamp(0, 1)
    return x, y


def test_quadratic_closed_form_matches_brute_force_linf():
    # 1×1×2 images: the L∞ ball is a square; a 41×41 grid contains its corners and
    # the nearest point to c, so the grid maximum is the exact maximum.
    x = torch.tensor([[[[0.5, 0.02]]], [[[0.5, 0.98]]]])
    y = torch.tensor([0, 1])
    center = torch.tensor([[[0.6, 0.03]]])
    threat = ra.ThreatModel("Linf", 0.05)
    want = quadratic_worst_objective(x, y, center, threat)
    det = Quadratic(center)
    steps = torch.linspace(-1, 1, 41)
    best = torch.full((2,), -math.inf)
    for a, b in itertools.product(steps, steps):
        cand = (x + threat.eps * torch.tensor([a, b]).view(1, 1, 1, 2)).clamp(0, 1)
        best = torch.maximum(best, objective(det.score(cand), y))
    assert torch.allclose(best, want, atol=1e-6)


def test_rounded_detector_has_zero_gradient_and_steps():
    det = Rounded(levels=100)
    x = torch.full((1, 1, 8, 8), 0.5, requires_grad=True)
    det.score(x).sum().backward()
    assert x.grad.abs().max().item() == 0.0
    assert det.score(torch.full((1, 1, 8, 8), 0.5 + 8 / 255)).item() == pytest.approx(0.53)
