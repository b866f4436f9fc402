"""Reproducibility and provenance: seeding, library versions, the git revision, the device.

Every stored row carries the versions and the revision of the process that wrote it
(the driver); the device is resolved once, in the driver, before any work.
"""

from __future__ import annotations

import platform
import random
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from robustad.errors import UserError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# Packages whose code computes or feeds a result (aa/square, ta:<Name>, image loading,
# statistics): recorded with every result, "not installed" where absent.
VERSIONED_PACKAGES = ("pyautoattack", "torchvision", "scipy", "Pillow", "torchattacks")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    import importlib.metadata

    import sklearn

    from robustad.version import __version__

    versions = {
        "robustad": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
    }
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@lru_cache(maxsize=1)
def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def resolve_device(device: str) -> str:
    """auto, cpu, cuda, cuda:N or mps; anything else, or a device this machine lacks, is a
    UserError. config.validate calls this, so a bad --device stops the run before training
    instead of failing every fit."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(
            f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
            "CUDA device(s), cuda:0 upwards"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' was asked for but MPS is not available; use --device cpu")
    return device
