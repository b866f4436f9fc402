"""Anomaly detectors. Importing this package registers the built-ins."""

from robustad.methods import apae, cobra, csi, deepsvdd, draem, ocsdf, principals  # noqa: F401  (registration)
from robustad.methods import feature_knn, patchcore  # noqa: F401  (registration: zarnd, msad, patchcore)
from robustad.methods.base import Detector, RunContext

__all__ = ["Detector", "RunContext"]
