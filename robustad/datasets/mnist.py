"""``mnist``: MNIST handwritten digits (LeCun et al., 1998) from its four IDX files.

Looked for under ``--data-root`` (default ``~/.cache/robustad``) in torchvision's
layout ``MNIST/raw/``, in ``mnist/`` or in the folder itself; each file may be
gzip-compressed (``.gz``, as published) or not (as torchvision extracts it).
``--download`` fetches them with torchvision into that root.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from robustad.datasets.base import (
    OneClassData,
    check_class,
    file_signature,
    find_or_fetch,
    looked_in,
    one_class_split,
    search_dirs,
    torchvision_download,
)
from robustad.datasets.idx import read_idx
from robustad.errors import UserError
from robustad.registry import register_dataset

STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SUBDIRS = ("MNIST/raw", "mnist", "")
CLASS_NAMES = [str(i) for i in range(10)]


def find_files(data_root: str | None) -> list[Path] | None:
    """The four files (each ``.gz`` or plain) in the first folder that has all of them."""
    for d in search_dirs(data_root, SUBDIRS):
        files = []
        for stem in STEMS:
            f = next((d / n for n in (stem, stem + ".gz") if (d / n).is_file()), None)
            if f is None:
                break
            files.append(f)
        else:
            return files
    return None


def fetch(data_root: str | None) -> None:
    from torchvision.datasets import MNIST

    root = search_dirs(data_root, ("",))[0]
    torchvision_download("MNIST", root, MNIST, {"train": True}, {"train": False})


def read_all(files: list[Path]) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels), checked; cached per file version."""
    return _read_all(file_signature(files))


@lru_cache(maxsize=1)
def _read_all(signature: tuple) -> tuple[np.ndarray, ...]:
    files = [Path(s[0]) for s in signature]
    tr_x, tr_y, te_x, te_y = (read_idx(f) for f in files)
    if (
        len(tr_x) != len(tr_y)
        or len(te_x) != len(te_y)
        or tr_x.shape[1:] != (28, 28)
        or te_x.shape[1:] != (28, 28)
        or tr_y.ndim != 1
        or te_y.ndim != 1
    ):
        raise UserError(f"the MNIST files in {files[0].parent} do not fit together; fetch them again")
    for f, y in ((files[1], tr_y), (files[3], te_y)):
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise UserError(f"{f} holds labels outside 0..9; it is not an MNIST label file, fetch it again")
    return tr_x, tr_y, te_x, te_y


def locate_mnist(data_root: str | None) -> tuple[bool, str]:
    files = find_files(data_root)
    if files:
        return True, str(files[0].parent)
    return False, f"looked in {looked_in(search_dirs(data_root, SUBDIRS))} (--download fetches it)"


@register_dataset(
    "mnist",
    num_classes=10,
    class_names=CLASS_NAMES,
    native_size=28,
    channels=1,
    source="torchvision layout (MNIST/raw) under --data-root, or --download",
    locate=locate_mnist,
)
def load_mnist(normal_class: int = 0, data_root: str | None = None, download: bool = False) -> OneClassData:
    """One digit as normal class; images (N,1,28,28) float32 in [0,1]."""
    check_class("mnist", normal_class, 10)
    files = find_or_fetch(
        lambda: find_files(data_root), lambda: fetch(data_root), download,
        lambda: f"MNIST not found: looked in {looked_in(search_dirs(data_root, SUBDIRS))} for "
        f"{', '.join(s + '[.gz]' for s in STEMS)}; pass --data-root or add --download",
    )  # fmt: skip
    tr_x, tr_y, te_x, te_y = read_all(files)
    data = one_class_split("mnist", normal_class, tr_x, tr_y, te_x, te_y, CLASS_NAMES)
    data.info["source"] = str(files[0].parent)
    return data
