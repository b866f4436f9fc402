"""The mutation harness (benchmarks/mutants.py): every listed mutant is caught.

Slow (a copy of the repository and one pytest run per mutant, a few minutes on two
cores): ``pytest -m slow tests/test_mutants.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_every_mutant_is_killed():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mutants.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "SURVIVED" not in proc.stdout and "STALE" not in proc.stdout
