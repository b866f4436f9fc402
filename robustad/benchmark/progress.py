"""The progress display of a run: a bar over jobs on a terminal, one line per job otherwise."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A tqdm bar over jobs on a terminal; one line per job otherwise (logs, CI)."""

    def __init__(self, total: int, quiet: bool = False):
        from tqdm.auto import tqdm

        self.interactive = sys.stderr.isatty() and not quiet
        self.quiet = quiet
        self.total = total
        self.done = 0
        self.bar = tqdm(total=total, desc="jobs", unit="job") if self.interactive else None

    def log(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(msg[:60])
        elif not self.quiet:
            print(f"[{self.done}/{self.total}] {msg}", file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def training(self, desc: str):
        """A callback for ``RunContext.progress``: an inner bar over epochs."""
        if self.bar is None:
            return None
        from tqdm.auto import tqdm

        state: dict[str, Any] = {}

        def report(step: int, total: int, logs: dict[str, float]) -> None:
            if "bar" not in state:
                state["bar"] = tqdm(total=total, desc=desc, unit="epoch", leave=False)
            state["bar"].update(step - state["bar"].n)
            state["bar"].set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
            if step >= total:
                state["bar"].close()

        return report

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
