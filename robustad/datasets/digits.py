"""``digits``: scikit-learn's bundled 8×8 handwritten digits, the embedded default.

1,797 grey images, 10 classes, no download. The 50/50 train/test split is
stratified and seeded with a fixed seed (independent of the run seed), so every
method and run sees the same split. Pixel values 0..16 are scaled to [0,1].
"""

from __future__ import annotations

import numpy as np

from robustad.datasets.base import OneClassData, check_class, one_class_split
from robustad.registry import register_dataset

SPLIT_SEED = 0


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # (N,1,8,8)
    return train_test_split(
        images, bunch.target, test_size=0.5, stratify=bunch.target, random_state=SPLIT_SEED
    )


@register_dataset(
    "digits",
    num_classes=10,
    class_names=[str(i) for i in range(10)],
    native_size=8,
    channels=1,
    source="bundled with scikit-learn (no download)",
    locate=lambda data_root: (True, "inside scikit-learn"),
)
def load_digits_one_class(
    normal_class: int = 0, data_root: str | None = None, download: bool = False
) -> OneClassData:
    check_class("digits", normal_class, 10)
    train_x, test_x, train_y, test_y = _split()
    return one_class_split("digits", normal_class, train_x, train_y, test_x, test_y)
