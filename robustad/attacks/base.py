"""What every attack shares: the anomaly-score objective, per-sample random draws,
the gradient oracle and the best-point bookkeeping (docs/THREAT_MODEL.md). The
threat model's geometry (projection, random starts, ascent steps) is
``robustad.threat.ThreatModel``'s.

The attacker solves, per sample, ``max d·s(x+δ)`` with ``d = +1`` for normal and
``-1`` for anomalous samples, ``‖δ‖_p ≤ ε`` and ``0 ≤ x+δ ≤ 1``. Every attack
returns the best point it found *including the clean input*, so an attacked
AUROC can never exceed the clean one.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable

import torch
from torch import Tensor

from robustad.errors import UserError
from robustad.threat import ThreatModel

ScoreFn = Callable[[Tensor], Tensor]


def direction(y: Tensor) -> Tensor:
    """``d = +1`` for normal (y=0), ``-1`` for anomalous (y=1); shape (N,)."""
    return 1.0 - 2.0 * y.float()


def objective(scores: Tensor, y: Tensor) -> Tensor:
    """Per-sample attacker objective ``d·s``; shape (N,)."""
    return direction(y).to(scores.dtype) * scores


class SampleRNG:
    """Random draws made per sample, so an attack's result does not depend on the batch.

    Each sample gets its own ``torch.Generator`` seeded by the attack seed and a hash
    of the sample's bytes: the same image gets the same random start whatever batch
    it is in, at whatever position, and with whatever ``--batch-size``. Draws are made
    on the CPU so a seed gives the same points on every device.
    """

    def __init__(self, x: Tensor, seed: int):
        rows = x.detach().flatten(1).to("cpu", torch.float32).contiguous().numpy()
        self.generators = [torch.Generator().manual_seed(_sample_seed(seed, row.tobytes())) for row in rows]

    def draw(self, fn: Callable, shape: tuple[int, ...]) -> Tensor:
        """``fn(shape[1:])`` for each sample from its own generator, stacked: ``shape``."""
        return torch.stack([fn(tuple(shape[1:]), generator=g) for g in self.generators])


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device):
    """Run code that draws from torch's global RNG (AutoAttack, torchattacks) from a
    fixed seed, leaving the caller's random state as it was."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _sample_seed(seed: int, data: bytes) -> int:
    digest = hashlib.blake2b(data, digest_size=8, key=str(int(seed)).encode()).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def objective_and_grad(score_fn: ScoreFn, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``d·s(x)`` (N,) and its gradient w.r.t. x, gradients to the input only."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        obj = objective(score_fn(x), y)
        (grad,) = torch.autograd.grad(obj.sum(), x)
    return obj.detach(), grad.detach()


class GradientOracle:
    """Objective values and input gradients for one attack step, shared by every attack.

    - ``grad_fn``: the score whose gradient is followed. By default the detector's
      score; for adaptive attacks (Tramèr et al., 2020) a smooth surrogate, while
      the objective that decides each sample's best point stays the true score.
    - ``draws > 1``: expectation over transformation (EOT) for stochastic scores,
      the objective and gradient are averaged over that many draws.

    ``oracle(x, y)`` returns ``(d·s(x), ∇ₓ)``, both detached: (N,) and x's shape.
    With the default settings this is one forward and one backward pass.
    """

    def __init__(self, score_fn: ScoreFn, grad_fn: ScoreFn | None = None, draws: int = 1):
        if draws < 1:
            raise ValueError("draws must be >= 1")
        self.score_fn = score_fn
        self.grad_fn = grad_fn
        self.draws = draws

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        fn = self.grad_fn or self.score_fn
        obj, grad = objective_and_grad(fn, x, y)
        for _ in range(self.draws - 1):
            o, g = objective_and_grad(fn, x, y)
            obj, grad = obj + o, grad + g
        if self.draws > 1:
            obj, grad = obj / self.draws, grad / self.draws
        if self.grad_fn is not None:
            # The surrogate only steers; the best point is judged by the true score.
            with torch.no_grad():
                obj = objective(self.score_fn(x), y)
        return obj, grad


def surrogate_score_fn(detector) -> ScoreFn:
    """The detector's ``surrogate_score`` (for ``adaptive=True``), or a UserError."""
    fn = getattr(detector, "surrogate_score", None)
    if not callable(fn):
        name = getattr(detector, "registry_name", type(detector).__name__)
        raise UserError(
            f"adaptive=True needs a surrogate_score(x) method, which detector {name!r} does not "
            "have; drop adaptive=True for it or add a smooth surrogate_score to the method"
        )
    return fn


class BestPoint:
    """Keeps, per sample, the highest-objective point seen so far (clean included)."""

    def __init__(self, x: Tensor, clean_objective: Tensor):
        self.x = x.detach().clone()
        self.value = clean_objective.detach().clone()

    def update(self, x_candidate: Tensor, value: Tensor) -> None:
        better = value > self.value
        if better.any():
            self.x[better] = x_candidate.detach()[better]
            self.value = torch.where(better, value.detach(), self.value)


class Attack:
    """Base class: subclasses implement ``_run`` and only what is particular to them.

    ``perturb(detector, x, y, threat)`` takes images (N,C,H,W) in [0,1] and labels
    (N,) in {0,1}; returns adversarial images of the same shape, each the best
    point found for its sample (the clean input if nothing beat it). After a call,
    ``self.adv_scores`` (N,) holds the score of each returned point *as it was
    judged* when chosen (for a stochastic detector, the EOT average, not a fresh
    draw), and ``self.stats`` diagnostics such as the fraction of zero input
    gradients (:func:`gradient_diagnostics`).
    """

    #: whether the attack needs gradients of the score
    white_box: bool = True
    #: whether a sample's result is independent of the batch around it (per-sample
    #: random draws, no batch statistics). Attacks built on code that draws for the
    #: whole batch (AutoAttack's APGD and Square, torchattacks) set False, and the
    #: runner makes the batch size part of their results' identity.
    batch_independent: bool = True

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.stats: dict[str, float] = {}
        self.adv_scores: Tensor | None = None

    def score_fn(self, detector) -> ScoreFn:
        return detector.score

    def perturb(self, detector, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        was_training = detector.training
        detector.eval()
        try:
            x = x.detach()
            y = y.to(x.device)
            score_fn = self.score_fn(detector)
            with torch.no_grad():
                clean = objective(score_fn(x), y)
            best = BestPoint(x, clean)
            self.stats = gradient_diagnostics(score_fn, x, y) if self.white_box else {}
            self._run(detector, score_fn, x, y, threat, best, SampleRNG(x, self.seed))
            self.adv_scores = direction(y).to(best.value.dtype) * best.value
            return best.x
        finally:
            detector.train(was_training)

    def _run(
        self,
        detector,
        score_fn: ScoreFn,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        best: BestPoint,
        generator: SampleRNG,
    ) -> None:
        raise NotImplementedError

    def gradient_oracle(
        self,
        detector,
        score_fn: ScoreFn,
        adaptive: bool = False,
        eot_draws: int = 1,
        always_eot: bool = False,
    ) -> GradientOracle:
        """The oracle for this detector: surrogate gradients if ``adaptive``, and EOT
        over ``eot_draws`` draws when the detector declares ``stochastic = True``
        (or always, with ``always_eot``)."""
        grad_fn = surrogate_score_fn(detector) if adaptive else None
        draws = eot_draws if (always_eot or getattr(detector, "stochastic", False)) else 1
        if draws > 1:
            self.stats["eot_draws"] = float(draws)
        return GradientOracle(score_fn, grad_fn, draws)


#: how far a pixel at the box bound is moved inward to see whether its gradient was masked
BOUNDARY_STEP = 1e-3


def gradient_diagnostics(score_fn: ScoreFn, x: Tensor, y: Tensor) -> dict[str, float]:
    """Gradient statistics at the clean input, for the reliability flags.

    - ``zero_grad_frac``: fraction of samples whose whole input gradient is 0 (the
      ``zero-grad`` flag);
    - ``zero_grad_pixel_frac``: fraction of pixels whose gradient of ``d·s`` is exactly 0
      (pixels a score legitimately ignores, such as those outside a centre crop, count
      too: this is a description, not a flag);
    - ``box_masked_frac``: fraction of pixels at exactly 0 or 1 whose gradient is 0
      there but not after moving every such pixel ``BOUNDARY_STEP`` into the box: a
      clamp (or another flat piece) that hides the direction an attacker can move in.
      Pixels ignored by the score stay at 0 after the move and are not counted. Raised
      as the ``box-masking`` flag (``attacks/reliability.py``).

    Two extra forward/backward passes on the clean batch.
    """
    _, grad = objective_and_grad(score_fn, x, y)
    at_bound = (x == 0) | (x == 1)
    inward = torch.where(x == 0, BOUNDARY_STEP, torch.where(x == 1, -BOUNDARY_STEP, 0.0)).to(x.dtype)
    _, grad_inside = objective_and_grad(score_fn, x + inward, y)
    masked = at_bound & (grad == 0) & (grad_inside != 0)
    n = max(x.numel(), 1)
    return {
        "zero_grad_frac": (grad.flatten(1).abs().amax(dim=1) == 0).float().mean().item(),
        "zero_grad_pixel_frac": (grad == 0).sum().item() / n,
        "box_masked_frac": masked.sum().item() / n,
    }
