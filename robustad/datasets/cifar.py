"""``cifar10`` and ``cifar100`` (Krizhevsky, 2009) from the "python version" pickles.

torchvision's layout under ``--data-root`` (default ``~/.cache/robustad``):
``cifar-10-batches-py/{data_batch_1..5, test_batch}`` and
``cifar-100-python/{train, test}``. CIFAR-100 is used with its 20 superclasses
(the ``coarse_labels`` stored in the pickle), as in the anomaly-detection
literature. ``--download`` fetches the archives with torchvision.

The pickles are read with a restricted unpickler that builds only plain
containers, numbers, strings and numpy arrays: a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import pickle
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

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
CIFAR100_DIR = "cifar-100-python"
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR100_SUPERCLASSES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]  # fmt: skip


def _numpy_reconstruct():
    from numpy._core.multiarray import _reconstruct

    return _reconstruct


# The only globals a CIFAR pickle needs: numpy's array rebuild (written as numpy.core by
# numpy 1.x and Python 2, numpy._core by numpy 2) and the bytes decoder of protocol 2.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not plain data")
        return factory()


def _plain(obj, depth: int = 0):
    """Check the unpickled object is plain data; decode bytes keys (Python 2 pickles)."""
    if depth > 8:
        raise pickle.UnpicklingError("it is nested too deeply for a dataset file")
    if isinstance(obj, dict):
        return {
            (k.decode("latin1") if isinstance(k, bytes) else k): _plain(v, depth + 1) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise pickle.UnpicklingError("it holds an object array, which is not plain data")
        return obj
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise pickle.UnpicklingError(f"it holds a {type(obj).__name__}, which is not plain data")


def read_pickle(path: Path) -> dict:
    """Read one CIFAR pickle as a dict of plain data; UserError if corrupt or not plain data."""
    try:
        raw = path.read_bytes()
        obj = _PlainDataUnpickler(io.BytesIO(raw), encoding="latin1").load()
        obj = _plain(obj)
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            pickle.UnpicklingError, MemoryError) as exc:  # fmt: skip
        raise UserError(
            f"{path} is corrupt, truncated or not a CIFAR pickle ({exc}); fetch it again"
        ) from exc
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR pickle (it holds a {type(obj).__name__}); fetch it again")
    return obj


def _batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N,32,32,3) and int64 labels (N,) from one pickle."""
    d = read_pickle(path)
    if "data" not in d or label_key not in d:
        raise UserError(f"{path} lacks the 'data' or {label_key!r} entry of a CIFAR pickle; fetch it again")
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(
            f"{path}: 'data' is {data.dtype} {data.shape}, not uint8 (N, 3072) as in CIFAR; fetch it again"
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: {label_key!r} does not give one integer label per image; fetch it again")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: {label_key!r} has labels outside 0..{num_classes - 1}; fetch it again")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


@lru_cache(maxsize=2)
def _read_split(signature: tuple, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [_batch(Path(s[0]), label_key, num_classes) for s in signature]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _find(data_root: str | None, folder: str, names: tuple[str, ...]) -> Path | None:
    for d in search_dirs(data_root, ("", "cifar")):
        if all((d / folder / n).is_file() for n in names):
            return d / folder
    return None


def _fetch(data_root: str | None, cls_name: str) -> None:
    import torchvision

    root = search_dirs(data_root, ("",))[0]
    torchvision_download(cls_name, root, getattr(torchvision.datasets, cls_name), {"train": True})


def _load(
    name: str, normal_class: int, data_root, download, folder, train_names, test_names, label_key,
    num_classes, class_names, tv_name,
) -> OneClassData:  # fmt: skip
    check_class(name, normal_class, num_classes)
    dirs = [d / folder for d in search_dirs(data_root, ("", "cifar"))]
    names = train_names + test_names
    found = find_or_fetch(
        lambda: _find(data_root, folder, names), lambda: _fetch(data_root, tv_name), download,
        lambda: f"{tv_name} not found: looked in {looked_in(dirs)} for {', '.join(names)}; "
        "pass --data-root (torchvision's layout) or add --download",
    )  # fmt: skip
    tr_x, tr_y = _read_split(file_signature([found / n for n in train_names]), label_key, num_classes)
    te_x, te_y = _read_split(file_signature([found / n for n in test_names]), label_key, num_classes)
    data = one_class_split(name, normal_class, tr_x, tr_y, te_x, te_y, class_names)
    data.info["source"] = str(found)
    return data


def locate_cifar10(data_root: str | None) -> tuple[bool, str]:
    found = _find(data_root, CIFAR10_DIR, CIFAR10_TRAIN + CIFAR10_TEST)
    if found:
        return True, str(found)
    dirs = [d / CIFAR10_DIR for d in search_dirs(data_root, ("", "cifar"))]
    return False, f"looked in {looked_in(dirs)} (--download fetches it)"


def locate_cifar100(data_root: str | None) -> tuple[bool, str]:
    found = _find(data_root, CIFAR100_DIR, ("train", "test"))
    if found:
        return True, str(found)
    dirs = [d / CIFAR100_DIR for d in search_dirs(data_root, ("", "cifar"))]
    return False, f"looked in {looked_in(dirs)} (--download fetches it)"


@register_dataset(
    "cifar10",
    num_classes=10,
    class_names=CIFAR10_CLASSES,
    native_size=32,
    channels=3,
    source=f"torchvision layout ({CIFAR10_DIR}) under --data-root, or --download",
    locate=locate_cifar10,
)
def load_cifar10(normal_class: int = 0, data_root: str | None = None, download: bool = False) -> OneClassData:
    """One CIFAR-10 class as normal; images (N,3,32,32) float32 in [0,1]."""
    return _load("cifar10", normal_class, data_root, download, CIFAR10_DIR, CIFAR10_TRAIN,
                 CIFAR10_TEST, "labels", 10, CIFAR10_CLASSES, "CIFAR10")  # fmt: skip


@register_dataset(
    "cifar100",
    num_classes=20,
    class_names=CIFAR100_SUPERCLASSES,
    native_size=32,
    channels=3,
    source=f"torchvision layout ({CIFAR100_DIR}, coarse_labels = 20 superclasses) under --data-root, "
    "or --download",
    locate=locate_cifar100,
)
def load_cifar100(
    normal_class: int = 0, data_root: str | None = None, download: bool = False
) -> OneClassData:
    """One CIFAR-100 superclass as normal; images (N,3,32,32) float32 in [0,1]."""
    return _load("cifar100", normal_class, data_root, download, CIFAR100_DIR, ("train",), ("test",),
                 "coarse_labels", 20, CIFAR100_SUPERCLASSES, "CIFAR100")  # fmt: skip
