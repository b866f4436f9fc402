"""``ta:<Name>``: any torchattacks attack (optional extra ``robustad[torchattacks]``)
run on the two-logit view of the detector (``attacks/adapter.py``).

The view's class 1 is "anomalous" and labels are the 0/1 anomaly labels, so an
untargeted classifier attack pushes normals towards "anomalous" and anomalies
towards "normal". torchattacks attacks return their last iterate and may stop
once a sample is misclassified; the suite still keeps, per sample, the better
of that point and the clean input by ``d·s`` (THREAT_MODEL.md). ``eps`` is set
from the threat model when the attack takes one; other keyword arguments go to
the torchattacks constructor unchanged.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from robustad.attacks.adapter import TwoLogitView
from robustad.attacks.base import Attack, direction, objective, project
from robustad.errors import UnknownNameError, UserError
from robustad.registry import ATTACKS, Entry

PREFIX = "ta:"


def _torchattacks():
    try:
        import torchattacks
    except ImportError as exc:
        raise UserError(
            "ta:<Name> attacks need the optional torchattacks package, which is not installed; "
            "install it with pip install 'robustad[torchattacks]'"
        ) from exc
    return torchattacks


class TorchAttacksAttack(Attack):
    """One torchattacks class, by name, with its constructor keyword arguments."""

    def __init__(self, attack_name: str, seed: int = 0, **params: Any):
        super().__init__(seed=seed)
        self.attack_name = attack_name
        self.params = params
        self.cls = getattr(_torchattacks(), attack_name)
        self.white_box = "Square" not in attack_name and "Pixle" not in attack_name

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        clean_scores = direction(y).to(best.value.dtype) * best.value
        view = TwoLogitView.calibrated(detector, score_fn, clean_scores, y)
        params = dict(self.params)
        accepted = inspect.signature(self.cls.__init__).parameters
        if "eps" in accepted:
            params.setdefault("eps", threat.eps)
        if "norm" in accepted:
            params.setdefault("norm", threat.norm)
        if "seed" in accepted:
            params.setdefault("seed", self.seed)
        atk = self.cls(view, **params)
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            x_ta = atk(x, y.long()).detach()
        # torchattacks' norms and projections are its own: clip back into the threat
        # model so a loose attack cannot leave it (a no-op for well-behaved ones).
        x_ta = project(x_ta, x, threat)
        with torch.no_grad():
            best.update(x_ta, objective(score_fn(x_ta), y))


def resolve(name: str) -> Entry:
    """Registry resolver for ``ta:<AttackName>`` (case as in torchattacks)."""
    attack_name = name[len(PREFIX) :]
    ta = _torchattacks()
    cls = getattr(ta, attack_name, None)
    if not (inspect.isclass(cls) and attack_name[:1].isupper()):
        choices = sorted(n for n in dir(ta) if n[:1].isupper() and inspect.isclass(getattr(ta, n)))
        raise UnknownNameError(
            f"torchattacks has no attack {attack_name!r}; valid names: "
            + ", ".join(PREFIX + c for c in choices)
        )

    def factory(seed: int = 0, **params: Any) -> TorchAttacksAttack:
        return TorchAttacksAttack(attack_name, seed=seed, **params)

    return Entry(
        PREFIX + attack_name, factory, {"white_box": True, "description": f"torchattacks.{attack_name}"}
    )


ATTACKS.register_prefix(PREFIX, resolve)
