import pytest
import torch

from robustad.datasets import load_dataset


@pytest.fixture(scope="session")
def digits0():
    """Digits with normal class 0 (90 train images, 899 test images)."""
    return load_dataset("digits", 0)


@pytest.fixture(scope="session")
def trained_svdd(digits0):
    import robustad as ra

    torch.manual_seed(0)
    return ra.create_method("deepsvdd", epochs=15).fit(digits0)
