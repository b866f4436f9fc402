"""The detector seen as a two-class classifier, for code written for classifiers
(AutoAttack's APGD and Square, torchattacks).

Class 0 is "normal", class 1 "anomalous", and the label of a test sample is its
0/1 anomaly label. The logits are ``z = [-(s-τ)/2T, +(s-τ)/2T]``, so

- the margin of the true class over the other, ``z_y - z_other = -d·(s-τ)/T``,
  is an affine, decreasing function of the anomaly objective ``d·s``: minimising
  it (Square) or maximising ``z_other - z_y`` (APGD's margin loss) is the same
  as maximising ``d·s``;
- the cross entropy is ``softplus(d·(s-τ)/T)``, increasing in ``d·s``: the
  "two-logit cross-entropy view" of the detector as a classifier with threshold τ.

τ and T only shape the cross entropy (where it saturates); they are fitted on
the clean scores of the batch by ``TwoLogitView.calibrated``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustad.attacks.base import ScoreFn


class TwoLogitView(nn.Module):
    """``forward(x)``: (N,C,H,W) in [0,1] → logits (N, 2), class 1 = anomalous."""

    def __init__(
        self, detector: nn.Module, score_fn: ScoreFn, threshold: float = 0.0, temperature: float = 1.0
    ):
        super().__init__()
        self.detector = detector  # a submodule, so device and train/eval mode follow it
        self._score_fn = score_fn
        self.threshold = float(threshold)
        self.temperature = float(temperature)

    @classmethod
    def calibrated(
        cls, detector: nn.Module, score_fn: ScoreFn, clean_scores: Tensor, y: Tensor
    ) -> TwoLogitView:
        """τ halfway between the mean normal and mean anomalous clean score (the
        natural decision threshold), T the standard deviation of the clean scores."""
        s = clean_scores.detach().double()
        if (y == 0).any() and (y == 1).any():
            tau = 0.5 * (s[y == 0].mean() + s[y == 1].mean())
        else:
            tau = s.median()
        t = s.std() if len(s) > 1 else torch.tensor(1.0)
        if not torch.isfinite(t) or t <= 0:
            t = torch.tensor(1.0)
        return cls(detector, score_fn, float(tau), float(t))

    def margin(self, s: Tensor) -> Tensor:
        """Logit of 'anomalous' minus logit of 'normal': ``(s-τ)/T``, shape (N,)."""
        return (s - self.threshold) / self.temperature

    def forward(self, x: Tensor) -> Tensor:
        m = self.margin(self._score_fn(x))
        return torch.stack([-0.5 * m, 0.5 * m], dim=1)


def margin_objective(logits: Tensor, y: Tensor) -> Tensor:
    """``z_other - z_y`` for two-logit outputs (N, 2) and labels (N,) in {0,1}:
    ``d·(s-τ)/T``, i.e. the anomaly objective up to a positive affine map."""
    y = y.long()
    return logits.gather(1, (1 - y).unsqueeze(1)).squeeze(1) - logits.gather(1, y.unsqueeze(1)).squeeze(1)
