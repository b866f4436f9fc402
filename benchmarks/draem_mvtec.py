"""DRÆM end to end on an MVTec-format tree: image and pixel AUROC, clean and under PGD.

Fits ``draem`` on the ``train/good`` images of one category, then prints the image
AUROC of the score (max of the mean-filtered anomaly map) and the pixel AUROC of
``anomaly_map`` against ``ground_truth`` masks, on the clean test images and on their
PGD versions (the attack maximises d·s(x), d = +1 for normal and −1 for anomalous
images, on the image score; the pixel maps are those of the attacked images).

Without ``--root`` it writes the suite's MVTec fixture (robustad/datasets/fixtures.py:
grey-noise textures, defects are white squares with their masks) to a temporary folder,
so the script runs anywhere; give ``--root`` (the folder holding the category folders)
for a real MVTec AD copy, and ``--textures`` for a folder of anomaly-source images
(DTD's ``images/``; synthetic textures otherwise).

    python benchmarks/draem_mvtec.py                      # fixture, CPU-sized, about 2-4 min
    python benchmarks/draem_mvtec.py --root ~/data/mvtec --category bottle --size 256 \\
        --rec-width 128 --disc-width 64 --epochs 700 --lr 1e-4 --textures ~/data/dtd/images --device cuda
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import robustad as ra
from robustad.benchmark.metrics import pixel_auroc
from robustad.datasets.fixtures import write_mvtec
from robustad.methods.base import RunContext
from robustad.threat import default_eps, format_eps, parse_eps


def anomaly_maps(det, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(det.parameters()).device
    with torch.no_grad():
        return torch.cat([det.anomaly_map(xb.to(device)).cpu() for xb in x.split(batch_size)])


def attack(det, x, y, threat, steps: int, batch_size: int) -> torch.Tensor:
    device = next(det.parameters()).device
    pgd = ra.create_attack("pgd", steps=steps)
    out = [
        pgd.perturb(det, xb.to(device), yb.to(device), threat).cpu()
        for xb, yb in zip(x.split(batch_size), y.split(batch_size))
    ]
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help="folder holding MVTec category folders (default: write the fixture)")
    p.add_argument("--category", default="bottle")
    p.add_argument("--size", type=int, default=64, help="image size the tree is resized to on load")
    p.add_argument("--n-train", type=int, default=40, help="fixture: training images")
    p.add_argument("--n-test", type=int, default=20, help="fixture: good test images and defect images each")
    p.add_argument("--rec-width", type=int, default=16)
    p.add_argument("--disc-width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-size", type=int, default=None, help="DRÆM's working size (default: native)")
    p.add_argument("--textures", default=None, help="anomaly source folder (default: synthetic)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--eps", default="auto", help="L∞ budget, e.g. 8/255 (auto: by image size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="draem-mvtec-") as tmp:
        root = Path(args.root).expanduser() if args.root else Path(tmp)
        if not args.root:
            os.environ["ROBUSTAD_CACHE_DIR"] = tmp  # the fixture's decoded images are not worth caching
            half = args.n_test // 2
            write_mvtec(
                root,
                args.category,
                n_train=args.n_train,
                n_good=args.n_test,
                defects={"crack": half, "scratch": args.n_test - half},
                size=args.size,
                seed=args.seed,
            )
        data = ra.load_dataset("mvtec", args.category, data_root=str(root), image_size=args.size)
    if data.test_masks is None:
        raise SystemExit(f"{root / args.category} has no ground_truth masks: no pixel AUROC")
    n_anom = int(data.test_y.sum())
    source = "fixture (written to a temporary folder)" if not args.root else str(root)
    print(
        f"DRÆM on MVTec {args.category!r} from {source}: {tuple(data.train_x.shape[1:])} images, "
        f"{len(data.train_x)} train, {len(data.test_y) - n_anom} normal + {n_anom} anomalous test"
    )

    params = dict(
        rec_width=args.rec_width,
        disc_width=args.disc_width,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=args.image_size,
        anomaly_source_dir=args.textures,
    )
    det = ra.create_method("draem", **params)
    started = time.perf_counter()
    det.fit(data, RunContext(device=args.device, seed=args.seed))
    det.eval()
    info = det.info()
    print(f"fit: {time.perf_counter() - started:.0f} s; {params}")
    print(
        f"     {info['reconstructive']} | {info['discriminative']} | input {info['input']} | "
        f"window {info['pool_size']} | anomaly source: {info['anomaly_source']} "
        f"({info['anomaly_source_detail']})"
    )

    eps = default_eps("Linf", max(data.resolution)) if args.eps == "auto" else parse_eps(args.eps)
    threat = ra.ThreatModel("Linf", eps)
    bs = 64
    y = data.test_y
    clean_scores = det.score_batched(data.test_x, bs)
    clean_maps = anomaly_maps(det, data.test_x, bs)
    started = time.perf_counter()
    x_adv = attack(det, data.test_x, y, threat, args.steps, bs)
    t_attack = time.perf_counter() - started
    adv_scores = det.score_batched(x_adv, bs)
    adv_maps = anomaly_maps(det, x_adv, bs)
    assert (x_adv - data.test_x).abs().max() <= eps + 1e-6

    label = f"PGD-{args.steps} (Linf {format_eps(eps)})"
    rows = [
        ("image AUROC", ra.auroc(clean_scores, y), ra.auroc(adv_scores, y)),
        ("pixel AUROC", pixel_auroc(clean_maps, data.test_masks), pixel_auroc(adv_maps, data.test_masks)),
    ]
    print(f"attack: {t_attack:.0f} s")
    print(f"{'':12s}  {'clean':>7s}  {label}")
    for name, clean, adv in rows:
        print(f"{name:12s}  {100 * clean:7.1f}  {100 * adv:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
