"""The ``Detector`` interface every method implements (docs/EXTENDING.md, "A method").

Rhythm of scikit-learn: the constructor only stores parameters, ``fit`` does the
work and returns ``self``, fitted state lives in modules and buffers so that
``state_dict()`` round-trips it. ``score`` is a differentiable, deterministic
function of each image alone (no batch statistics, no global RNG).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class RunContext:
    """What a run hands to ``fit``: device, seed and a progress callback."""

    device: str = "cpu"
    seed: int = 0
    progress: Callable[[int, int, dict[str, float]], None] | None = None

    def report(self, step: int, total: int, **logs: float) -> None:
        if self.progress is not None:
            self.progress(step, total, logs)


class Detector(nn.Module):
    """Base class for anomaly detectors.

    Subclasses implement ``build(input_shape)`` (create the modules for C×H×W
    inputs), ``fit(data, ctx)`` (call ``self.build`` first, train, return self)
    and ``score(x)``: (N,C,H,W) in [0,1] → (N,), higher = more anomalous.
    """

    #: the score has useful gradients w.r.t. the input
    differentiable: bool = True
    #: the score is random (attacks then average gradients, EOT)
    stochastic: bool = False
    #: bump when a change to this method's training changes what ``fit`` returns: part
    #: of the runner's fit-job id, so only this method's cached checkpoints are redone
    fit_version: int = 1

    def __init__(self) -> None:
        super().__init__()
        self.input_shape: tuple[int, int, int] | None = None

    def build(self, input_shape: tuple[int, int, int]) -> None:
        """Create the modules for inputs of shape (C,H,W); called by fit and by loading."""
        self.input_shape = tuple(int(s) for s in input_shape)

    def fit(self, data, ctx: RunContext | None = None) -> Detector:
        raise NotImplementedError

    def score(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def lipschitz_l2(self) -> float | None:
        """A proven L2 Lipschitz constant of ``score`` on [0,1] pixels, or None (the default).

        A detector that declares one gets a certified AUROC on L2 threats
        (``robustad.benchmark.metrics.certified_auroc``): no L2 attack of radius ε can
        move a score by more than ``lipschitz_l2() * ε``.
        """
        return None

    def anomaly_map(self, x: Tensor) -> Tensor | None:
        """(N,H,W) pixel anomaly scores for localising methods; None otherwise."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        return self.score(x)

    def info(self) -> dict[str, Any]:
        """Extra facts recorded with results (e.g. 'weights: random init')."""
        return {}

    def score_batched(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Scores without gradients, in batches; (N,) on the CPU."""
        self.eval()
        device = next(self.parameters(), torch.empty(0)).device
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(self.score(x[i : i + batch_size].to(device)).float().cpu())
        return torch.cat(out) if out else torch.empty(0)


def seeded_fit_start(
    detector: Detector, x: Tensor, max_train: int | None, seed: int
) -> tuple[Tensor, torch.Generator]:
    """The start of a seeded fit: ``max_train`` training images drawn without
    replacement (all when None), then ``detector.build`` with torch's global RNG
    seeded by ``seed`` (restored afterwards), so the initial weights depend on the
    seed alone. Returns the images and the generator for the rest of training."""
    gen = torch.Generator().manual_seed(seed)
    if max_train is not None and max_train < len(x):
        x = x[torch.randperm(len(x), generator=gen)[:max_train]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        detector.build(tuple(x.shape[1:]))
    return x, gen


def store_hparams(obj: Detector, local_vars: dict[str, Any]) -> None:
    """Record constructor arguments (call as ``store_hparams(self, locals())``)."""
    obj._hparams = {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}
    for k, v in obj._hparams.items():
        setattr(obj, k, v)


def save_detector(detector: Detector, path) -> None:
    """Save the fitted state; loading needs no unpickling of arbitrary objects."""
    import json

    meta = {"input_shape": list(detector.input_shape or []), "info": detector.info()}
    torch.save({"state": detector.state_dict(), "meta": json.dumps(meta)}, path)


def load_detector_state(detector: Detector, path) -> Detector:
    """Build ``detector`` for the saved input shape and load its fitted state."""
    import json

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(ckpt["meta"])
    detector.build(tuple(meta["input_shape"]))
    detector.load_state_dict(ckpt["state"])
    detector.eval()
    return detector
