"""``isic2018``: ISIC 2018 Task 3 (Codella et al. 2019; Tschandl et al., HAM10000) as one-class AD.

The files as the ISIC challenge distributes them (docs/DATASETS.md)::

    ISIC2018_Task3_Training_Input/ISIC_<id>.jpg
    ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
    ISIC2018_Task3_Test_Input/ and ISIC2018_Task3_Test_GroundTruth/...Test_GroundTruth.csv
    ISIC2018_Task3_Validation_Input/ and ..._Validation_GroundTruth/...Validation_GroundTruth.csv

Each ground-truth CSV has the columns ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``,
one-hot (``1.0`` in the image's diagnosis). One class, ``NV`` (benign
melanocytic nevus), is normal: train on the NV images of the training split;
test on the whole test split (``test_split: test``, 1,512 images, the
default) or validation split (``test_split: validation``, 193 images), label 0
for NV and 1 for the six other diagnoses. ``<root>`` is ``--data-root`` itself
or its ``ISIC2018``, ``isic2018``, ``ISIC`` or ``isic`` sub-folder. The
600×450 JPEGs are resized (stretched) to a square ``image_size`` and cached.
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

DIAGNOSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
NORMAL = "NV"
SUBDIRS = ("", "ISIC2018", "isic2018", "ISIC", "isic")
SPLIT_NAMES = {"train": "Training", "test": "Test", "validation": "Validation"}
LAYOUT = (
    "ISIC2018_Task3_<Training|Test|Validation>_Input/<image>.jpg with "
    "ISIC2018_Task3_<split>_GroundTruth/ISIC2018_Task3_<split>_GroundTruth.csv"
)
SOURCE = (
    "ISIC 2018 cannot be downloaded automatically (the ISIC archive's CC BY-NC terms ask users to "
    "fetch it themselves); get the Task 3 input and ground-truth zips from "
    "https://challenge.isic-archive.com/data/#2018, unpack them and pass --data-root"
)
DEFAULT_IMAGE_SIZE = 224


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(input folder, ground-truth CSV) of ``train``, ``test`` or ``validation``."""
    name = SPLIT_NAMES[split]
    gt = f"ISIC2018_Task3_{name}_GroundTruth"
    return root / f"ISIC2018_Task3_{name}_Input", root / gt / f"{gt}.csv"


def find_root(data_root: str | None) -> Path | None:
    for d in search_dirs(data_root, SUBDIRS):
        if split_paths(d, "train")[0].is_dir():
            return d
    return None


def read_ground_truth(root: Path, split: str) -> tuple[list[Path], list[str]]:
    """The images of one split and their diagnoses, in the CSV's order."""
    folder, path = split_paths(root, split)
    if not path.is_file():
        raise UserError(f"the ground-truth file {path} is missing; isic2018 needs {LAYOUT} ({SOURCE})")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read the ISIC ground-truth file {path} ({exc}); unpack it again") from exc
    columns = ("image", *DIAGNOSES)
    if not rows or any(c not in rows[0] for c in columns):
        raise UserError(
            f"{path} does not have the columns {', '.join(columns)}; use the ISIC 2018 Task 3 file"
        )
    files, diagnoses = [], []
    for line, row in enumerate(rows, start=2):
        try:
            values = [float(row[d]) for d in DIAGNOSES]
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path} line {line}: the diagnosis columns must be numbers ({exc})") from exc
        if sorted(values) != [0.0] * (len(DIAGNOSES) - 1) + [1.0]:
            raise UserError(f"{path} line {line}: exactly one diagnosis must be 1, got {values}")
        image = folder / f"{(row['image'] or '').strip()}.jpg"
        if not image.is_file():
            raise UserError(f"{image} (named in {path} line {line}) is missing; unpack {folder.name} again")
        files.append(image)
        diagnoses.append(DIAGNOSES[values.index(1.0)])
    return files, diagnoses


def locate_isic2018(data_root: str | None) -> tuple[bool, str]:
    root = find_root(data_root)
    if root is None:
        return False, f"looked in {looked_in(search_dirs(data_root, SUBDIRS))} for {LAYOUT}"
    have = [s for s in SPLIT_NAMES if all(p.exists() for p in split_paths(root, s))]
    found = "train" in have and "test" in have
    return found, f"{root}: splits with images and ground truth: {', '.join(have) or 'none'}"


@register_dataset(
    "isic2018",
    num_classes=1,
    class_names=[NORMAL],
    native_size=DEFAULT_IMAGE_SIZE,
    stored_as="600×450 JPEG, resized to image_size (default 224) on load",
    channels=3,
    source="ISIC 2018 Task 3 input folders and ground-truth CSVs under --data-root (no automatic download)",
    locate=locate_isic2018,
)
def load_isic2018(
    normal_class: int | str = 0,
    data_root: str | None = None,
    download: bool = False,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    mode: str = "auto",
    test_split: str = "test",
) -> OneClassData:
    """NV as normal; images (N,3,s,s) in [0,1], test labels 0 (NV) / 1 (other diagnoses)."""
    check_class("isic2018", class_index("isic2018", normal_class, [NORMAL]), 1)
    check_image_size(image_size)
    if test_split not in ("test", "validation"):
        raise UserError(f"isic2018: test_split must be test or validation, got {test_split!r}")
    root = find_root(data_root)
    if root is None:
        fix = SOURCE if download else "unpack ISIC 2018 Task 3 there or pass --data-root"
        raise UserError(
            f"ISIC 2018 not found: looked in {looked_in(search_dirs(data_root, SUBDIRS))} for {LAYOUT}; {fix}"
        )
    train_all, train_diag = read_ground_truth(root, "train")
    train_files = [f for f, d in zip(train_all, train_diag) if d == NORMAL]
    if not train_files:
        raise UserError(f"{split_paths(root, 'train')[1]} lists no NV images to train on")
    test_files, test_diag = read_ground_truth(root, test_split)
    labels = np.array([d != NORMAL for d in test_diag], dtype=np.int64)
    if len(labels) == 0 or labels.min() == labels.max():
        raise UserError(f"{split_paths(root, test_split)[1]} needs both NV and other diagnoses")
    data = one_class_tree(
        "isic2018", 0, NORMAL, train_files, test_files, labels, image_size, mode, source=root
    )
    data.info.update(test_split=test_split, test_diagnoses=test_diag)
    return data
