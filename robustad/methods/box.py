"""Box clamps that do not mask gradients.

In the torch build this suite is tested on, ``Tensor.clamp(0, 1)`` passes a zero
gradient for inputs exactly at a bound. A score that clamps an image (colour jitter,
CutPaste) then gives every pixel that is exactly 0 or 1 a zero gradient, and about
half of Fashion-MNIST's pixels are exactly 0: PGD can never move them, and the
attacked AUROC overstates robustness. :func:`clamp_box` clamps the same way in the
forward pass but passes the gradient for inputs *inside or on* the bounds: at a
bound it is the one-sided derivative from inside the box (the direction a perturbed
pixel can actually move), and outside the box it is zero as the clamp is flat there.
Every clamp on a score path uses it; the conformance check
(``robustad.testing.check_detector``) compares it with one-sided finite differences.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _InwardClamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        inside = (x >= ctx.low) & (x <= ctx.high)
        return grad * inside.to(grad.dtype), None, None


def clamp_box(x: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """``x.clamp(low, high)`` whose gradient is 1 on ``[low, high]`` (bounds included), 0 outside."""
    return _InwardClamp.apply(x, float(low), float(high))
