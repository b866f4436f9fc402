"""``mvtec`` (MVTec AD, Bergmann et al., CVPR 2019) and ``folder`` (any MVTec-like tree).

Layout of one category (docs/DATASETS.md)::

    <category>/train/good/*.png                    training images (normal only)
    <category>/test/good/*.png                     test label 0
    <category>/test/<defect>/*.png                 test label 1
    <category>/ground_truth/<defect>/<name>_mask.png   pixel labels of test/<defect>/<name>.png

``mvtec`` has the 15 categories below as classes (index = position in the
alphabetical list, or give the name: ``--classes bottle``); the category folders
are looked for in ``--data-root`` itself or in its ``mvtec_anomaly_detection``,
``mvtec_ad``, ``mvtec`` or ``MVTec-AD`` sub-folder. ``folder`` has one class: the
tree given by ``--data-root`` is the category folder; ``ground_truth`` is optional
for it (no masks then). Images are resized once to ``image_size`` and cached
(``robustad.datasets.images``); masks are resized nearest-neighbour and are all
zero for good images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustad.datasets.base import (
    DEFAULT_DATA_ROOT,
    OneClassData,
    check_class,
    class_index,
    looked_in,
    search_dirs,
)
from robustad.datasets.images import check_image_size, list_images, one_class_tree
from robustad.errors import UserError
from robustad.registry import register_dataset

CATEGORIES = [
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
]  # fmt: skip
SUBDIRS = ("", "mvtec_anomaly_detection", "mvtec_ad", "mvtec", "MVTec-AD")
LAYOUT = (
    "<category>/train/good/*.png, <category>/test/<good|defect>/*.png and "
    "<category>/ground_truth/<defect>/<name>_mask.png"
)
DEFAULT_IMAGE_SIZE = 224


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _need_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise UserError(f"{path} is missing: {what} needs the layout {LAYOUT}")


def _need_images(folder: Path) -> list[Path]:
    files = list_images(folder)
    if not files:
        raise UserError(f"{folder} holds no images (.png/.jpg); every class folder needs at least one")
    return files


def read_tree(
    name: str, category_dir: Path, masks: str
) -> tuple[list[Path], list[Path], np.ndarray, list[Path | None] | None, list[str]]:
    """List one MVTec-like category's files.

    ``masks``: ``required`` (every defect image needs its mask), ``optional``
    (masks if ``ground_truth/`` exists, else none).
    Returns the training files, the test files, test labels (M,) int64, the mask
    file of each test image (None for good ones) or None, and the defect folder of
    each test image.
    """
    _need_dir(category_dir, name)
    _need_dir(category_dir / "train" / "good", name)
    _need_dir(category_dir / "test", name)
    train_files = _need_images(category_dir / "train" / "good")
    test_files: list[Path] = []
    defects: list[str] = []
    for folder in _subfolders(category_dir / "test"):
        files = _need_images(folder)
        test_files += files
        defects += [folder.name] * len(files)
    labels = np.array([d != "good" for d in defects], dtype=np.int64)
    if "good" not in defects:
        raise UserError(f"{category_dir / 'test' / 'good'} is missing: {name} needs the layout {LAYOUT}")
    if labels.sum() == 0:
        raise UserError(
            f"{category_dir / 'test'} has no defect folders besides good; the test split needs "
            f"anomalous images in test/<defect>/ (layout {LAYOUT})"
        )
    gt = category_dir / "ground_truth"
    mask_files: list[Path | None] | None = None
    if masks == "required" or gt.is_dir():
        _need_dir(gt, name)
        mask_files = []
        for f, d in zip(test_files, defects):
            if d == "good":
                mask_files.append(None)
                continue
            m = gt / d / f"{f.stem}_mask.png"
            if not m.is_file():
                raise UserError(f"mask {m} is missing for {f}; {name} needs the layout {LAYOUT}")
            mask_files.append(m)
    return train_files, test_files, labels, mask_files, defects


def tree_data(
    name: str, normal_class: int, class_name: str, category_dir: Path, image_size, mode, masks
) -> OneClassData:
    train_files, test_files, labels, mask_files, defects = read_tree(name, category_dir, masks)
    data = one_class_tree(name, normal_class, class_name, train_files, test_files, labels, image_size, mode,
                          source=category_dir, test_mask_files=mask_files)  # fmt: skip
    data.info["test_defects"] = defects
    return data


def find_root(data_root: str | None, category: str) -> Path | None:
    for d in search_dirs(data_root, SUBDIRS):
        if (d / category).is_dir():
            return d
    return None


def locate_mvtec(data_root: str | None) -> tuple[bool, str]:
    """(found, where) for ``bench list``: how many of the 15 category folders exist."""
    best, count = None, 0
    for d in search_dirs(data_root, SUBDIRS):
        n = sum((d / c / "train" / "good").is_dir() for c in CATEGORIES)
        if n > count:
            best, count = d, n
    if best is None:
        return False, f"looked in {looked_in(search_dirs(data_root, SUBDIRS))} for <category>/train/good"
    return count == len(CATEGORIES), f"{best}: {count}/{len(CATEGORIES)} categories"


@register_dataset(
    "mvtec",
    num_classes=len(CATEGORIES),
    class_names=CATEGORIES,
    native_size=DEFAULT_IMAGE_SIZE,
    stored_as="700–1024 px PNG, resized to image_size (default 224) on load",
    channels="3 (grid, screw, zipper: 1)",
    source="MVTec AD tree under --data-root (no automatic download)",
    locate=locate_mvtec,
)
def load_mvtec(
    normal_class: int | str = 0,
    data_root: str | None = None,
    download: bool = False,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    mode: str = "auto",
) -> OneClassData:
    """One MVTec AD category as normal class; images (N,C,s,s) in [0,1], masks (M,s,s) of 0/1."""
    index = class_index("mvtec", normal_class, CATEGORIES)
    check_class("mvtec", index, len(CATEGORIES))
    check_image_size(image_size)
    category = CATEGORIES[index]
    root = find_root(data_root, category)
    if root is None:
        dirs = search_dirs(data_root, SUBDIRS)
        fix = (
            "MVTec AD cannot be downloaded automatically (its licence needs a form at "
            "https://www.mvtec.com/company/research/datasets/mvtec-ad); unpack it and pass --data-root"
            if download
            else "unpack MVTec AD there or pass --data-root"
        )
        raise UserError(
            f"MVTec AD category {category!r} not found: looked in {looked_in(dirs)} for {LAYOUT}; {fix}"
        )
    return tree_data("mvtec", index, category, root / category, image_size, mode, "required")


def locate_folder(data_root: str | None) -> tuple[bool, str]:
    if not data_root:
        return False, "the tree given by --data-root (train/good, test/good, test/<defect>)"
    root = Path(data_root).expanduser()
    found = (root / "train" / "good").is_dir() and (root / "test").is_dir()
    return found, f"{root} (train/good, test/good, test/<defect>)"


@register_dataset(
    "folder",
    num_classes=1,
    class_names=["good"],
    native_size=DEFAULT_IMAGE_SIZE,
    stored_as="any size, resized to image_size (default 224) on load",
    channels="1 or 3, as stored",
    source="an MVTec-like tree given by --data-root (ground_truth/ optional)",
    locate=locate_folder,
)
def load_folder(
    normal_class: int | str = 0,
    data_root: str | None = None,
    download: bool = False,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    mode: str = "auto",
) -> OneClassData:
    """The MVTec-like tree at ``data_root`` (one class); masks if it has ``ground_truth/``."""
    check_class("folder", class_index("folder", normal_class, ["good"]), 1)
    check_image_size(image_size)
    if not data_root:
        raise UserError(
            f"the folder dataset reads the tree given by --data-root; pass --data-root PATH with {LAYOUT} "
            "(the <category> folder is PATH itself)"
        )
    root = Path(data_root).expanduser()
    return tree_data("folder", 0, root.name, root, image_size, mode, "optional")


__all__ = ["CATEGORIES", "DEFAULT_DATA_ROOT", "load_folder", "load_mvtec", "read_tree"]
