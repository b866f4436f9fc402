"""Tiny datasets written in the real on-disk formats, for tests and load benchmarks.

Each writer produces files that the real loader reads through its real parsing
code (IDX ``.gz``, CIFAR pickles, SVHN ``.mat``, MVTec/VisA PNG/JPEG trees with
masks, class folders, ImageNet-30 split folders, DAGM ``Labels.txt`` with label
PNGs, ISIC ground-truth CSVs, Cityscapes ID/OOD folders). The content encodes
the labels so tests can check them: in the array datasets every pixel of an
image of class ``k`` is ``pixel_value(k)``; in the image trees a defect is a
white square exactly where its mask is set.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np

from robustad.datasets.idx import write_idx


def pixel_value(k: int) -> int:
    """The grey level that marks class ``k`` in the array fixtures (distinct for k < 25)."""
    return 10 * k + 5


def _class_images(num_classes: int, per_class: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(num_classes), per_class)
    images = np.empty((len(labels), *shape), np.uint8)
    for i, k in enumerate(labels):
        images[i] = pixel_value(int(k))
    return images, labels


def write_mnist(root: Path, per_class: int = (3, 2), gz: bool = True, folder: str = "MNIST/raw") -> Path:
    """MNIST's four IDX files under ``root/folder``; ``per_class`` = (train, test) per digit."""
    d = Path(root) / folder
    d.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n in (("train", per_class[0]), ("t10k", per_class[1])):
        x, y = _class_images(10, n, (28, 28))
        write_idx(d / f"{split}-images-idx3-ubyte{ext}", x)
        write_idx(d / f"{split}-labels-idx1-ubyte{ext}", y.astype(np.uint8))
    return d


def write_fmnist(folder: Path, per_class: tuple[int, int] = (3, 2)) -> Path:
    """Fashion-MNIST's four ``.gz`` IDX files directly in ``folder``."""
    return write_mnist(Path(folder), per_class, gz=True, folder="")


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)  # the protocol of the published (Python 2) files


def write_cifar10(root: Path, per_class: tuple[int, int] = (5, 2)) -> Path:
    """``cifar-10-batches-py`` with five training batches and a test batch.

    Keys are bytes, as Python 3 sees the published Python 2 pickles.
    """
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    x, y = _class_images(10, per_class[0], (3072,))
    for b in range(5):
        sel = slice(b, None, 5)  # every batch holds some of each class, as in the real files
        _dump(d / f"data_batch_{b + 1}", {b"batch_label": b"training batch", b"labels": y[sel].tolist(),
                                          b"data": x[sel]})  # fmt: skip
    x, y = _class_images(10, per_class[1], (3072,))
    _dump(d / "test_batch", {b"batch_label": b"testing batch", b"labels": y.tolist(), b"data": x})
    _dump(d / "batches.meta", {b"label_names": [b"airplane"] * 10, b"num_vis": 3072})
    return d


def write_cifar100(root: Path, per_class: tuple[int, int] = (2, 1)) -> Path:
    """``cifar-100-python/{train,test,meta}``: fine label f belongs to superclass f % 20."""
    d = Path(root) / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", per_class[0]), ("test", per_class[1])):
        fine = np.repeat(np.arange(100), n)
        coarse = fine % 20
        x = np.empty((len(fine), 3072), np.uint8)
        for i, k in enumerate(coarse):
            x[i] = pixel_value(int(k))
        _dump(d / split, {b"filenames": [b"x.png"] * len(fine), b"fine_labels": fine.tolist(),
                          b"coarse_labels": coarse.tolist(), b"data": x})  # fmt: skip
    _dump(d / "meta", {b"fine_label_names": [b"x"] * 100, b"coarse_label_names": [b"y"] * 20})
    return d


