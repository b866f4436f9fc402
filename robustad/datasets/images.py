"""Decoding image files into arrays, resized once and cached, for the image-tree datasets.

``mvtec``, ``visa``, ``folder`` and ``imagefolder`` read PNG/JPEG files that are
far larger than the networks need. Each file is decoded once, resized to
``image_size`` × ``image_size`` (bilinear with antialiasing for images, nearest
neighbour for masks, so a mask stays a set of 0/1 labels), and the uint8 result
is kept twice:

- in memory for the life of the process (the runner reloads the same class for
  every method and seed), and
- on disk as one ``.npz`` per file list under ``$ROBUSTAD_CACHE_DIR/images``
  (default ``~/.cache/robustad/images``), keyed by the file paths, their sizes
  and modification times, the target size and the colour mode. Touching or
  replacing any file changes the key, so a stale cache is never read.

Non-square images are stretched to a square, as anomalib's default resize does;
the one-class protocol compares images of one camera set-up, so the aspect
change is the same for normal and anomalous images. ``resize="crop"`` instead
scales the shorter side to ``image_size``·256/224 and keeps the centre square
(torchvision's ``Resize(256)`` + ``CenterCrop(224)`` at 224 px, the ImageNet
test transform), for photographs whose framing varies.

Colour modes: 8-bit greyscale (``L``) stays one channel and ``RGB`` three. With
``mode="auto"`` the first image decides and every other image must match (a
grey image in a colour set is reported, not silently converted); ``mode="RGB"``
or ``"L"`` converts whatever PIL can read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from robustad.datasets.base import DEFAULT_DATA_ROOT, OneClassData, to_float_nchw
from robustad.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MODES = ("auto", "RGB", "L")
RESIZES = ("stretch", "crop")
# Bump when decoding or resizing changes, so old cache files are not reused.
CACHE_VERSION = 1
_MEMORY: OrderedDict[str, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
_MEMORY_BYTES_MAX = 2 * 1024**3  # a few categories at 224 px; evicted oldest first


def cache_dir() -> Path:
    """Folder for the on-disk cache: ``$ROBUSTAD_CACHE_DIR/images`` or ``~/.cache/robustad/images``."""
    root = os.environ.get("ROBUSTAD_CACHE_DIR") or DEFAULT_DATA_ROOT
    return Path(root).expanduser() / "images"


def clear_memory_cache() -> None:
    _MEMORY.clear()


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (so indices are reproducible)."""
    return sorted(p for p in folder.iterdir() if is_image(p))


def list_images_tree(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder`` (hidden folders skipped), sorted by path."""
    return sorted(
        p
        for p in folder.rglob("*")
        if is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def check_image_size(image_size: int | None) -> None:
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8
    ):
        raise UserError(
            f"image_size must be an integer of at least 8 (pixels) or null for the files' own size, "
            f"got {image_size!r}"
        )


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def _open(path: Path):
    from PIL import Image

    try:
        img = Image.open(path)
        return img
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path} ({exc}); replace the file or remove it") from exc


def crop_short_side(image_size: int) -> int:
    """The shorter side before the centre crop of ``resize="crop"``: 256 for 224."""
    return round(image_size * 256 / 224)


def read_image(path: Path, image_size: int | None, mode: str, resize: str = "stretch") -> np.ndarray:
    """One image as uint8 (H,W) for grey or (H,W,3) for RGB, resized to ``image_size``.

    ``mode`` is the wanted mode (``L`` or ``RGB``); ``auto`` accepts either as stored.
    ``resize``: ``stretch`` to the square, or ``crop`` (shorter side to
    :func:`crop_short_side`, then the centre square).
    """
    from PIL import Image

    img = _open(path)
    try:
        if image_size is not None:
            # JPEG only: decode at the smallest 1/2^k scale still ≥ image_size (much faster
            # for VisA's 1.5k px photos); the bilinear resize below sets the final size.
            side = crop_short_side(image_size) if resize == "crop" else image_size
            img.draft(img.mode if img.mode in ("L", "RGB") else None, (side, side))
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(
            f"image {path} is corrupt or truncated ({exc}); replace the file or remove it"
        ) from exc
    if mode in ("L", "RGB"):
        if img.mode != mode:
            img = img.convert(mode)
    elif img.mode not in ("L", "RGB"):
        raise UserError(
            f"image {path} has mode {img.mode!r}; only 8-bit greyscale (L) and RGB are read as "
            "stored: convert the file, or set the dataset parameter mode: RGB (or L) to convert on load"
        )
    if image_size is not None and resize == "crop":
        # torchvision's Resize(int) then CenterCrop: the long side is truncated, the offset rounded.
        short, (w, h) = crop_short_side(image_size), img.size
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        if img.size != size:
            img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = round((size[0] - image_size) / 2), round((size[1] - image_size) / 2)
        img = img.crop((left, top, left + image_size, top + image_size))
    elif image_size is not None and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(img, dtype=np.uint8)


def read_mask(path: Path, image_size: int | None, expected_size: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask as uint8 (H,W) of 0/1 (any non-zero pixel is anomalous)."""
    from PIL import Image

    img = _open(path)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"mask {path} is corrupt or truncated ({exc}); replace the file") from exc
    if img.size != expected_size:
        raise UserError(
            f"mask {path} is {img.size[0]}×{img.size[1]} px but its image is "
            f"{expected_size[0]}×{expected_size[1]} px; masks must match their images"
        )
    if img.mode not in ("1", "L", "P", "I", "I;16"):
        img = img.convert("L")
    if image_size is not None and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.NEAREST)
    return (np.asarray(img) > 0).astype(np.uint8)


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    with _open(path) as img:
        return img.size


