"""``svhn``: Street View House Numbers (Netzer et al., 2011), cropped digits.

torchvision's layout: ``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB v5
files holding ``X`` (32,32,3,N) uint8 and ``y`` (N,1) with labels 1..10, where
10 means the digit 0, mapped to 0 as torchvision does) directly in
``--data-root`` (default ``~/.cache/robustad``) or in its ``svhn``/``SVHN``
sub-folder. ``--download`` fetches them with torchvision.
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
from robustad.errors import UserError
from robustad.registry import register_dataset

FILES = ("train_32x32.mat", "test_32x32.mat")
SUBDIRS = ("", "svhn", "SVHN")
CLASS_NAMES = [str(i) for i in range(10)]


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N,32,32,3) and int64 labels (N,) in 0..9 from one SVHN ``.mat`` file."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError, OSError, ...
        raise UserError(f"{path} is corrupt, truncated or not a MATLAB file ({exc}); fetch it again") from exc
    if "X" not in mat or "y" not in mat:
        raise UserError(f"{path} lacks the X or y variable of an SVHN file; fetch it again")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise UserError(f"{path}: X is {x.dtype} {x.shape}, not uint8 (32,32,3,N) as in SVHN; fetch it again")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise UserError(f"{path}: y has labels outside 1..10; it is not an SVHN file, fetch it again")
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), (y.astype(np.int64) % 10)


@lru_cache(maxsize=1)
def _read_all(signature: tuple) -> tuple[np.ndarray, ...]:
    tr_x, tr_y = read_mat(Path(signature[0][0]))
    te_x, te_y = read_mat(Path(signature[1][0]))
    return tr_x, tr_y, te_x, te_y


def find_dir(data_root: str | None) -> Path | None:
    for d in search_dirs(data_root, SUBDIRS):
        if all((d / f).is_file() for f in FILES):
            return d
    return None


def _fetch(data_root: str | None) -> None:
    import torchvision

    root = search_dirs(data_root, ("",))[0]
    torchvision_download("SVHN", root, torchvision.datasets.SVHN, {"split": "train"}, {"split": "test"})


def locate_svhn(data_root: str | None) -> tuple[bool, str]:
    d = find_dir(data_root)
    if d:
        return True, str(d)
    return False, f"looked in {looked_in(search_dirs(data_root, SUBDIRS))} (--download fetches it)"


@register_dataset(
    "svhn",
    num_classes=10,
    class_names=CLASS_NAMES,
    native_size=32,
    channels=3,
    source="torchvision layout (train_32x32.mat, test_32x32.mat) under --data-root, or --download",
    locate=locate_svhn,
)
def load_svhn(normal_class: int = 0, data_root: str | None = None, download: bool = False) -> OneClassData:
    """One SVHN digit as normal class; images (N,3,32,32) float32 in [0,1]."""
    check_class("svhn", normal_class, 10)
    d = find_or_fetch(
        lambda: find_dir(data_root), lambda: _fetch(data_root), download,
        lambda: f"SVHN not found: looked in {looked_in(search_dirs(data_root, SUBDIRS))} for "
        f"{', '.join(FILES)}; pass --data-root (torchvision's layout) or add --download",
    )  # fmt: skip
    tr_x, tr_y, te_x, te_y = _read_all(file_signature([d / f for f in FILES]))
    data = one_class_split("svhn", normal_class, tr_x, tr_y, te_x, te_y, CLASS_NAMES)
    data.info["source"] = str(d)
    return data
