"""Shared set-up for the attack benchmarks: trained detectors (cached), timing, tables.

Run the scripts from the repository root, e.g. ``nice -n 10 python benchmarks/attack_cost.py``.
Torch runs on one thread by default (``--threads``): on a shared 2-core machine
two intra-op threads per process oversubscribe the cores and make timings
meaningless (measured 15× slower PGD under load).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import robustad as ra
from robustad.benchmark.runner import seed_everything
from robustad.config import resolve
from robustad.datasets.base import test_subset
from robustad.methods.base import load_detector_state, save_detector

CACHE = Path.home() / ".cache" / "robustad" / "bench-checkpoints"


def trained_deepsvdd(dataset: str, normal_class: int, epochs: int | None = None, seed: int = 0):
    """Deep SVDD with the quick preset's parameters (``epochs`` overrides), fitted once
    and cached; returns ``(detector, data)``."""
    params = dict(resolve("quick")["method_params"]["deepsvdd"])
    if epochs is not None:
        params["epochs"] = epochs
    data = ra.load_dataset(dataset, normal_class)
    det = ra.create_method("deepsvdd", **params)
    tag = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    path = CACHE / f"deepsvdd-{dataset}-{normal_class}-s{seed}-{tag}.pt"
    if path.is_file():
        load_detector_state(det, path)
    else:
        seed_everything(seed)
        det.fit(data)
        CACHE.mkdir(parents=True, exist_ok=True)
        save_detector(det, path)
    return det.eval(), data


def balanced_subset(data, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to n test samples, half normal and half anomalous (all of them if n is None):
    the ``test_subset`` dataset parameter's selection."""
    if n is None:
        return data.test_x, data.test_y
    sub = test_subset(data, n, seed)
    return sub.test_x, sub.test_y


def timed(fn, *args, **kwargs):
    """(result, wall seconds)."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
