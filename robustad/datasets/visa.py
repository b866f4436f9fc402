"""``visa``: the Visual Anomaly dataset (Zou et al., ECCV 2022) with its one-class split.

The split is read from ``<root>/split_csv/1cls.csv`` (columns ``object, split,
label, image, mask``; paths relative to ``<root>``), as shipped by the VisA
repository: training rows are normal images of one object, test rows are
labelled ``normal`` or ``anomaly`` and anomalies name their mask. ``<root>`` is
``--data-root`` itself or its ``VisA`` / ``visa`` sub-folder. The 12 objects are
the classes (alphabetical index, or the name). Images (about 1500×1000 JPEG)
are resized to a square ``image_size`` on load and cached; masks are resized
nearest-neighbour and are all zero for normal images.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from robustad.datasets.base import (
    OneClassData,
    check_class,
    class_index,
    looked_in,
    search_dirs,
)
from robustad.datasets.images import check_image_size, one_class_tree
from robustad.errors import UserError
from robustad.registry import register_dataset

OBJECTS = [
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
]  # fmt: skip
SUBDIRS = ("", "VisA", "visa", "VisA_20220922")
SPLIT_FILE = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
DEFAULT_IMAGE_SIZE = 224


def find_root(data_root: str | None) -> Path | None:
    for d in search_dirs(data_root, SUBDIRS):
        if (d / SPLIT_FILE).is_file():
            return d
    return None


def read_split(root: Path, obj: str) -> tuple[list[Path], list[Path], np.ndarray, list[Path | None]]:
    """Rows of ``obj`` in the split file: train files, test files, test labels, test masks."""
    path = root / SPLIT_FILE
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read the VisA split file {path} ({exc}); fetch split_csv/ again") from exc
    if not rows or any(c not in rows[0] for c in COLUMNS):
        raise UserError(
            f"{path} does not have the columns {', '.join(COLUMNS)}; use the 1cls.csv of the VisA repository"
        )
    train, test, labels, masks = [], [], [], []
    for line, row in enumerate(rows, start=2):
        if row["object"] != obj:
            continue
        label = (row["label"] or "").strip()
        if label not in ("normal", "anomaly"):
            raise UserError(f"{path} line {line}: label {label!r} is neither normal nor anomaly")
        rel = (row["image"] or "").strip()
        image = root / rel
        if not rel or not image.is_file():
            raise UserError(f"{image} (named in {path} line {line}) is missing; extract the full VisA tree")
        split = (row["split"] or "").strip()
        if split == "train":
            if label == "normal":  # the protocol trains on normal images only
                train.append(image)
        elif split == "test":
            test.append(image)
            labels.append(int(label == "anomaly"))
            mask = (row["mask"] or "").strip()
            if label == "anomaly":
                if not mask or not (root / mask).is_file():
                    raise UserError(
                        f"the mask {root / mask if mask else '(none)'} of {image} ({path} line {line}) is "
                        "missing; extract the full VisA tree"
                    )
                masks.append(root / mask)
            else:
                masks.append(None)
        else:
            raise UserError(f"{path} line {line}: split {split!r} is neither train nor test")
    for what, files in (("training", train), ("test", test)):
        if not files:
            raise UserError(f"{path} lists no {what} images for {obj!r}; use the 1cls.csv of VisA")
    y = np.array(labels, dtype=np.int64)
    if y.min() == y.max():
        raise UserError(f"{path} lists only one kind of test image for {obj!r}; the test split needs both")
    return train, test, y, masks


def locate_visa(data_root: str | None) -> tuple[bool, str]:
    root = find_root(data_root)
    if root is None:
        return False, f"looked in {looked_in(search_dirs(data_root, SUBDIRS))} for {SPLIT_FILE}"
    n = sum((root / o).is_dir() for o in OBJECTS)
    return n == len(OBJECTS), f"{root}: {SPLIT_FILE} and {n}/{len(OBJECTS)} object folders"


@register_dataset(
    "visa",
    num_classes=len(OBJECTS),
    class_names=OBJECTS,
    native_size=DEFAULT_IMAGE_SIZE,
    stored_as="about 1500×1000 px JPEG, resized to image_size (default 224) on load",
    channels=3,
    source="VisA tree with split_csv/1cls.csv under --data-root (no automatic download)",
    locate=locate_visa,
)
def load_visa(
    normal_class: int | str = 0,
    data_root: str | None = None,
    download: bool = False,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    mode: str = "auto",
) -> OneClassData:
    """One VisA object as normal class; images (N,C,s,s) in [0,1], masks (M,s,s) of 0/1."""
    index = class_index("visa", normal_class, OBJECTS)
    check_class("visa", index, len(OBJECTS))
    check_image_size(image_size)
    root = find_root(data_root)
    if root is None:
        raise UserError(
            f"VisA not found: looked in {looked_in(search_dirs(data_root, SUBDIRS))} for {SPLIT_FILE} "
            "next to the object folders; download VisA_20220922.tar and split_csv/1cls.csv from "
            "https://github.com/amazon-science/spot-diff, unpack them there or pass --data-root"
        )
    obj = OBJECTS[index]
    train_files, test_files, labels, mask_files = read_split(root, obj)
    return one_class_tree("visa", index, obj, train_files, test_files, labels, image_size, mode,
                          source=root, test_mask_files=mask_files)  # fmt: skip
