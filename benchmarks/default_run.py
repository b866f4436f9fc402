"""Wall time and peak memory of the README's main job (`bench run`, quick preset).

    python benchmarks/default_run.py [--out DIR] [extra bench run flags...]

Runs `bench run` in a child process into a fresh folder (default: a temporary
one) and prints the wall time, the child's peak resident memory and the
leaderboard it wrote. Target: the default run finishes in under 5 minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="results folder (default: a new temporary folder)")
    args, extra = parser.parse_known_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="robustad-default-"))
    cmd = [sys.executable, "-m", "robustad", "run", "--out", str(out), "--quiet", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench run failed ({done.returncode}):\n{done.stderr}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(done.stdout)
    print(f"command: {' '.join(cmd)}")
    print(f"wall time: {wall:.1f} s   peak memory (RSS): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
