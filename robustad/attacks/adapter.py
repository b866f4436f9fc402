"""The detector seen as a two-class classifier, for code written for classifiers
(AutoAttack's APGD and Square, torchattacks).

Class 0 is "normal", class 1 "anomalous", and the label of a test sample is its
0/1 anomaly label. For sample ``i`` the logits are
``z_i = [-(s-τ_i)/2T_i, +(s-τ_i)/2T_i]``, so

- the margin of the true class over the other, ``z_y - z_other = -d·(s-τ_i)/T_i``,
  is an affine, decreasing function of the anomaly objective ``d·s`` (``T_i > 0``):
  minimising it (Square) or maximising ``z_other - z_y`` (APGD's margin loss) is
  the same as maximising ``d·s``;
- the cross entropy is ``softplus(d·(s-τ_i)/T_i)``, increasing in ``d·s``: the
  "two-logit cross-entropy view" of the detector as a classifier with threshold τ_i.

τ_i and T_i only shape the cross entropy (where it saturates, where a sample counts
as "misclassified"). ``TwoLogitView.calibrated`` sets them **per sample, from that
sample's own clean score and label alone**, so a sample's logits, and every attack
on the view, do not depend on the batch around it (docs/THREAT_MODEL.md, "Batch independence").

The view pins the detector in eval mode: torchattacks records a model's mode and
restores it after the attack, and a detector with BatchNorm scored in training
mode would use batch statistics and update its running buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustad.attacks.base import ScoreFn

#: the scale floor of ``calibrated``, in score units (a score of exactly 0)
MIN_TEMPERATURE = 1e-6
#: every sample starts this many logits on its correct side (``z_y - z_other``)
START_MARGIN = 1e-3


class ViewBatchError(RuntimeError):
    """A per-sample view was called on rows it cannot match to its samples."""


class TwoLogitView(nn.Module):
    """``forward(x)``: (N,C,H,W) in [0,1] → logits (N, 2), class 1 = anomalous.

    ``threshold`` and ``temperature`` are numbers (one for every row) or tensors of
    shape (N,), one per sample: then the view must be called on those N samples in
    that order (or on rows of a single sample, when N = 1); any other batch size
    raises :class:`ViewBatchError`, so rows are never matched to the wrong sample.

    The wrapped detector is always scored in eval mode: ``train(mode)`` never puts it
    into training mode (the view itself only records the flag).
    """

    def __init__(
        self,
        detector: nn.Module,
        score_fn: ScoreFn,
        threshold: float | Tensor = 0.0,
        temperature: float | Tensor = 1.0,
    ):
        super().__init__()
        self.detector = detector  # a submodule, so its device (and parameters) are found
        self._score_fn = score_fn
        self.threshold = torch.as_tensor(threshold, dtype=torch.float64).detach().flatten()
        self.temperature = torch.as_tensor(temperature, dtype=torch.float64).detach().flatten()
        if self.threshold.numel() != self.temperature.numel() and 1 not in (
            self.threshold.numel(),
            self.temperature.numel(),
        ):
            raise ValueError("threshold and temperature must have one value or one per sample")
        if not (self.temperature > 0).all():
            raise ValueError("the temperature of a two-logit view must be positive")
        self.train(False)

    def train(self, mode: bool = True) -> TwoLogitView:
        # Classifier attack code calls model.train()/eval() (torchattacks restores the
        # mode it found); the detector is scored in eval mode whatever it asks for.
        self.training = bool(mode)
        self.detector.eval()
        return self

    @classmethod
    def calibrated(
        cls, detector: nn.Module, score_fn: ScoreFn, clean_scores: Tensor, y: Tensor
    ) -> TwoLogitView:
        """Per-sample τ_i and T_i from sample i's clean score s_i and label alone:

        - ``τ_i = s_i + d_i·κ·T_i`` with κ = 1e-3: every sample starts at the
          decision boundary, a hair (``z_y - z_other = κ``) on its correct side.
          At the boundary every cross entropy starts at log 2, far from both of
          its flat tails. Not exactly ``τ_i = s_i``: at a tie the arg-max is class
          0, so every anomaly would start "misclassified", and classifier attacks
          that only attack correctly classified samples (torchattacks' APGD,
          Square, FAB, DeepFool) would skip them. Not far from the boundary
          either: those attacks (and CW) return a point only once it is
          misclassified, which now means ``d·s`` rose by 0.1% of |s_i|. κ is
          10⁴ times float32's rounding of the margin.
        - ``T_i = max(|s_i|, 1e-6)``: one logit is a change of the score by its own
          magnitude. The unit is relative because scores have arbitrary units; it
          keeps the cross entropy well conditioned for any realistic move (its
          input gradient underflows in float32 only after ``d·s`` fell by about
          90·T_i, e.g. at a random start, which a score ≥ 0 cannot do). Sign-step
          attacks (FGSM, PGD, APGD under L∞) do not depend on T at all. The floor
          covers s_i = 0.

        Nothing depends on the other samples of the batch.
        """
        s = clean_scores.detach().double().flatten()
        d = 1.0 - 2.0 * y.detach().to(s.device).double().flatten()
        t = s.abs().clamp_min(MIN_TEMPERATURE)
        t = torch.where(torch.isfinite(t), t, torch.ones_like(t))
        tau = torch.where(torch.isfinite(s), s, torch.zeros_like(s)) + START_MARGIN * d * t
        return cls(detector, score_fn, tau, t)

    def rows(self, index: int | slice | Tensor) -> TwoLogitView:
        """The view restricted to some of its samples (all of them if it has one value)."""
        if self.threshold.numel() == 1 and self.temperature.numel() == 1:
            return TwoLogitView(self.detector, self._score_fn, self.threshold, self.temperature)
        n = max(self.threshold.numel(), self.temperature.numel())
        tau = self.threshold.expand(n)[index]
        t = self.temperature.expand(n)[index]
        return TwoLogitView(self.detector, self._score_fn, tau, t)

    def _per_row(self, values: Tensor, n: int, like: Tensor) -> Tensor:
        if values.numel() != 1 and values.numel() != n:
            raise ViewBatchError(
                f"this two-logit view is calibrated per sample for {values.numel()} samples "
                f"and was called on a batch of {n}; call it on exactly those samples, in order "
                "(or use view.rows(i) for a single sample)"
            )
        return values.to(device=like.device, dtype=like.dtype)

    def margin(self, s: Tensor) -> Tensor:
        """Logit of 'anomalous' minus logit of 'normal': ``(s-τ)/T``, shape (N,)."""
        n = s.shape[0]
        tau = self._per_row(self.threshold, n, s)
        t = self._per_row(self.temperature, n, s)
        return (s - tau) / t

    def forward(self, x: Tensor) -> Tensor:
        m = self.margin(self._score_fn(x))
        return torch.stack([-0.5 * m, 0.5 * m], dim=1)


def margin_objective(logits: Tensor, y: Tensor) -> Tensor:
    """``z_other - z_y`` for two-logit outputs (N, 2) and labels (N,) in {0,1}:
    ``d·(s-τ)/T``, i.e. the anomaly objective up to a positive affine map per sample."""
    y = y.long()
    return logits.gather(1, (1 - y).unsqueeze(1)).squeeze(1) - logits.gather(1, y.unsqueeze(1)).squeeze(1)
