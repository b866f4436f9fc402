"""Does a bigger training budget make CSI brittle on Fashion-MNIST? CSI variants on one class.

Trains CSI with the ``fmnist`` preset's parameters and with longer or different
schedules (more epochs, more training images, the CIFAR stem) on one normal class,
and prints clean and PGD-20 AUROC (L∞ ε = 8/255, both sides attacked) on a seeded
balanced test subset, with the training time. Used by results/README.md to explain
why CSI is robust-ish at the preset's budget.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/csi_budget.py [--normal-class 0] [--subset 1000]
"""

from __future__ import annotations

import argparse
import json

import torch
from attack_common import balanced_subset, print_table, timed

import robustad as ra
from robustad.benchmark.runner import seed_everything
from robustad.config import resolve
from robustad.methods.base import RunContext

VARIANTS = {
    "fmnist preset": {},
    "10 epochs, 2,000 images, batch 32": {"epochs": 10, "max_train": 2000, "batch_size": 32},
    "10 epochs, 6,000 images, batch 32": {"epochs": 10, "max_train": 6000, "batch_size": 32},
    "CIFAR stem, width 8": {"stem": "cifar", "width": 8},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normal-class", type=int, default=0)
    ap.add_argument("--subset", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--variant",
        action="append",
        metavar="NAME=JSON",
        help="run this variant instead of the built-in list, e.g. 'S=4={\"test_views\": 4}' (repeatable)",
    )
    ap.add_argument("--method", default="csi", help="csi or cobra: both read the fmnist preset's parameters")
    args = ap.parse_args()
    variants = VARIANTS
    if args.variant:
        variants = {}
        for spec in args.variant:
            name, sep, change = spec.partition("=")
            if not sep:
                ap.error(f"--variant wants NAME=JSON, got {spec!r}")
            variants[name] = json.loads(change)
    torch.set_num_threads(args.threads)
    base = resolve("fmnist")["method_params"][args.method]
    data = ra.load_dataset("fmnist", args.normal_class)
    x, y = balanced_subset(data, args.subset)
    threat = ra.ThreatModel("Linf", 8 / 255)
    rows = []
    for name, change in variants.items():
        seed_everything(0)
        det = ra.create_method(args.method, **{**base, **change})
        _, fit_s = timed(det.fit, data, RunContext(seed=0))
        clean = 100 * ra.auroc(det.score_batched(x), y)
        x_adv = ra.create_attack("pgd", steps=args.steps).perturb(det, x, y, threat)
        adv = 100 * ra.auroc(det.score_batched(x_adv), y)
        rows.append([name, round(clean, 1), round(adv, 1), round(fit_s)])
        print(*rows[-1], flush=True)
    print(f"{args.method} on fmnist class {args.normal_class}, {len(y)} balanced test images, L∞ ε = 8/255")
    print_table(["variant", "clean AUROC %", f"PGD-{args.steps} AUROC %", "fit (s)"], rows)


if __name__ == "__main__":
    main()
