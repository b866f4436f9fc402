"""``cityscapes``: the Cityscapes in-distribution / out-of-distribution image split of the AD literature.

Not the raw Cityscapes release, but the export the paper's authors made from it
(docs/DATASETS.md): frames already sorted (thresholded when the export was
made) into two folders::

    ID/**/*.png     in-distribution frames (normal)
    OOD/**/*.png    out-of-distribution frames (anomalous)

One class, ``ID``. The ID frames are split once into 70 % train and 30 % test
with a fixed seed (``SPLIT_SEED``, independent of the run seed, so every
method and run sees the same split); every OOD frame is a test anomaly. Test
order: the ID test frames (label 0), then the OOD frames (label 1), each sorted
by path. ``<root>`` is ``--data-root`` itself or its ``cityscapes``,
``Cityscapes`` or ``cityscapes_ad`` sub-folder. Frames are resized
(stretched) to a square ``image_size`` and cached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustad.datasets.base import (
    OneClassData,
    check_class,
    class_index,
    first_root_with,
    looked_in,
    search_dirs,
)
from robustad.datasets.images import check_image_size, list_images_tree, one_class_tree
from robustad.errors import UserError
from robustad.registry import register_dataset

SUBDIRS = ("", "cityscapes", "Cityscapes", "cityscapes_ad")
ID, OOD = "ID", "OOD"
SPLIT_SEED = 0
TRAIN_FRACTION = 0.7
LAYOUT = f"{ID}/**/*.png (in-distribution) and {OOD}/**/*.png (out-of-distribution)"
SOURCE = (
    "the Cityscapes ID/OOD export cannot be downloaded automatically (Cityscapes' licence needs a "
    "registered account at https://www.cityscapes-dataset.com and forbids redistribution); get the "
    "export from the paper's authors as described in docs/DATASETS.md, unpack it and pass --data-root"
)
DEFAULT_IMAGE_SIZE = 224


def find_root(data_root: str | None) -> Path | None:
    return first_root_with(data_root, SUBDIRS, ID, OOD)


def split_id(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """The seeded 70/30 split of the ID frames: (train, test), each in path order."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    n_train = min(max(1, round(TRAIN_FRACTION * len(files))), len(files) - 1)
    return [files[i] for i in sorted(perm[:n_train])], [files[i] for i in sorted(perm[n_train:])]


def _frames(folder: Path, least: int) -> list[Path]:
    files = list_images_tree(folder)
    if len(files) < least:
        raise UserError(
            f"{folder} holds {len(files)} images; cityscapes needs at least {least} there ({LAYOUT})"
        )
    return files


def locate_cityscapes(data_root: str | None) -> tuple[bool, str]:
    root = find_root(data_root)
    if root is None:
        return False, f"looked in {looked_in(search_dirs(data_root, SUBDIRS))} for {ID}/ and {OOD}/"
    return True, f"{root}: {ID}/ and {OOD}/"


@register_dataset(
    "cityscapes",
    num_classes=1,
    class_names=[ID],
    native_size=DEFAULT_IMAGE_SIZE,
    stored_as="the export's frames (Cityscapes: 2048×1024 PNG), resized to image_size (default 224)",
    channels=3,
    source="the ID/ and OOD/ folders of the paper's Cityscapes export under --data-root (no download)",
    locate=locate_cityscapes,
)
def load_cityscapes(
    normal_class: int | str = 0,
    data_root: str | None = None,
    download: bool = False,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    mode: str = "auto",
) -> OneClassData:
    """ID as normal; images (N,C,s,s) in [0,1], test labels 0 (ID) / 1 (OOD)."""
    check_class("cityscapes", class_index("cityscapes", normal_class, [ID]), 1)
    check_image_size(image_size)
    root = find_root(data_root)
    if root is None:
        fix = SOURCE if download else "unpack the export there or pass --data-root"
        raise UserError(
            f"the Cityscapes ID/OOD export was not found: looked in "
            f"{looked_in(search_dirs(data_root, SUBDIRS))} for {LAYOUT}; {fix}"
        )
    train_files, id_test = split_id(_frames(root / ID, least=2))
    ood = _frames(root / OOD, least=1)
    test_files = id_test + ood
    labels = np.array([0] * len(id_test) + [1] * len(ood), dtype=np.int64)
    data = one_class_tree("cityscapes", 0, ID, train_files, test_files, labels, image_size, mode, source=root)
    n = len(train_files)
    data.info["split"] = f"{ID}: {n} train / {len(id_test)} test (seed {SPLIT_SEED}); {OOD}: {len(ood)} test"
    return data
