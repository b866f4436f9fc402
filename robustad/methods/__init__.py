"""Anomaly detectors. Importing this package registers the built-ins."""

# registration: importing a module registers its methods (feature_knn: zarnd and msad)
from robustad.methods import (  # noqa: F401
    apae,
    cobra,
    csi,
    deepsvdd,
    draem,
    feature_knn,
    ocsdf,
    patchcore,
    principals,
)
from robustad.methods.base import Detector, RunContext

__all__ = ["Detector", "RunContext"]
