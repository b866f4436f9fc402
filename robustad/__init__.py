"""robustad: how well do anomaly detectors hold up under adversarial attack?

import robustad as ra
data = ra.load_dataset("digits", normal_class=0)
det = ra.create_method("deepsvdd").fit(data)
x_adv = ra.create_attack("pgd", steps=10).perturb(det, data.test_x, data.test_y,
                                                  ra.ThreatModel("Linf", 8 / 255))
ra.auroc(det.score_batched(x_adv), data.test_y)
"""

from robustad import attacks as _attacks  # noqa: E402,F401  (registers built-in attacks)
from robustad import datasets as _datasets  # noqa: E402,F401
from robustad import methods as _methods  # noqa: E402,F401
from robustad.attacks.base import Attack  # noqa: E402
from robustad.benchmark.frame import load_results  # noqa: E402
from robustad.benchmark.metrics import aupr, auroc, fpr_at_tpr, one_sided_scores  # noqa: E402
from robustad.benchmark.runner import benchmark  # noqa: E402
from robustad.datasets import OneClassData, load_dataset  # noqa: E402
from robustad.errors import UserError  # noqa: E402
from robustad.methods.base import Detector, RunContext  # noqa: E402
from robustad.registry import (  # noqa: E402
    ATTACKS,
    DATASETS,
    METHODS,
    list_attacks,
    list_datasets,
    list_methods,
    load_plugin,
    register_attack,
    register_dataset,
    register_method,
)
from robustad.threat import ThreatModel  # noqa: E402
from robustad.version import __version__  # noqa: E402


def create_method(name: str, **params) -> Detector:
    """Build a registered detector (unfitted); ``fit(data)`` trains it."""
    return METHODS.create(name, **params)


def create_attack(name: str, **params) -> Attack:
    """Build a registered attack; ``perturb(detector, x, y, threat)`` runs it."""
    return ATTACKS.create(name, **params)


__all__ = [
    "__version__",
    "ATTACKS", "DATASETS", "METHODS", "Attack", "Detector", "OneClassData", "RunContext",
    "ThreatModel", "UserError", "aupr", "auroc", "benchmark", "create_attack", "create_method",
    "fpr_at_tpr", "list_attacks", "list_datasets", "list_methods", "load_dataset", "load_plugin",
    "load_results",
    "one_sided_scores", "register_attack", "register_dataset", "register_method",
]  # fmt: skip
