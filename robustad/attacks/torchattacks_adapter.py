"""``ta:<Name>``: any torchattacks attack (optional: ``pip install --no-deps torchattacks``)
run on the two-logit view of the detector (``attacks/adapter.py``).

The view's class 1 is "anomalous" and labels are the 0/1 anomaly labels, so an
untargeted classifier attack pushes normals towards "anomalous" and anomalies
towards "normal". The view is calibrated per sample (each sample starts at the
decision boundary, a hair on its correct side) and scores the detector in eval mode whatever mode
torchattacks sets, so no BatchNorm buffer moves. torchattacks attacks return their
last iterate and may stop once a sample is misclassified; the suite still keeps,
per sample, the better of that point and the clean input by ``d·s``
(docs/THREAT_MODEL.md). Attacks that query the model on single images or other batch
shapes (DeepFool, SparseFool, SPSA, Pixle, ...) are run one sample at a time.

Each attack declares the norms it is built for (:func:`attack_norms`): a class
with a ``norm`` argument gets the threat model's norm, ``...L2``, CW and DeepFool
are L2, sparse attacks (L0/L1) fit neither threat model, every other one is L∞.
Running an attack under a norm it does not support is a UserError, never a
silently mislabelled result. ``eps`` (and ``norm``) are set from the threat model
when the attack takes them; other keyword arguments go to the torchattacks
constructor unchanged. Whether an attack is white-box (:func:`is_white_box`) is
one function, used for both the registry entry and the attack object.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from robustad.attacks.adapter import TwoLogitView, ViewBatchError
from robustad.attacks.base import Attack, direction, objective, seeded_global_rng
from robustad.errors import UnknownNameError, UserError
from robustad.registry import ATTACKS, Entry
from robustad.threat import NORMS

PREFIX = "ta:"

#: torchattacks attacks that only query the model's outputs (no gradients)
BLACK_BOX = frozenset({"Square", "Pixle", "OnePixel", "SPSA", "GN", "VANILA"})
#: L2 attacks without a ``norm`` argument (besides names ending in ``L2``)
L2_ATTACKS = frozenset({"CW", "DeepFool"})
#: sparse attacks (L0 / L1 / elastic net): unbounded, built for neither threat model
SPARSE_ATTACKS = frozenset({"JSMA", "OnePixel", "Pixle", "SparseFool", "EADL1", "EADEN"})
#: attacks tied to no norm (random noise, the identity)
NORM_FREE = frozenset({"GN", "VANILA"})

#: attacks that cannot run on a two-class view of one detector, and why
UNSUPPORTED = {
    "APGDT": "targets the other classes with the DLR loss, which needs at least three classes; use aa",
    "AutoAttack": "runs APGD-T and FAB-T, which need at least three classes; use aa",
    "MultiAttack": "combines attack objects rather than taking a model; list the attacks instead",
    "LGV": "needs the training loader of a classifier",
}

_NORM_WORD = {"Linf": "L∞", "L2": "L2"}


def _torchattacks():
    try:
        import torchattacks
    except ImportError as exc:
        raise UserError(
            "ta:<Name> attacks need the optional torchattacks package, which is not installed; "
            "install it with pip install --no-deps torchattacks (it needs only torch; its pinned "
            "requests~=2.25 is never imported)"
        ) from exc
    return torchattacks


def is_white_box(attack_name: str) -> bool:
    """Whether ``ta:<attack_name>`` follows gradients (the registry and the attack agree)."""
    return attack_name not in BLACK_BOX


def attack_norms(attack_name: str, cls: Any = None, params: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The threat-model norms ``ta:<attack_name>`` is built for (possibly none)."""
    params = params or {}
    accepted = inspect.signature(cls.__init__).parameters if cls is not None else {}
    if "norm" in accepted:
        fixed = params.get("norm")
        return (fixed,) if fixed is not None else NORMS
    if attack_name in NORM_FREE:
        return NORMS
    if attack_name in SPARSE_ATTACKS:
        return ()
    if attack_name.endswith("L2") or attack_name in L2_ATTACKS:
        return ("L2",)
    return ("Linf",)


