"""Datasets under the one-class protocol. Importing this package registers the built-ins."""

from robustad.datasets import (  # noqa: F401  (registration)
    cifar,
    cityscapes,
    dagm,
    digits,
    fmnist,
    imagefolder,
    imagenet30,
    isic2018,
    mnist,
    mvtec,
    svhn,
    visa,
)
from robustad.datasets.base import OneClassData, class_index
from robustad.datasets.base import test_subset as test_subset_of
from robustad.errors import UserError
from robustad.registry import DATASETS


def load_dataset(
    name: str,
    normal_class: int | str = 0,
    data_root: str | None = None,
    download: bool = False,
    test_subset: int | None = None,
    **params,
) -> OneClassData:
    """Load one normal class of a registered dataset (see docs/DATASETS.md).

    ``normal_class`` is an index or one of the dataset's class names (``"bottle"``).
    ``params`` go to the dataset's loader (e.g. ``image_size`` for resized datasets).
    ``test_subset``: keep a seeded, balanced subset of that many test images (any
    dataset; see :func:`robustad.datasets.base.test_subset`).
    """
    entry = DATASETS.get(name)
    if entry.metadata.get("class_names"):
        normal_class = class_index(entry.name, normal_class, list(entry.metadata["class_names"]))
    n = entry.metadata.get("num_classes")
    if n is not None and isinstance(normal_class, int) and not 0 <= normal_class < n:
        raise UserError(f"{entry.name} has classes 0..{n - 1}; normal class {normal_class} is out of range")
    if params and not entry.accepts_any_keyword():
        bad = sorted(set(params) - set(entry.parameters()))
        if bad:
            raise UserError(
                f"dataset {entry.name!r} has no parameter(s) {', '.join(bad)}; "
                f"valid: {', '.join(entry.parameters())}"
            )
    data = entry.factory(normal_class=normal_class, data_root=data_root, download=download, **params)
    return data if test_subset is None else test_subset_of(data, test_subset)


__all__ = ["OneClassData", "load_dataset"]
