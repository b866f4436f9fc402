"""Job identity: fit and eval job specs, their ids, and the grid a config expands to.

fit job  = (method, params, dataset, normal class, seed): train, save the checkpoint
           under ``<out>/checkpoints/<job_id>.pt``, score the clean test set.
eval job = (fit job, attack, attack params, norm, ε): load the checkpoint, attack the
           test set, store per-sample clean and adversarial scores and metrics.

Job ids are hashes of everything that affects the result, so adding an attack
never retrains and an interrupted run resumes where it stopped, on any executor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustad.registry import ATTACKS, DATASETS, METHODS
from robustad.threat import ThreatModel, default_eps

# Bump when a change to training code must invalidate cached checkpoints.
FIT_VERSION = 1


def _hash(spec: dict[str, Any]) -> str:
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def full_params(registry, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Constructor defaults with the overrides applied (so a changed default changes the hash)."""
    import inspect

    defaults = {k: v for k, v in registry.get(name).parameters().items() if v is not inspect.Parameter.empty}
    return {**defaults, **overrides}


def method_fit_version(name: str) -> int:
    """``Detector.fit_version`` of a registered method (1 for factories without one)."""
    factory = METHODS.get(name).factory
    return int(getattr(factory, "fit_version", 1))


# -- job specs ----------------------------------------------------------------------
@dataclass(frozen=True)
class FitJob:
    method: str
    params: dict
    dataset: str
    normal_class: int
    seed: int
    data_params: dict = field(default_factory=dict)
    # Part of the identity: `folder`/`imagefolder` data *is* whatever lies at the root.
    data_root: str | None = None
    # Detector.fit_version of the method's class; only when > 1, so older ids stay valid
    method_version: int = 1
    # SHA-256 of the pretrained weights the fit loads (methods.weights); None: no file
    weights_sha256: str | None = None

    @property
    def spec(self) -> dict[str, Any]:
        return {
            "kind": "fit",
            **({"method_version": self.method_version} if self.method_version != 1 else {}),
            "method": self.method,
            "params": self.params,
            **({"weights_sha256": self.weights_sha256} if self.weights_sha256 else {}),
            "dataset": self.dataset,
            "data_params": self.data_params,
            # only when given, so runs on the default locations keep their ids
            **({"data_root": self.data_root} if self.data_root else {}),
            "normal_class": self.normal_class,
            "seed": self.seed,
            "fit_version": FIT_VERSION,
        }

    @property
    def job_id(self) -> str:
        return "fit-" + _hash(self.spec)

    def describe(self) -> str:
        return f"fit {self.method} on {self.dataset} class {self.normal_class} seed {self.seed}"

    def __hash__(self) -> int:
        return hash(self.job_id)


@dataclass(frozen=True)
class EvalJob:
    fit: FitJob
    attack: str
    params: dict
    threat: ThreatModel

    #: the evaluation batch size, for attacks whose results depend on it (None otherwise)
    batch_size: int | None = None

    @property
    def spec(self) -> dict[str, Any]:
        return {
            "kind": "eval",
            "fit_id": self.fit.job_id,
            "attack": self.attack,
            "params": self.params,
            "norm": self.threat.norm,
            "eps": round(self.threat.eps, 12),
            **({"batch_size": self.batch_size} if self.batch_size is not None else {}),
        }

    @property
    def job_id(self) -> str:
        return "eval-" + _hash(self.spec)

    def describe(self) -> str:
        return (
            f"{self.attack} ({self.threat.label()}) on {self.fit.method} / {self.fit.dataset} "
            f"class {self.fit.normal_class} seed {self.fit.seed}"
        )

    def __hash__(self) -> int:
        return hash(self.job_id)


@dataclass
class Grid:
    fits: list[FitJob] = field(default_factory=list)
    evals: dict[FitJob, list[EvalJob]] = field(default_factory=dict)

    @property
    def n_jobs(self) -> int:
        return len(self.fits) + sum(len(v) for v in self.evals.values())


def dataset_classes(dataset: str, classes: Any) -> list[int]:
    n = DATASETS.get(dataset).metadata.get("num_classes", 1)
    return list(range(n)) if classes == "all" else list(classes)


def dataset_eps(cfg: dict[str, Any], dataset: str) -> list[float]:
    if cfg["eps"] != "auto":
        return list(cfg["eps"])
    return [default_eps(cfg["norm"], int(DATASETS.get(dataset).metadata.get("native_size", 32)))]


def eval_batch_size(attack: str, cfg: dict[str, Any]) -> int | None:
    """The batch size, when it is part of an eval job's identity: for attacks that are
    not ``batch_independent`` (their random draws span the batch), a different
    ``--batch-size`` is a different result."""
    factory = ATTACKS.get(attack).factory
    independent = getattr(factory, "batch_independent", False)  # unknown: assume not
    return None if independent else int(cfg["batch_size"])


def expand_grid(cfg: dict[str, Any]) -> Grid:
    """method × dataset × normal class × seed fit jobs, each with attack × ε eval jobs."""
    grid = Grid()
    root = cfg.get("data_root")
    data_root = str(Path(root).expanduser().resolve()) if root else None
    for method in cfg["methods"]:
        mparams = full_params(METHODS, method, cfg["method_params"].get(method, {}))
        # resolving pretrained weights here stops a run with missing ones before training
        identity = getattr(METHODS.get(method).factory, "weights_identity", None)
        weights_sha256 = identity(mparams) if callable(identity) else None
        for dataset in cfg["datasets"]:
            for c in dataset_classes(dataset, cfg["classes"]):
                for seed in cfg["seeds"]:
                    dparams = cfg["dataset_params"].get(dataset, {})
                    fit = FitJob(
                        method,
                        mparams,
                        dataset,
                        int(c),
                        int(seed),
                        dparams,
                        data_root,
                        method_fit_version(method),
                        weights_sha256,
                    )
                    grid.fits.append(fit)
                    evals = []
                    for attack in cfg["attacks"]:
                        user = cfg["attack_params"].get(attack, {})
                        aparams = full_params(ATTACKS, attack, user)
                        # The attack seed is the run seed unless the user sets one; a
                        # user's seed is kept and is part of the eval job's identity.
                        aparams.pop("seed", None)
                        if "seed" in user:
                            aparams["seed"] = int(user["seed"])
                        for eps in dataset_eps(cfg, dataset):
                            threat = ThreatModel(cfg["norm"], eps, cfg["attack_mode"])
                            evals.append(EvalJob(fit, attack, aparams, threat, eval_batch_size(attack, cfg)))
                    grid.evals[fit] = evals
    return grid