def _norm_message(attack_name: str, norms: tuple[str, ...], norm: str) -> str:
    name = PREFIX + attack_name
    if not norms:
        return (
            f"{name} is a sparse (L0/L1) attack and fits neither threat model "
            f"({', '.join(NORMS)}); use an L∞ or L2 attack such as ta:PGD or ta:PGDL2"
        )
    if len(norms) == 1 and norms[0] not in NORMS:
        return f"{name} was given norm={norms[0]!r}; torchattacks norms here are {', '.join(NORMS)}"
    if attack_name + "L2" in _class_names() and norm == "L2":
        return f"{name} is an L∞ attack; use {name}L2 for --norm L2"
    if attack_name.endswith("L2") and attack_name[:-2] in _class_names() and norm == "Linf":
        return f"{name} is an L2 attack; use {PREFIX}{attack_name[:-2]} for --norm Linf"
    word = " or ".join(_NORM_WORD.get(n, n) for n in norms)
    return f"{name} is an {word} attack and cannot run under --norm {norm}; choose an attack for {norm}"


def _class_names() -> set[str]:
    ta = _torchattacks()
    return {n for n in dir(ta) if n[:1].isupper() and inspect.isclass(getattr(ta, n))}


class TorchAttacksAttack(Attack):
    """One torchattacks class, by name, with its constructor keyword arguments."""

    #: torchattacks draws random starts for the whole batch
    batch_independent = False

    def __init__(self, attack_name: str, seed: int = 0, **params: Any):
        super().__init__(seed=seed)
        if attack_name in UNSUPPORTED:
            raise UserError(f"{PREFIX}{attack_name} {UNSUPPORTED[attack_name]}")
        self.attack_name = attack_name
        self.params = params
        self.cls = getattr(_torchattacks(), attack_name)
        self.white_box = is_white_box(attack_name)
        #: the threat-model norms this attack is built for
        self.norms = attack_norms(attack_name, self.cls, params)

    def supports_norm(self, norm: str) -> bool:
        """Whether the attack is built for the threat model's norm ``norm``."""
        return norm in self.norms

    def check_norm(self, norm: str) -> None:
        """A UserError, in one sentence, unless the attack is built for ``norm``."""
        if not self.supports_norm(norm):
            raise UserError(_norm_message(self.attack_name, self.norms, norm))

    def _torchattack(self, view: TwoLogitView, threat) -> Any:
        params = dict(self.params)
        accepted = inspect.signature(self.cls.__init__).parameters
        if "eps" in accepted:
            params.setdefault("eps", threat.eps)
        if "norm" in accepted:
            params.setdefault("norm", threat.norm)
        if "seed" in accepted:
            params.setdefault("seed", self.seed)
        return self.cls(view, **params)

    def _attack(self, view: TwoLogitView, x, y, threat) -> torch.Tensor:
        atk = self._torchattack(view, threat)
        with seeded_global_rng(self.seed, x.device):
            return atk(x, y.long()).detach()

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        self.check_norm(threat.norm)
        clean_scores = direction(y).to(best.value.dtype) * best.value
        view = TwoLogitView.calibrated(detector, score_fn, clean_scores, y)
        try:
            x_ta = self._attack(view, x, y, threat)
        except ViewBatchError:
            # The attack queries single images or other batch shapes: one sample at a
            # time, each with its own view (and the same seed, so batch-independent).
            x_ta = torch.cat([self._attack(view.rows(slice(i, i + 1)), x[i : i + 1], y[i : i + 1], threat)
                              for i in range(len(x))])  # fmt: skip
        detector.eval()  # the view never left eval mode; make sure of it before judging
        # torchattacks' norms and projections are its own: clip back into the threat
        # model so a loose attack cannot leave it (a no-op for well-behaved ones).
        x_ta = threat.project(x_ta.to(x.dtype).reshape(x.shape), x)
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

    metadata = {
        "white_box": is_white_box(attack_name),
        "norms": attack_norms(attack_name, cls),
        "description": f"torchattacks.{attack_name}",
    }
    return Entry(PREFIX + attack_name, factory, metadata)


ATTACKS.register_prefix(PREFIX, resolve)
