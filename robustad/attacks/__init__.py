"""Attacks adapted to anomaly scores. Importing this package registers the built-ins."""

from robustad.attacks import (  # noqa: F401  (registration)
    aa,
    apgd,
    fgsm,
    map_attack,
    noise,
    none,
    pgd,
    square,
    torchattacks_adapter,
)
from robustad.attacks.base import Attack, BestPoint, objective

__all__ = ["Attack", "BestPoint", "objective"]
