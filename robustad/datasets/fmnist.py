"""``fmnist``: Fashion-MNIST (Xiao et al., 2017) from its four IDX ``.gz`` files.

Looked for, in order: under ``--data-root`` (torchvision's layout
``FashionMNIST/raw/`` or the files directly in the folder), then where the
Debian package ``dataset-fashion-mnist`` installs them. ``--download`` fetches
them with torchvision into ``--data-root`` (default ``~/.cache/robustad``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from robustad.datasets.base import (
    DEFAULT_DATA_ROOT,
    OneClassData,
    check_class,
    file_signature,
    find_or_fetch,
    looked_in,
    one_class_split,
    torchvision_download,
)
from robustad.datasets.idx import read_idx
from robustad.errors import UserError
from robustad.registry import register_dataset

FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def candidate_dirs(data_root: str | None) -> list[Path]:
    dirs = []
    if data_root:
        root = Path(data_root).expanduser()
        dirs += [root / "FashionMNIST" / "raw", root, root / "fashion-mnist"]
    dirs.append(DEBIAN_DIR)
    if not data_root:  # where --download without --data-root puts the files
        dirs.append(DEFAULT_DATA_ROOT / "FashionMNIST" / "raw")
    return dirs


def find_files(data_root: str | None) -> Path | None:
    for d in candidate_dirs(data_root):
        if all((d / f).is_file() for f in FILES):
            return d
    return None


def _download(data_root: str | None) -> Path:
    import torchvision

    root = Path(data_root).expanduser() if data_root else DEFAULT_DATA_ROOT
    fashion = torchvision.datasets.FashionMNIST
    torchvision_download("Fashion-MNIST", root, fashion, {"train": True}, {"train": False})
    return root / "FashionMNIST" / "raw"


@lru_cache(maxsize=2)
def _read_all(signature: tuple) -> tuple[np.ndarray, ...]:
    """The four arrays, cached per file version (path, size, mtime: a replaced file is read again)."""
    files = [Path(entry[0]) for entry in signature]
    d = files[0].parent
    arrays = tuple(read_idx(f) for f in files)
    tr_x, tr_y, te_x, te_y = arrays
    if len(tr_x) != len(tr_y) or len(te_x) != len(te_y) or tr_x.shape[1:] != (28, 28):
        raise UserError(f"the Fashion-MNIST files in {d} do not match each other; fetch them again")
    return arrays


def locate_fmnist(data_root: str | None) -> tuple[bool, str]:
    folder = find_files(data_root)
    if folder is not None:
        return True, str(folder)
    return False, f"looked in {looked_in(candidate_dirs(data_root))} (--download fetches it)"


@register_dataset(
    "fmnist",
    num_classes=10,
    class_names=CLASS_NAMES,
    native_size=28,
    channels=1,
    source="Debian dataset-fashion-mnist, torchvision layout under --data-root, or --download",
    locate=locate_fmnist,
)
def load_fmnist(normal_class: int = 0, data_root: str | None = None, download: bool = False) -> OneClassData:
    check_class("fmnist", normal_class, 10)
    folder = find_or_fetch(
        lambda: find_files(data_root), lambda: _download(data_root), download,
        lambda: f"Fashion-MNIST not found: looked in {looked_in(candidate_dirs(data_root))} for "
        f"{', '.join(FILES)}; install the Debian package dataset-fashion-mnist, pass --data-root, "
        "or add --download",
    )  # fmt: skip
    tr_x, tr_y, te_x, te_y = _read_all(file_signature([folder / f for f in FILES]))
    data = one_class_split("fmnist", normal_class, tr_x, tr_y, te_x, te_y, CLASS_NAMES)
    data.info["source"] = str(folder)
    return data
