"""``imagenet30``: ImageNet-30 (Hendrycks et al., NeurIPS 2019), one class against the other 29.

The split as distributed for the CSI-style one-class experiments (docs/DATASETS.md)::

    one_class_train/<class>/**/*.JPEG    1,300 training images per class
    one_class_test/<class>/**/*.JPEG     100 test images per class

The class folders may hold their images directly or in sub-folders (the
archives nest them; ``torchvision.datasets.ImageFolder`` reads them the same
way). ``<root>`` is ``--data-root`` itself or its ``ImageNet30``,
``imagenet30``, ``ImageNet-30`` or ``imagenet-30`` sub-folder. The classes are
the 30 folder names below (alphabetical index, or the name). One class is
normal: training on its training images, testing on the whole test split,
label 0 for its own test images and 1 for the other 29 classes'.

Both splits get the ImageNet test transform: the shorter side to
``image_size``·256/224 (256 at the default 224) and the centre square, then
cached like the other image trees; images are converted to RGB (ImageNet has
a few grey and CMYK JPEGs).
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

CLASSES = [
    "acorn", "airliner", "ambulance", "american_alligator", "banjo", "barn", "bikini",
    "digital_clock", "dragonfly", "dumbbell", "forklift", "goblet", "grand_piano", "hotdog",
    "hourglass", "manhole_cover", "mosque", "nail", "parking_meter", "pillow", "revolver",
    "rotary_dial_telephone", "schooner", "snowmobile", "soccer_ball", "stingray", "strawberry",
    "tank", "toaster", "volcano",
]  # fmt: skip
SUBDIRS = ("", "ImageNet30", "imagenet30", "ImageNet-30", "imagenet-30")
TRAIN, TEST = "one_class_train", "one_class_test"
LAYOUT = f"{TRAIN}/<class>/**/*.JPEG and {TEST}/<class>/**/*.JPEG for the 30 ImageNet-30 classes"
SOURCE = (
    "ImageNet-30 cannot be downloaded automatically (ImageNet's terms of access); get the "
    "ImageNet-30 train and test archives linked from https://github.com/hendrycks/ss-ood, "
    "unpack them and pass --data-root"
)
DEFAULT_IMAGE_SIZE = 224


def find_root(data_root: str | None) -> Path | None:
    return first_root_with(data_root, SUBDIRS, TRAIN, TEST)


def class_images(folder: Path) -> list[Path]:
    """The images below one class folder; a missing or empty folder is a UserError."""
    if not folder.is_dir():
        raise UserError(f"{folder} is missing: imagenet30 needs {LAYOUT}")
    files = list_images_tree(folder)
    if not files:
        raise UserError(f"{folder} holds no images (.JPEG/.png); every class folder needs at least one")
    return files


def locate_imagenet30(data_root: str | None) -> tuple[bool, str]:
    root = find_root(data_root)
    if root is None:
        return False, f"looked in {looked_in(search_dirs(data_root, SUBDIRS))} for {TRAIN}/ and {TEST}/"
    n = sum((root / TRAIN / c).is_dir() and (root / TEST / c).is_dir() for c in CLASSES)
    return n == len(CLASSES), f"{root}: {n}/{len(CLASSES)} classes in {TRAIN}/ and {TEST}/"


@register_dataset(
    "imagenet30",
    num_classes=len(CLASSES),
    class_names=CLASSES,
    native_size=DEFAULT_IMAGE_SIZE,
    stored_as="ImageNet JPEGs; shorter side to 256/224·image_size, centre crop image_size (default 224)",
    channels=3,
    source="one_class_train/ and one_class_test/ under --data-root (no automatic download)",
    locate=locate_imagenet30,
)
def load_imagenet30(
    normal_class: int | str = 0,
    data_root: str | None = None,
    download: bool = False,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    mode: str = "RGB",
) -> OneClassData:
    """One ImageNet-30 class as normal; images (N,3,s,s) in [0,1], test labels 0/1."""
    index = class_index("imagenet30", normal_class, CLASSES)
    check_class("imagenet30", index, len(CLASSES))
    check_image_size(image_size)
    root = find_root(data_root)
    if root is None:
        fix = SOURCE if download else "unpack ImageNet-30 there or pass --data-root"
        dirs = looked_in(search_dirs(data_root, SUBDIRS))
        raise UserError(f"ImageNet-30 not found: looked in {dirs} for {LAYOUT}; {fix}")
    normal = CLASSES[index]
    train_files = class_images(root / TRAIN / normal)
    test_files: list[Path] = []
    test_classes: list[str] = []
    for name in CLASSES:
        files = class_images(root / TEST / name)
        test_files += files
        test_classes += [name] * len(files)
    # Two cache entries (split_cache): the test split is the same for every normal class,
    # so it is decoded once.
    labels = np.array([c != normal for c in test_classes], dtype=np.int64)
    data = one_class_tree("imagenet30", index, normal, train_files, test_files, labels, image_size, mode,
                          source=root, resize="crop", split_cache=True)  # fmt: skip
    data.info["test_classes"] = test_classes
    return data
