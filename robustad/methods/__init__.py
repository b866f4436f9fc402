"""Anomaly detectors. Importing this package registers the built-ins."""

from robustad.methods import apae, cobra, csi, deepsvdd, draem, ocsdf, principals  # noqa: F401  (registration)
from robustad.methods.base import Detector, RunContext

__all__ = ["Detector", "RunContext"]
