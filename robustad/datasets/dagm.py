"""``dagm``: DAGM 2007 (Wieler & Hahn, the DAGM/GNNS 2007 competition), one texture class at a time.

Layout of one class, as released with its Train/Test split (docs/DATASETS.md)::

    Class<k>/Train/*.PNG                  512×512 grey images, defective or not
    Class<k>/Train/Label/Labels.txt       which images are defective
    Class<k>/Train/Label/<name>_label.PNG defect mask of a defective image
    Class<k>/Test/...                     the same for the test split

``Labels.txt`` may start with a line holding one number, then has one line per image,
whitespace-separated: ``<n> <defective 0|1> <image file> 0 [<label file>]``.
Lines of the original competition's ellipse form, ``<image number> <semi-major>
<semi-minor> <rotation (rad)> <x> <y>`` (centre in 1-based pixel coordinates),
are read too: such an image is defective and, when it has no label PNG, its
mask is that ellipse. An image the file does not list is defective when it has
a ``<name>_label.PNG``.

Protocol: each of the 10 classes in turn is normal. Train: the non-defective
``Train`` images of that class (defective training images are left out); test:
all ``Test`` images of the class, label 1 for defective ones, with their masks
(all zero for the others). ``<root>`` is ``--data-root`` itself or its ``DAGM``,
``DAGM2007``, ``DAGM_2007`` or ``DAGM_KaggleUpload`` sub-folder. Images are
resized to ``image_size`` and cached, masks nearest-neighbour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustad.datasets.base import (
    OneClassData,
    check_class,
    class_index,
    looked_in,
    search_dirs,
)
from robustad.datasets.images import check_image_size, image_size_of, list_images, one_class_tree
from robustad.errors import UserError
from robustad.registry import register_dataset

CLASSES = [f"Class{k}" for k in range(1, 11)]
SUBDIRS = ("", "DAGM", "DAGM2007", "DAGM_2007", "DAGM_KaggleUpload")
SPLITS = ("Train", "Test")
LABELS = Path("Label") / "Labels.txt"
LAYOUT = (
    "Class<k>/{Train,Test}/*.PNG with Class<k>/{Train,Test}/Label/Labels.txt and "
    "Label/<name>_label.PNG for the defective images"
)
SOURCE = (
    "DAGM 2007 cannot be downloaded automatically (its licence allows non-commercial research use "
    "after accepting its terms); get it from https://hci.iwr.uni-heidelberg.de/node/3616 "
    "(or its Kaggle copy), unpack it and pass --data-root"
)
DEFAULT_IMAGE_SIZE = 224


@dataclass
class Defect:
    """The label of one defective image: a mask file, an ellipse, or both (the file wins)."""

    mask: Path | None = None
    ellipse: tuple[float, float, float, float, float] | None = None  # a, b, angle, x, y


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_labels(split_dir: Path, files: list[Path]) -> dict[str, Defect]:
    """The defective images of one split folder: image file name → :class:`Defect`."""
    path = split_dir / LABELS
    if not path.is_file():
        raise UserError(
            f"the labels file {path} is missing; dagm needs {LAYOUT} (unpack the class folder again)"
        )
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the DAGM labels file {path} ({exc}); unpack it again") from exc
    by_name = {f.name: f for f in files}
    by_number = {int(f.stem): f for f in files if f.stem.isdigit()}
    defects: dict[str, Defect] = {}
    listed: set[str] = set()
    for i, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or (i == 1 and len(fields) == 1 and fields[0].isdigit()):
            continue  # blank, or the count/version line that opens the file
        numbers = [_number(f) for f in fields]
        if len(fields) == 6 and None not in numbers and float(numbers[0]).is_integer():
            image = by_number.get(int(numbers[0]))
            if image is None:
                raise UserError(f"{path} line {i}: no image number {fields[0]} in {split_dir}")
            a, b, angle, x, y = numbers[1:]
            if a <= 0 or b <= 0:
                raise UserError(f"{path} line {i}: the ellipse axes must be positive, got {a:g} and {b:g}")
            listed.add(image.name)
            defects.setdefault(image.name, Defect()).ellipse = (a, b, angle, x, y)
        elif len(fields) in (4, 5) and fields[1] in ("0", "1"):
            name = fields[2]
            if name not in by_name:
                raise UserError(f"{path} line {i}: the image {split_dir / name} is missing")
            listed.add(name)
            if fields[1] == "1":
                defects.setdefault(name, Defect())
                if len(fields) == 5:
                    mask = split_dir / "Label" / fields[4]
                    if not mask.is_file():
                        raise UserError(
                            f"the label image {mask} ({path} line {i}) is missing; unpack it again"
                        )
                    defects[name].mask = mask
        else:
            raise UserError(
                f"{path} line {i} is not a DAGM label line ('<n> <0|1> <image> 0 [<label image>]' or "
                f"'<image number> <a> <b> <angle> <x> <y>'): {line.strip()!r}"
            )
    for f in files:  # label PNGs by name: for listed defects without one, and unlisted images
        label_png = split_dir / "Label" / f"{f.stem}_label.PNG"
        if not label_png.is_file():
            continue
        if f.name in defects and defects[f.name].mask is None:
            defects[f.name].mask = label_png
        elif f.name not in listed:
            defects[f.name] = Defect(mask=label_png)
    for name, d in defects.items():
        if d.mask is None and d.ellipse is None:
            raise UserError(
                f"{split_dir / name} is defective in {path} but has neither a label image "
                f"(Label/{Path(name).stem}_label.PNG) nor an ellipse"
            )
    return defects


def ellipse_mask(
    ellipse: tuple[float, float, float, float, float], image_wh: tuple[int, int], out_hw: tuple[int, int]
) -> np.ndarray:
    """A DAGM ellipse as a uint8 (H,W) 0/1 mask at the output size, tested at pixel centres.

    ``ellipse`` = (semi-major, semi-minor, angle in radians from the x axis, x, y) in the
    pixels of the original ``image_wh`` image, centre 1-based (MATLAB): pixel ``i``
    (0-based) has its centre at ``i + 1``.
    """
    a, b, angle, x, y = ellipse
    (w, h), (oh, ow) = image_wh, out_hw
    u = (np.arange(ow) + 0.5) * (w / ow) - (x - 0.5)  # original continuous coordinates
    v = (np.arange(oh) + 0.5) * (h / oh) - (y - 0.5)
    dx, dy = np.meshgrid(u, v)
    c, s = math.cos(angle), math.sin(angle)
    p, q = dx * c + dy * s, -dx * s + dy * c
    return ((p / a) ** 2 + (q / b) ** 2 <= 1.0).astype(np.uint8)


def find_root(data_root: str | None, cls: str) -> Path | None:
    for d in search_dirs(data_root, SUBDIRS):
        if (d / cls).is_dir():
            return d
    return None


def locate_dagm(data_root: str | None) -> tuple[bool, str]:
    best, count = None, 0
    for d in search_dirs(data_root, SUBDIRS):
        n = sum(all((d / c / s / LABELS).is_file() for s in SPLITS) for c in CLASSES)
        if n > count:
            best, count = d, n
    if best is None:
        return False, f"looked in {looked_in(search_dirs(data_root, SUBDIRS))} for {LAYOUT}"
    return count == len(CLASSES), f"{best}: {count}/{len(CLASSES)} classes with Train/ and Test/ labels"


def _split_files(class_dir: Path, split: str) -> tuple[list[Path], dict[str, Defect]]:
    folder = class_dir / split
    if not folder.is_dir():
        raise UserError(f"{folder} is missing: dagm needs {LAYOUT}")
    files = list_images(folder)
    if not files:
        raise UserError(f"{folder} holds no images (.PNG); dagm needs {LAYOUT}")
    return files, read_labels(folder, files)


@register_dataset(
    "dagm",
    num_classes=len(CLASSES),
    class_names=CLASSES,
    native_size=DEFAULT_IMAGE_SIZE,
    stored_as="512×512 grey PNG, resized to image_size (default 224) on load",
    channels=1,
    source="DAGM 2007 Class<k>/{Train,Test} folders under --data-root (no automatic download)",
    locate=locate_dagm,
)
def load_dagm(
    normal_class: int | str = 0,
    data_root: str | None = None,
    download: bool = False,
    image_size: int | None = DEFAULT_IMAGE_SIZE,
    mode: str = "auto",
) -> OneClassData:
    """One DAGM class as normal; images (N,1,s,s) in [0,1], test masks (M,s,s) of 0/1."""
    index = class_index("dagm", normal_class, CLASSES)
    check_class("dagm", index, len(CLASSES))
    check_image_size(image_size)
    cls = CLASSES[index]
    root = find_root(data_root, cls)
    if root is None:
        fix = SOURCE if download else "unpack DAGM 2007 there or pass --data-root"
        raise UserError(
            f"DAGM class {cls!r} not found: looked in {looked_in(search_dirs(data_root, SUBDIRS))} "
            f"for {LAYOUT}; {fix}"
        )
    train_all, train_defects = _split_files(root / cls, "Train")
    test_files, test_defects = _split_files(root / cls, "Test")
    train_files = [f for f in train_all if f.name not in train_defects]
    if not train_files:
        raise UserError(f"{root / cls / 'Train'} has no non-defective images to train on")
    labels = np.array([f.name in test_defects for f in test_files], dtype=np.int64)
    if labels.min() == labels.max():
        raise UserError(
            f"{root / cls / 'Test'} has only {'defective' if labels[0] else 'non-defective'} images by "
            f"{root / cls / 'Test' / LABELS}; the test split needs both"
        )
    mask_files = [test_defects[f.name].mask if f.name in test_defects else None for f in test_files]
    data = one_class_tree("dagm", index, cls, train_files, test_files, labels, image_size, mode,
                          source=root / cls, test_mask_files=mask_files)  # fmt: skip
    for i, f in enumerate(test_files):  # defects without a mask file: the labels' ellipse
        d = test_defects.get(f.name)
        if d is not None and d.mask is None:
            ellipse = ellipse_mask(d.ellipse, image_size_of(f), tuple(data.test_masks.shape[1:]))
            data.test_masks[i] = torch.from_numpy(ellipse).float()
    data.info["train_defective_left_out"] = len(train_all) - len(train_files)
    return data
