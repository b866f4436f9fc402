"""Speed-up of ``--executor ray`` on a fit-bound grid: Deep SVDD on digits, 10 classes.

Three ways, interleaved and repeated, each a fresh ``bench run`` process and --out:
local with 1 torch thread, local with 2 threads, Ray (a private local Ray, one
1-CPU task per core: 2 workers on a 2-core machine). Prints the wall time of each and
the speed-up over one-thread local, median and range over the repeats.

Timings must be taken on an idle machine (nothing else on its cores): on a loaded
one they measure the load. Measured on two idle cores (docs/SCALING.md): Ray 1.30×
over one-thread local at 1,000 epochs per fit; Ray's fixed start/stop cost is 6–8 s,
so grids of second-long fits are slower on Ray (0.54× at 30 epochs).

    python benchmarks/ray_speedup.py                 # the measurement (~7 min on 2 cores)
    python benchmarks/ray_speedup.py --smoke         # 2 classes, 1 epoch, once: it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = {
    "local, 1 thread": (["--executor", "local"], "1"),
    "local, 2 threads": (["--executor", "local"], "2"),
    "ray, 2 workers": (["--executor", "ray", "--ray-cpus-per-task", "1"], "1"),
}


def one_run(way: str, classes: str, config: Path, workdir: Path) -> float:
    flags, threads = WAYS[way]
    out = Path(tempfile.mkdtemp(dir=workdir))
    cmd = [sys.executable, "-m", "robustad", "run", "--methods", "deepsvdd", "--datasets", "digits",
           "--classes", classes, "--attacks", "noise", "--device", "cpu", "--config", str(config),
           "--out", str(out), "--quiet", *flags]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{way} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    # 1,000 epochs: each fit takes a few seconds, so Ray's fixed start cost does not dominate
    parser.add_argument("--epochs", type=int, default=1000, help="Deep SVDD epochs per fit")
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--smoke", action="store_true", help="2 classes, 1 epoch, once: check it runs")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.epochs, args.classes = 1, 1, "0,1"

    times: dict[str, list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = workdir / "grid.yaml"
        config.write_text(f"method_params:\n  deepsvdd: {{epochs: {args.epochs}}}\n")
        for r in range(args.repeats):
            order = list(WAYS) if r % 2 == 0 else list(reversed(WAYS))  # interleaved, alternating
            for way in order:
                times[way].append(one_run(way, args.classes, config, workdir))
                print(f"repeat {r + 1}: {way}: {times[way][-1]:.1f} s", flush=True)

    print(f"\nDeep SVDD on digits, classes {args.classes}, {args.epochs} epochs, {args.repeats} repeat(s)")
    base = times["local, 1 thread"]
    for way, ts in times.items():
        speed = [b / t for b, t in zip(base, ts)]  # paired by repeat
        spread = f"range {min(speed):.2f}–{max(speed):.2f}"
        print(f"{way:<18} median {statistics.median(ts):6.1f} s (range {min(ts):.1f}–{max(ts):.1f})"
              f"  speed-up {statistics.median(speed):.2f}× ({spread})")  # fmt: skip
    if args.smoke:
        print("smoke run: the timings above mean nothing (tiny grid, fixed costs dominate)")


if __name__ == "__main__":
    main()
