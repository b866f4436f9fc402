"""``imagefolder``: a folder of class folders; one class is normal, all others anomalous.

Two layouts under ``--data-root`` are understood:

- split given (ImageNet-30 / ISIC style)::

      train/<class>/*.jpg   (or one_class_train/)
      test/<class>/*.jpg    (or one_class_test/)

  the classes are the folders of ``train/`` (sorted); test folders whose name is
  the normal class are label 0, every other test folder label 1 (a test folder
  need not exist in ``train/``, e.g. ISIC's disease classes).
- no split::

      <class>/*.jpg

  each class folder is split once into train and test with a fixed seed
  (``test_fraction`` of each class to test, at least one image), independent of
  the run seed so every method sees the same split.

Images are resized to a square ``image_size`` on load and cached (the test
split is shared by every normal class, so it is decoded once).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustad.datasets.base import OneClassData, class_index
from robustad.datasets.images import check_image_size, list_images, one_class_tree
from robustad.errors import UserError
from robustad.registry import register_dataset

SPLIT_SEED = 0
TRAIN_NAMES = ("train", "one_class_train")
TEST_NAMES = ("test", "one_class_test")
LAYOUT = "<class>/*.jpg, or train/<class>/*.jpg with test/<class>/*.jpg"
DEFAULT_IMAGE_SIZE = 224


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _images(folder: Path) -> list[Path]:
    files = list_images(folder)
    if not files:
        raise UserError(f"{folder} holds no images (.png/.jpg); every class folder needs at least one")
    return files


def _split_dirs(root: Path) -> tuple[Path, Path] | None:
    train = next((root / n for n in TRAIN_NAMES if (root / n).is_dir()), None)
    test = next((root / n for n in TEST_NAMES if (root / n).is_dir()), None)
    if (train is None) != (test is None):
        raise UserError(
            f"{root} has {'a train' if train else 'a test'} folder but no "
            f"{'test' if train else 'train'} folder; give both, or only class folders ({LAYOUT})"
        )
    return None if train is None else (train, test)


def list_split(
    root: Path, normal_class: int | str, test_fraction: float
) -> tuple[int, list[str], list[Path], list[Path], np.ndarray]:
    """Class index, class names, training files of the normal class, test files and labels."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; the imagefolder dataset needs {LAYOUT} under --data-root")
    split = _split_dirs(root)
    classes = _class_dirs(split[0] if split else root)
    if not classes:
        raise UserError(f"{split[0] if split else root} has no class folders; expected {LAYOUT}")
    names = list(classes)
    index = class_index("imagefolder", normal_class, names)
    if not 0 <= index < len(names):
        raise UserError(f"imagefolder has classes 0..{len(names) - 1} ({', '.join(names)}); got {index}")
    normal = names[index]
    if split:
        train_files = _images(classes[normal])
        test_classes = _class_dirs(split[1])
        if normal not in test_classes:
            raise UserError(f"{split[1] / normal} is missing: the test split needs the normal class")
        test_files, labels = [], []
        for name, folder in test_classes.items():
            files = _images(folder)
            test_files += files
            labels += [int(name != normal)] * len(files)
        if len(test_classes) < 2:
            raise UserError(f"{split[1]} has only the normal class; the test split needs anomalous classes")
    else:
        if len(names) < 2:
            raise UserError(f"{root} has one class folder; imagefolder needs at least two ({LAYOUT})")
        rng = np.random.default_rng(SPLIT_SEED)
        train_files, test_files, labels = [], [], []
        for name in names:
            files = _images(classes[name])
            if name == normal and len(files) < 2:
                raise UserError(
                    f"{classes[name]} has one image; the normal class needs one to train and test"
                )
            perm = rng.permutation(len(files))
            n_test = min(max(1, round(test_fraction * len(files))), len(files) - (name == normal))
            test_files += [files[i] for i in sorted(perm[:n_test])]
            labels += [int(name != normal)] * n_test
            if name == normal:
                train_files = [files[i] for i in sorted(perm[n_test:])]
    return index, names, train_files, test_files, np.array(labels, dtype=np.int64)


def locate_imagefolder(data_root: str | None) -> tuple[bool, str]:
    if not data_root:
        return False, f"the tree given by --data-root ({LAYOUT})"
    root = Path(data_root).expanduser()
    if not root.is_dir():
        return False, f"{root} ({LAYOUT})"
    try:
        split = _split_dirs(root)
    except UserError:
        return False, f"{root}: train/ and test/ do not pair up"
    n = len(_class_dirs(split[0] if split else root))
    return n >= 2 or (split is not None and n >= 1), f"{root}: {n} class folders"


@register_dataset(
    "imagefolder",
    num_classes=None,
    native_size=DEFAULT_IMAGE_SIZE,
    stored_as="any size, resized to image_size (default 224) on load",
    channels="1 or 3, as stored",
    source="class folders under --data-root (classes are the sorted folder names)",
    locate=locate_imagefolder,
)
def load_imagefolder(
    normal_class: int | str = 0,
    data_root: str | None = None,
    download: bool = False,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    mode: str = "auto",
    test_fraction: float = 0.2,
) -> OneClassData:
    """One class folder as normal; images (N,C,s,s) in [0,1], test labels 0/1."""
    check_image_size(image_size)
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    if not data_root:
        raise UserError(f"the imagefolder dataset reads the tree given by --data-root; pass one ({LAYOUT})")
    root = Path(data_root).expanduser()
    index, names, train_files, test_files, labels = list_split(root, normal_class, test_fraction)
    data = one_class_tree("imagefolder", index, names[index], train_files, test_files, labels, image_size,
                          mode, source=root, split_cache=True)  # fmt: skip
    data.info["classes"] = names
    return data
