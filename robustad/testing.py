"""Detectors with closed-form worst cases, for tests and for checking new attacks.

``LinearDetector``: s(x) = mean(x). Under L∞ the worst case raises every pixel
of a normal sample by ε and lowers every pixel of an anomalous one by ε, clipped
to [0,1]; under L2 (pixels away from the box) it moves every pixel by ε/√n.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustad.methods.base import Detector
from robustad.threat import ThreatModel


class LinearDetector(Detector):
    """s(x) = scale · mean over pixels of x; needs no fitting."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self._anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # carries the device

    def fit(self, data, ctx=None) -> LinearDetector:
        self.build(tuple(data.train_x.shape[1:]))
        return self

    def score(self, x: Tensor) -> Tensor:
        return self.scale * x.flatten(1).mean(1) + self._anchor


def linear_worst_case(x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
    """The exact maximiser of d·mean(x+δ) (L2: valid when no pixel hits the box)."""
    d = (1.0 - 2.0 * y.float()).view(-1, *([1] * (x.dim() - 1)))
    if threat.norm == "Linf":
        return (x + d * threat.eps).clamp(0, 1)
    n = x[0].numel()
    return x + d * threat.eps / math.sqrt(n)
