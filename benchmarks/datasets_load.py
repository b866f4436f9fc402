"""Load time and peak memory of every dataset loader, and the image cache's effect.

Usage: ``python benchmarks/datasets_load.py [--mvtec-images 60] [--native 900]``

Each measurement runs in a fresh Python process, so nothing cached by an
earlier load (in memory) and no earlier peak of resident memory hides the cost:

- time: wall seconds of ``load_dataset(...)`` alone (imports excluded);
- peak memory: the rise of the process's peak resident set size during the load
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``), in MiB.

Rows:

1. every loader on the tiny fixture files the tests write (same sizes); ``folder``
   reads the ``mvtec`` fixture tree, so it finds that load's cache on disk;
2. the real Fashion-MNIST (Debian package ``dataset-fashion-mnist``) when installed;
3. an MVTec-style category of ``--mvtec-images`` PNGs at ``--native`` px, loaded at
   224 and 64 px: first load (decode + resize + write the ``.npz`` cache), second
   load in the same process (memory cache), and a load in a new process (disk cache).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> int:
    """Reset the peak-RSS mark if Linux allows it; return the baseline in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS, so import peaks do not hide the load
        return _status_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_kib() -> int:
    return _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(spec: dict) -> dict:
    """Runs in a fresh process: load ``spec`` (optionally twice) and report time and memory."""
    from robustad.datasets import load_dataset  # imports before the baseline

    base = _reset_peak()
    out = {}
    for run in range(spec.get("repeat", 1)):
        t0 = time.perf_counter()
        data = load_dataset(spec["name"], spec["cls"], spec["root"], **spec.get("params", {}))
        out[f"time_{run}"] = time.perf_counter() - t0
        out[f"cache_{run}"] = data.info.get("cache")
    out.update(
        peak_mib=(_peak_kib() - base) / 1024,
        train=list(data.train_x.shape),
        test=list(data.test_x.shape),
        normals=int((data.test_y == 0).sum()),
        masks=None if data.test_masks is None else list(data.test_masks.shape),
    )
    return out