def _key(
    paths: list[Path], masks: list[Path | None] | None, image_size: int | None, mode: str, resize: str
) -> str:
    entries = []
    for p in [*paths, *(m for m in (masks or []) if m is not None)]:
        try:
            st = p.stat()
        except OSError as exc:
            raise UserError(f"cannot read {p} ({exc}); check the dataset folder") from exc
        entries.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    mask_layout = None if masks is None else [m is not None for m in masks]
    fields = [CACHE_VERSION, image_size, mode, entries, mask_layout]
    if resize != "stretch":  # the default leaves the keys of existing cache files unchanged
        fields.append(resize)
    text = json.dumps(fields)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_disk(file: Path) -> tuple[np.ndarray, np.ndarray | None] | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            images = z["images"]
            masks = z["masks"] if "masks" in z.files else None
        return images, masks
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a broken cache file is ours, not the user's: decode again and overwrite


def _write_disk(file: Path, images: np.ndarray, masks: np.ndarray | None) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp.npz")
        with os.fdopen(fd, "wb") as fh:
            arrays = {"images": images} if masks is None else {"images": images, "masks": masks}
            np.savez(fh, **arrays)
        os.replace(tmp, file)  # atomic: a killed run never leaves half a cache file
    except OSError as exc:  # an unwritable cache only costs time
        warnings.warn(f"could not write the image cache {file} ({exc}); images will be decoded again",
                      stacklevel=3)  # fmt: skip


def _remember(key: str, value: tuple[np.ndarray, np.ndarray | None]) -> None:
    _MEMORY[key] = value
    _MEMORY.move_to_end(key)
    total = sum(a.nbytes + (0 if m is None else m.nbytes) for a, m in _MEMORY.values())
    while total > _MEMORY_BYTES_MAX and len(_MEMORY) > 1:
        _, (a, m) = _MEMORY.popitem(last=False)
        total -= a.nbytes + (0 if m is None else m.nbytes)


