"""Datasets under the one-class protocol. Importing this package registers the built-ins."""

from robustad.datasets import digits, fmnist  # noqa: F401  (registration)
from robustad.datasets.base import OneClassData
from robustad.errors import UserError
from robustad.registry import DATASETS


def load_dataset(
    name: str, normal_class: int = 0, data_root: str | None = None, download: bool = False
) -> OneClassData:
    """Load one normal class of a registered dataset (see DATASETS.md)."""
    entry = DATASETS.get(name)
    n = entry.metadata.get("num_classes")
    if n is not None and isinstance(normal_class, int) and not 0 <= normal_class < n:
        raise UserError(f"{entry.name} has classes 0..{n - 1}; normal class {normal_class} is out of range")
    return entry.factory(normal_class=normal_class, data_root=data_root, download=download)


__all__ = ["OneClassData", "load_dataset"]
