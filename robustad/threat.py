"""The threat model: norm, budget ε (pixel units of [0,1] images) and attack mode."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

from robustad.errors import UserError

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
