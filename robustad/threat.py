"""The threat model: norm, budget ε (pixel units of [0,1] images), attack mode, and
its geometry (per-sample norms, projection, random starts, steepest-ascent steps,
the budget check), shared by the evaluation attacks and adversarial training."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from robustad.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

NORMS = ("Linf", "L2")
MODES = ("both", "normal", "anomaly")


def parse_eps(text: str | float) -> float:
    """Parse ``0.03``, ``8/255`` style budgets; raise UserError for anything else."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            value = float(Fraction(str(text).strip()))
        except (ValueError, ZeroDivisionError) as exc:
            raise UserError(
                f"cannot read ε {text!r}; give a number such as 0.03 or a fraction such as 8/255"
            ) from exc
    return value


def format_eps(eps: float) -> str:
    """``8/255`` when ε is a whole number of 255ths, else the decimal."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{eps:g}"


def default_eps(norm: str, image_size: int) -> float:
    """Literature defaults (docs/THREAT_MODEL.md): 8/255 up to 64 px, 2/255 above; L2 0.5 / 1.0."""
    if norm == "Linf":
        return 8 / 255 if image_size <= 64 else 2 / 255
    return 0.5 if image_size <= 64 else 1.0


@dataclass(frozen=True)
class ThreatModel:
    """Per-sample budget ``‖δ‖_p ≤ eps`` with ``0 ≤ x + δ ≤ 1``.

    ``mode`` says which samples are attacked: ``both`` (default), ``normal`` or
    ``anomaly``. Attacks always attack every sample; the one-sided results are
    derived from stored per-sample scores (see ``benchmark.metrics``).
    """

    norm: str = "Linf"
    eps: float = 8 / 255
    mode: str = "both"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.mode not in MODES:
            raise UserError(f"unknown attack mode {self.mode!r}; choose one of {', '.join(MODES)}")
        eps = float(self.eps)
        if self.norm == "Linf" and not 0 < eps < 1:
            raise UserError(f"ε = {eps:g} is impossible for L∞ on [0,1] images; give 0 < ε < 1 (e.g. 8/255)")
        if self.norm == "L2" and not eps > 0:
            raise UserError(f"ε = {eps:g} is impossible; give ε > 0 (e.g. 0.5 for L2)")
        object.__setattr__(self, "eps", eps)

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        return f"{self.norm} ε={format_eps(self.eps)}"

    # -- geometry --------------------------------------------------------------------
    def size(self, delta: Tensor) -> Tensor:
        """``‖δ‖`` per sample in this threat model's norm; shape (N,)."""
        return per_sample_norm(delta, "inf" if self.norm == "Linf" else 2)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Project ``x_adv`` onto the ε-ball around ``x`` and then into the [0,1] box."""
        import torch

        delta = x_adv - x
        if self.norm == "Linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            factor = torch.clamp(self.eps / (per_sample_norm(delta, 2) + 1e-12), max=1.0)
            delta = delta * per_sample(factor, delta)
        return (x + delta).clamp(0.0, 1.0)

    def random_start(self, x: Tensor, generator: Any) -> Tensor:
        """A uniform random point of the ε-ball around x, clipped to the box.

        ``generator``: an object with ``draw(fn, shape)`` (the attacks' per-sample
        ``SampleRNG``: batch-independent starts), a ``torch.Generator`` (adversarial
        training: one stream for the batch) or None (torch's global stream).
        """
        import torch

        if self.norm == "Linf":
            u = _draw(torch.rand, tuple(x.shape), generator, x.device)
            delta = (2 * u - 1) * self.eps
        else:
            # Uniform in the L2 ball: Gaussian direction, radius ε·U^(1/n).
            g = _draw(torch.randn, tuple(x.shape), generator, x.device)
            g = g / per_sample(per_sample_norm(g, 2) + 1e-12, g)
            n = x[0].numel()
            r = _draw(torch.rand, (x.shape[0],), generator, x.device) ** (1.0 / n)
            delta = g * per_sample(r * self.eps, g)
        return (x + delta).clamp(0.0, 1.0)

    def ascent_direction(self, grad: Tensor) -> Tensor:
        """Steepest-ascent unit step: the sign for L∞, the normalised gradient for L2."""
        if self.norm == "Linf":
            return grad.sign()
        return grad / per_sample(per_sample_norm(grad, 2) + 1e-12, grad)

    def check_budget(self, x_adv: Tensor, x: Tensor) -> None:
        """Guard the protocol: an attack that leaves the threat model is a bug, not a result."""
        size = self.size(x_adv - x)
        if (size > self.eps * (1 + 1e-4) + 1e-6).any() or x_adv.min() < 0 or x_adv.max() > 1:
            raise RuntimeError(f"attack left the threat model {self.label()} (max ‖δ‖ {size.max():.4g})")


def per_sample_norm(v: Tensor, p: float | str) -> Tensor:
    """The L∞ (``p="inf"``) or L2 norm of each sample of a batch; shape (N,)."""
    flat = v.flatten(1)
    if p == "inf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample (N,) tensor shaped to broadcast against ``like`` (N, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _draw(fn, shape: tuple[int, ...], generator: Any, device) -> Tensor:
    if hasattr(generator, "draw"):  # per-sample generators
        return generator.draw(fn, shape).to(device)
    return fn(shape, generator=generator, device="cpu").to(device)
