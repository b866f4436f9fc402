"""``OneClassData`` and the one-class protocol helpers shared by every loader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from robustad.errors import UserError

T = TypeVar("T")


@dataclass
class OneClassData:
    """One normal class of a dataset under the one-class protocol (docs/DATASETS.md).

    ``train_x``: (N,C,H,W) float32 in [0,1], normal images only.
    ``test_x``: (M,C,H,W) float32 in [0,1]; ``test_y``: (M,) int64, 0 normal / 1 anomaly.
    ``test_masks``: (M,H,W) float32 pixel labels or None.
    """

    name: str
    normal_class: int
    train_x: Tensor
    test_x: Tensor
    test_y: Tensor
    test_masks: Tensor | None = None
    class_name: str = ""
    info: dict = field(default_factory=dict)

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.train_x.shape[-2:])

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    def __repr__(self) -> str:
        n_anom = int(self.test_y.sum())
        return (
            f"OneClassData({self.name!r}, normal_class={self.normal_class}, "
            f"train={tuple(self.train_x.shape)}, test={tuple(self.test_x.shape)} "
            f"({len(self.test_y) - n_anom} normal / {n_anom} anomalous))"
        )


def one_class_split(
    name: str,
    normal_class: int,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    class_names: list[str] | None = None,
) -> OneClassData:
    """Apply the protocol: train on the normal class only, test on the whole test split.

    Images are uint8 (N,H,W) or (N,H,W,C) or float in [0,1] (N,C,H,W).
    """
    train_x = to_float_nchw(train_images[train_labels == normal_class])
    if len(train_x) == 0:
        raise UserError(f"{name}: class {normal_class} has no training images")
    test_x = to_float_nchw(test_images)
    test_y = torch.from_numpy((np.asarray(test_labels) != normal_class).astype(np.int64))
    return OneClassData(
        name=name,
        normal_class=int(normal_class),
        train_x=train_x,
        test_x=test_x,
        test_y=test_y,
        class_name=class_names[normal_class] if class_names else str(normal_class),
    )


def test_subset(data: OneClassData, n: int, seed: int = 0) -> OneClassData:
    """A seeded test subset of ``n`` images, half normal and half anomalous.

    For CPU measurements where attacking the whole test split does not fit (e.g.
    Fashion-MNIST: 10,000 images × K groups × attack steps). Balanced rather than
    proportional because AUROC's variance is smallest with equal classes; anomalies are
    drawn uniformly from all anomalous images. When one side has fewer than n/2
    images the other side fills the rest. The training split is untouched.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise UserError(f"test_subset must be an integer of at least 2 (got {n!r})")
    if n >= len(data.test_y):
        return data
    g = torch.Generator().manual_seed(seed)
    normal = torch.nonzero(data.test_y == 0).squeeze(1)
    anomalous = torch.nonzero(data.test_y == 1).squeeze(1)
    n_normal = min(len(normal), max(n // 2, n - len(anomalous)))
    idx = torch.cat(
        [
            normal[torch.randperm(len(normal), generator=g)[:n_normal]],
            anomalous[torch.randperm(len(anomalous), generator=g)[: n - n_normal]],
        ]
    )
    idx = idx.sort().values
    info = {**data.info, "test_subset": f"{n} of {len(data.test_y)} test images, seed {seed}"}
    return OneClassData(
        name=data.name,
        normal_class=data.normal_class,
        train_x=data.train_x,
        test_x=data.test_x[idx],
        test_y=data.test_y[idx],
        test_masks=None if data.test_masks is None else data.test_masks[idx],
        class_name=data.class_name,
        info=info,
    )


def to_float_nchw(images: np.ndarray) -> Tensor:
    """uint8 (N,H,W[,C]) → float32 (N,C,H,W) in [0,1]; float arrays are taken as NCHW."""
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        if arr.ndim == 3:
            arr = arr[:, None]
        elif arr.ndim == 4:
            arr = arr.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)
    t = torch.as_tensor(arr, dtype=torch.float32)
    if t.dim() == 3:
        t = t[:, None]
    return t.contiguous()


def check_class(name: str, normal_class: int, num_classes: int) -> None:
    if not (isinstance(normal_class, int) and 0 <= normal_class < num_classes):
        raise UserError(
            f"{name} has classes 0..{num_classes - 1}; normal class {normal_class!r} is out of range"
        )


# Where datasets are looked for without --data-root, and where --download puts them.
DEFAULT_DATA_ROOT = Path.home() / ".cache" / "robustad"


def search_dirs(data_root: str | None, subdirs: tuple[str, ...]) -> list[Path]:
    """``data_root/sub`` for each ``sub`` (``""`` is the root itself); the default root if none."""
    root = Path(data_root).expanduser() if data_root else DEFAULT_DATA_ROOT
    return [root / s if s else root for s in subdirs]


def first_root_with(data_root: str | None, subdirs: tuple[str, ...], *folders: str) -> Path | None:
    """The first of :func:`search_dirs` that holds every one of ``folders``, or None."""
    for d in search_dirs(data_root, subdirs):
        if all((d / f).is_dir() for f in folders):
            return d
    return None


def find_or_fetch(find: Callable[[], T | None], fetch: Callable[[], object], download: bool,
                  not_found: Callable[[], str]) -> T:  # fmt: skip
    """The array datasets' first step: what ``find()`` finds; if nothing and ``download``,
    ``fetch()`` first and look again; if still nothing, a UserError saying ``not_found()``
    (the folders searched and the fix). Nothing is fetched without ``download``."""
    found = find()
    if found is None and download:
        fetch()
        found = find()
    if found is None:
        raise UserError(not_found())
    return found


def torchvision_download(name: str, root: Path, dataset_class: Callable, *splits: dict) -> None:
    """``dataset_class(root, download=True, **split)`` for each split (torchvision's
    downloaders); any failure (network errors come in many types) is one UserError
    naming the dataset and the folder."""
    try:
        for split in splits:
            dataset_class(str(root), download=True, **split)
    except Exception as exc:
        raise UserError(
            f"downloading {name} into {root} failed ({exc}); check the network or copy the files there"
        ) from exc


def class_index(name: str, normal_class: int | str, class_names: list[str]) -> int:
    """A normal class given as an index or as one of ``class_names`` → its index."""
    if isinstance(normal_class, str) and not normal_class.lstrip("-").isdigit():
        if normal_class not in class_names:
            raise UserError(
                f"{name} has no class {normal_class!r}; valid: {', '.join(class_names)} "
                f"(or indices 0..{len(class_names) - 1})"
            )
        return class_names.index(normal_class)
    return int(normal_class)


def looked_in(dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


def file_signature(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of each file: a cache key that changes when a file is replaced."""
    out = []
    for f in files:
        st = Path(f).stat()
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(out)