def load_images(
    paths: list[Path],
    image_size: int | None,
    mode: str = "auto",
    masks: list[Path | None] | None = None,
    use_cache: bool = True,
    stats: dict | None = None,
    resize: str = "stretch",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode ``paths`` into uint8 (N,H,W) grey or (N,H,W,3) RGB, plus masks uint8 (N,H,W) of 0/1.

    ``masks[i]`` is the mask file of ``paths[i]`` or None (an all-zero mask);
    ``masks=None`` means the dataset has no masks. ``image_size=None`` keeps the
    files' own size (they must all agree). Every file is read before anything is
    returned or cached, so a bad file leaves nothing half-loaded behind.
    ``stats`` (if given) receives ``source``: ``memory``, ``disk`` or ``decoded``.
    ``resize``: ``stretch`` (default) or ``crop`` (see :func:`read_image`; masks are
    not supported with ``crop``).
    """
    check_image_size(image_size)
    _check_mode(mode)
    if resize not in RESIZES or (resize == "crop" and masks is not None):
        raise ValueError(f"resize must be one of {RESIZES} (crop without masks), got {resize!r}")
    if not paths:
        raise ValueError("load_images needs at least one file")
    key = _key(paths, masks, image_size, mode, resize)
    stats = stats if stats is not None else {}
    if use_cache and key in _MEMORY:
        _MEMORY.move_to_end(key)
        stats["source"] = "memory"
        return _MEMORY[key]
    file = cache_dir() / f"{key}.npz"
    if use_cache and file.is_file():
        cached = _read_disk(file)
        if cached is not None and len(cached[0]) == len(paths):
            _remember(key, cached)
            stats["source"] = "disk"
            return cached
    images = []
    want = mode
    for p in paths:
        arr = read_image(p, image_size, mode, resize)
        if want == "auto":
            want = "L" if arr.ndim == 2 else "RGB"  # the first image fixes the mode of the set
        elif (arr.ndim == 2) != (want == "L"):
            raise UserError(
                f"image {p} is {'grey' if arr.ndim == 2 else 'RGB'} but {paths[0]} is "
                f"{'grey' if want == 'L' else 'RGB'}; convert it, or set the dataset parameter "
                f"mode: RGB (or L) to convert every image on load"
            )
        if images and arr.shape != images[0].shape:
            raise UserError(
                f"image {p} is {arr.shape[1]}×{arr.shape[0]} px but {paths[0]} is "
                f"{images[0].shape[1]}×{images[0].shape[0]} px; set the dataset parameter image_size "
                "to resize them to one size"
            )
        images.append(arr)
    out_images = np.stack(images)
    out_masks = None
    if masks is not None:
        h, w = out_images.shape[1:3]
        out_masks = np.zeros((len(paths), h, w), np.uint8)
        for i, (p, m) in enumerate(zip(paths, masks)):
            if m is not None:
                out_masks[i] = read_mask(m, image_size, image_size_of(p))
    value = (out_images, out_masks)
    if use_cache:
        _write_disk(file, out_images, out_masks)
        _remember(key, value)
    stats["source"] = "decoded"
    return value


def one_class_tree(
    name: str,
    normal_class: int,
    class_name: str,
    train_files: list[Path],
    test_files: list[Path],
    test_labels: np.ndarray,
    image_size: int | None,
    mode: str,
    *,
    source: Path | str,
    test_mask_files: list[Path | None] | None = None,
    resize: str = "stretch",
    split_cache: bool = False,
) -> OneClassData:
    """The one-class protocol on files: decode, resize and cache them, and wrap them.

    Every image-tree dataset ends here once it has listed its files. By default one
    :func:`load_images` call reads both splits: one cache file per normal class, and
    the first training image fixes the colour mode of both (a grey model cannot score
    RGB images). ``split_cache=True`` decodes the test split on its own, for datasets
    whose test split is the same for every normal class (it is then decoded once);
    the two splits must then agree in size and colour. ``test_mask_files``: a mask
    file (or None: all zero) per test image, or None when the dataset has no masks.
    ``data.info`` records the source folder and where the images came from (``cache``).
    """
    n = len(train_files)
    if split_cache:
        if test_mask_files is not None:
            raise ValueError("split_cache reads no masks")
        train_stats: dict = {}
        test_stats: dict = {}
        train, _ = load_images(train_files, image_size, mode, stats=train_stats, resize=resize)
        test, _ = load_images(test_files, image_size, mode, stats=test_stats, resize=resize)
        if train.shape[1:] != test.shape[1:]:
            what = "colour (grey against RGB)" if train.ndim != test.ndim else "size"
            raise UserError(
                f"the training and test images of {source} differ in {what}; set the dataset "
                "parameters image_size and mode: RGB (or L) to load both alike"
            )
        masks = None
        cache: object = {"train": train_stats.get("source"), "test": test_stats.get("source")}
    else:
        stats: dict = {}
        all_masks = None if test_mask_files is None else [None] * n + list(test_mask_files)
        images, all_mask_arr = load_images(
            list(train_files) + list(test_files), image_size, mode, all_masks, stats=stats, resize=resize
        )
        train, test = images[:n], images[n:]
        masks = None if all_mask_arr is None else all_mask_arr[n:]
        cache = stats.get("source")
    data = OneClassData(
        name=name,
        normal_class=int(normal_class),
        train_x=to_float_nchw(train),
        test_x=to_float_nchw(test),
        test_y=torch.from_numpy(np.asarray(test_labels, dtype=np.int64)),
        # a copy: callers may edit the masks, the cached array must stay as read
        test_masks=None if masks is None else torch.tensor(masks, dtype=torch.float32),
        class_name=class_name,
    )
    data.info.update(source=str(source), cache=cache)
    return data