def write_svhn(root: Path, per_class: tuple[int, int] = (3, 2)) -> Path:
    """``train_32x32.mat`` and ``test_32x32.mat`` (X (32,32,3,N) uint8, y (N,1) with 10 for 0)."""
    import scipy.io

    d = Path(root)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", per_class[0]), ("test", per_class[1])):
        x, y = _class_images(10, n, (32, 32, 3))
        y = np.where(y == 0, 10, y).astype(np.uint8)[:, None]
        scipy.io.savemat(d / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": y})
    return d


# -- image trees --------------------------------------------------------------------------
DEFECT_BOX = (16, 32, 32, 48)  # rows 16..31, columns 32..47 of a 64×64 image


def _texture(rng: np.random.Generator, size: int, grey: bool) -> np.ndarray:
    """A mid-grey noisy image (values 60..140), so a white defect stands out."""
    shape = (size, size) if grey else (size, size, 3)
    return rng.integers(60, 141, shape, dtype=np.uint8)


def _save(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _defect(rng, size: int, grey: bool) -> tuple[np.ndarray, np.ndarray]:
    r0, r1, c0, c1 = DEFECT_BOX
    img = _texture(rng, size, grey)
    img[r0:r1, c0:c1] = 255
    mask = np.zeros((size, size), np.uint8)
    mask[r0:r1, c0:c1] = 255
    return img, mask


def write_mvtec(
    root: Path,
    category: str = "bottle",
    n_train: int = 6,
    n_good: int = 3,
    defects: dict[str, int] | None = None,
    grey: bool = False,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """One MVTec AD category at ``root/category``: PNGs with a white square per defect and its mask."""
    defects = defects or {"crack": 2, "scratch": 2}
    rng = np.random.default_rng(seed)
    cat = Path(root) / category
    for i in range(n_train):
        _save(cat / "train" / "good" / f"{i:03d}.png", _texture(rng, size, grey))
    for i in range(n_good):
        _save(cat / "test" / "good" / f"{i:03d}.png", _texture(rng, size, grey))
    for name, n in defects.items():
        for i in range(n):
            img, mask = _defect(rng, size, grey)
            _save(cat / "test" / name / f"{i:03d}.png", img)
            _save(cat / "ground_truth" / name / f"{i:03d}_mask.png", mask)
    return cat


def write_visa(
    root: Path, obj: str = "candle", n_train: int = 5, n_normal: int = 3, n_anomaly: int = 3, size: int = 64
) -> Path:
    """A VisA tree with ``split_csv/1cls.csv``: JPEG images, PNG masks, paths relative to ``root``."""
    rng = np.random.default_rng(1)
    root = Path(root)
    rows = []
    for split, label, n in (("train", "normal", n_train), ("test", "normal", n_normal)):
        for i in range(n):
            rel = f"{obj}/Data/Images/Normal/{split}{i:03d}.JPG"
            _save(root / rel, _texture(rng, size, grey=False))
            rows.append([obj, split, label, rel, ""])
    for i in range(n_anomaly):
        rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
        mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
        img, mask = _defect(rng, size, grey=False)
        _save(root / rel, img)
        _save(root / mrel, mask)
        rows.append([obj, "test", "anomaly", rel, mrel])
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def write_imagefolder(
    root: Path, per_class: dict[str, int] | None = None, split: bool = False, size: int = 40
) -> Path:
    """Class folders of PNGs; image ``i`` of the ``k``-th class is filled with ``pixel_value(k)``.

    ``split=True`` writes ``train/<class>`` and ``test/<class>`` with the same counts.
    """
    per_class = per_class or {"ants": 5, "bees": 5, "cats": 5}
    root = Path(root)
    for part in ("train", "test") if split else ("",):
        for k, (name, n) in enumerate(per_class.items()):
            for i in range(n):
                _save(root / part / name / f"{i:03d}.png", np.full((size, size, 3), pixel_value(k), np.uint8))
    return root


# -- ImageNet-30, DAGM, ISIC 2018, Cityscapes ------------------------------------------------------
def class_grey(k: int) -> int:
    """The grey level that marks class ``k`` in the photo fixtures (distinct for k < 31)."""
    return 8 * k + 8


def _framed(value: int, width: int = 64, height: int = 40) -> np.ndarray:
    """An RGB photo of grey ``value`` with white 8-px strips at the left and right edges.

    A centre crop (``resize="crop"``) never reaches the strips; stretching keeps them.
    The strips end on 8-px JPEG block borders, so the grey stays flat after compression.
    """
    img = np.full((height, width, 3), value, np.uint8)
    img[:, :8] = img[:, -8:] = 255
    return img


def write_imagenet30(
    root: Path, train_classes: list[str] | None = None, per_class: tuple[int, int] = (3, 2)
) -> Path:
    """``one_class_train/<class>/<class>/*.JPEG`` (nested, as the archives are) for ``train_classes``
    (default all 30) and ``one_class_test/<class>/*.JPEG`` for all 30; class ``k`` is grey ``class_grey(k)``.
    """
    from robustad.datasets.imagenet30 import CLASSES

    root = Path(root)
    for k, name in enumerate(CLASSES):
        if train_classes is None or name in train_classes:
            for i in range(per_class[0]):
                _save_jpeg(root / "one_class_train" / name / name / f"{i:03d}.JPEG", _framed(class_grey(k)))
        for i in range(per_class[1]):
            _save_jpeg(root / "one_class_test" / name / f"{name}_{i:03d}.JPEG", _framed(class_grey(k)))
    return root


def _save_jpeg(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)


def write_dagm(
    root: Path,
    cls: str = "Class1",
    train: tuple[int, int] = (5, 2),
    test: tuple[int, int] = (3, 3),
    ellipses: int = 0,
    size: int = 64,
) -> Path:
    """``root/<cls>/{Train,Test}`` with ``Label/Labels.txt``; ``(normal, defective)`` images per split.

    Grey PNGs named ``0001.PNG``…, the defective ones after the normal ones, each with the
    white ``DEFECT_BOX`` square and ``Label/<name>_label.PNG``. The last ``ellipses``
    defective test images instead carry an axis-aligned ellipse (centre x 40.5, y 24.5
    in 1-based pixels, semi-axes 8 along x and 4 along y), painted white and given only
    as an ellipse line of ``Labels.txt``.
    """
    rng = np.random.default_rng(2)
    d = Path(root) / cls
    for split, (n_normal, n_defect) in (("Train", train), ("Test", test)):
        lines = ["1"]
        for i in range(n_normal + n_defect):
            name = f"{i + 1:04d}.PNG"
            if i < n_normal:
                _save(d / split / name, _texture(rng, size, grey=True))
                lines.append(f"{i + 1}\t0\t{name}\t0\t")
            elif split == "Test" and i >= n_normal + n_defect - ellipses:
                img = _texture(rng, size, grey=True)
                yy, xx = np.mgrid[0:size, 0:size] + 0.5
                img[((xx - 40) / 8) ** 2 + ((yy - 24) / 4) ** 2 <= 1] = 255
                _save(d / split / name, img)
                lines.append(f"{i + 1} 8 4 0 40.5 24.5")
            else:
                img, mask = _defect(rng, size, grey=True)
                _save(d / split / name, img)
                _save(d / split / "Label" / f"{i + 1:04d}_label.PNG", mask)
                lines.append(f"{i + 1}\t1\t{name}\t0\t{i + 1:04d}_label.PNG")
        (d / split / "Label").mkdir(parents=True, exist_ok=True)
        (d / split / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return d


ISIC_DIAGNOSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def write_isic2018(root: Path, splits: dict[str, dict[str, int]] | None = None) -> Path:
    """ISIC 2018 Task 3 input folders and one-hot ground-truth CSVs under ``root``.

    ``splits``: split (``Training``, ``Test``, ``Validation``) → diagnosis → image count.
    Images of diagnosis ``k`` (position in ``ISIC_DIAGNOSES``) are 60×45 JPEGs of grey
    ``class_grey(k)``; each input folder also holds the ``ATTRIBUTION.txt`` and
    ``LICENSE.txt`` of the real archives. Image ids run on across splits.
    """
    splits = splits or {"Training": {"NV": 4, "MEL": 2, "BKL": 1}, "Test": {"NV": 2, "MEL": 1, "DF": 1}}
    root = Path(root)
    image_id = 24306
    for split, counts in splits.items():
        folder = root / f"ISIC2018_Task3_{split}_Input"
        gt = root / f"ISIC2018_Task3_{split}_GroundTruth"
        folder.mkdir(parents=True, exist_ok=True)
        gt.mkdir(parents=True, exist_ok=True)
        (folder / "ATTRIBUTION.txt").write_text("fixture\n")
        (folder / "LICENSE.txt").write_text("fixture\n")
        rows = []
        for diagnosis, n in counts.items():
            k = ISIC_DIAGNOSES.index(diagnosis)
            for _ in range(n):
                name = f"ISIC_{image_id:07d}"
                image_id += 1
                _save_jpeg(folder / f"{name}.jpg", np.full((45, 60, 3), class_grey(k), np.uint8))
                rows.append([name, *("1.0" if d == diagnosis else "0.0" for d in ISIC_DIAGNOSES)])
        with open(gt / f"ISIC2018_Task3_{split}_GroundTruth.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", *ISIC_DIAGNOSES])
            w.writerows(rows)
    return root


def write_cityscapes(root: Path, n_id: int = 10, n_ood: int = 4) -> Path:
    """``root/ID/<city>/*.png`` and ``root/OOD/<city>/*.png``, 64×32 RGB.

    ID frame ``i`` is grey ``10 + 20·i`` (i < 10) and OOD frames are grey 250 with a
    black band, so a test can tell every frame apart.
    """
    root = Path(root)
    for i in range(n_id):
        _save(root / "ID" / ("aachen" if i % 2 else "bochum") / f"id_{i:03d}.png",
              np.full((32, 64, 3), 10 + 20 * i, np.uint8))  # fmt: skip
    for i in range(n_ood):
        img = np.full((32, 64, 3), 250, np.uint8)
        img[:, 8 * i : 8 * i + 8] = 0
        _save(root / "OOD" / "lindau" / f"ood_{i:03d}.png", img)
    return root