def measure(spec: dict, env: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"loading {spec['name']} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_big_mvtec(root: Path, n: int, native: int) -> Path:
    """An MVTec-style category of ``n`` RGB PNGs (¾ train, ¼ test with masks) at ``native`` px."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    cat = root / "bottle"
    n_test = max(2, n // 4)
    for i in range(n):
        img = rng.integers(0, 256, (native, native, 3), dtype=np.uint8)
        if i < n - n_test:
            path = cat / "train" / "good" / f"{i:03d}.png"
        elif i % 2:
            path = cat / "test" / "good" / f"{i:03d}.png"
        else:
            path = cat / "test" / "broken" / f"{i:03d}.png"
            mask = np.zeros((native, native), np.uint8)
            mask[native // 4 : native // 2, native // 4 : native // 2] = 255
            (cat / "ground_truth" / "broken").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(cat / "ground_truth" / "broken" / f"{i:03d}_mask.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, compress_level=1)
    return cat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mvtec-images", type=int, default=60, help="PNG files in the MVTec-style category")
    parser.add_argument("--native", type=int, default=900, help="their side in pixels (MVTec: 700–1024)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from robustad.datasets import fixtures as fx

    tmp = Path(tempfile.mkdtemp(prefix="robustad-bench-"))
    env = {**os.environ, "ROBUSTAD_CACHE_DIR": str(tmp / "cache")}
    fx.write_mnist(tmp / "arrays", per_class=(3, 2))
    fx.write_cifar10(tmp / "arrays", per_class=(5, 2))
    fx.write_cifar100(tmp / "arrays", per_class=(2, 1))
    fx.write_svhn(tmp / "arrays", per_class=(3, 2))
    fx.write_fmnist(tmp / "fmnist", per_class=(4, 3))
    fx.write_mvtec(tmp / "mvtec", "bottle", n_train=6, n_good=3, defects={"crack": 2, "scratch": 2})
    fx.write_visa(tmp / "visa", "candle", n_train=5, n_normal=3, n_anomaly=3)
    fx.write_imagefolder(tmp / "imagefolder", {"ants": 5, "bees": 5, "cats": 10})
    small = {"image_size": 32}
    specs = [
        ("mnist", tmp / "arrays", 3, {}),
        ("fmnist", tmp / "fmnist", 6, {}),
        ("cifar10", tmp / "arrays", 4, {}),
        ("cifar100", tmp / "arrays", 7, {}),
        ("svhn", tmp / "arrays", 0, {}),
        ("mvtec", tmp / "mvtec", 0, small),
        ("visa", tmp / "visa", 0, small),
        ("folder", tmp / "mvtec" / "bottle", 0, small),
        ("imagefolder", tmp / "imagefolder", 1, small),
    ]
    print("## Loaders on the test fixtures (fresh process each)\n")
    print("| dataset | params | train | test (normal) | masks | image cache | load s | peak MiB |")
    print("|---|---|---|---|---|---|---:|---:|")
    for name, root, cls, params in specs:
        r = measure({"name": name, "root": str(root), "cls": cls, "params": params}, env)
        print(f"| {name} | {params or ''} | {r['train']} | {r['test']} ({r['normals']}) | {r['masks']} "
              f"| {r['cache_0'] or '-'} | {r['time_0']:.3f} | {r['peak_mib']:.1f} |")  # fmt: skip

    if (FMNIST_DEBIAN / "train-images-idx3-ubyte.gz").is_file():
        print("\n## Real Fashion-MNIST (Debian files), class 0, fresh process\n")
        print("| train | test (normal) | load s (first) | load s (same process again) | peak MiB |")
        print("|---|---|---:|---:|---:|")
        r = measure({"name": "fmnist", "root": None, "cls": 0, "repeat": 2}, env)
        print(f"| {r['train']} | {r['test']} ({r['normals']}) | {r['time_0']:.3f} | {r['time_1']:.3f} "
              f"| {r['peak_mib']:.1f} |")  # fmt: skip
    else:
        print(f"\n(real Fashion-MNIST not measured: {FMNIST_DEBIAN} is absent)")

    t0 = time.perf_counter()
    write_big_mvtec(tmp / "big", args.mvtec_images, args.native)
    png_mib = sum(f.stat().st_size for f in (tmp / "big").rglob("*.png")) / 2**20
    print(f"\n## MVTec-style category: {args.mvtec_images} RGB PNGs of {args.native}×{args.native} px "
          f"({png_mib:.0f} MiB of PNG, written in {time.perf_counter() - t0:.1f} s)\n")  # fmt: skip
    print("| image_size | train | test | 1st load s (decode) | 2nd load s (memory) | new process s (disk) "
          "| peak MiB (1st) | cache file MiB |")  # fmt: skip
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for size in (224, 64):
        before = set((tmp / "cache" / "images").glob("*.npz")) if (tmp / "cache").exists() else set()
        spec = {
            "name": "mvtec",
            "root": str(tmp / "big"),
            "cls": 0,
            "params": {"image_size": size},
            "repeat": 2,
        }
        first = measure(spec, env)
        again = measure({**spec, "repeat": 1}, env)
        new = set((tmp / "cache" / "images").glob("*.npz")) - before
        cache_mib = sum(f.stat().st_size for f in new) / 2**20
        assert (first["cache_0"], first["cache_1"], again["cache_0"]) == ("decoded", "memory", "disk")
        print(f"| {size} | {first['train']} | {first['test']} | {first['time_0']:.2f} "
              f"| {first['time_1']:.4f} | {again['time_0']:.3f} | {first['peak_mib']:.0f} "
              f"| {cache_mib:.1f} |")  # fmt: skip
    print(f"\n(files in {tmp}; delete it when done)")


if __name__ == "__main__":
    main()
