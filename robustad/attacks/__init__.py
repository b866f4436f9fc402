"""Attacks adapted to anomaly scores. Importing this package registers the built-ins."""

from robustad.attacks import fgsm, noise, none, pgd  # noqa: F401  (registration)
from robustad.attacks.base import Attack, BestPoint, objective, project

__all__ = ["Attack", "BestPoint", "objective", "project"]
