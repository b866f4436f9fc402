"""The run: expand the grid into fit and eval jobs, skip what the store has, do the rest.

fit job  = (method, params, dataset, normal class, seed): train, save the checkpoint
           under ``<out>/checkpoints/<job_id>.pt``, score the clean test set.
eval job = (fit job, attack, attack params, norm, ε): load the checkpoint, attack the
           test set, store per-sample clean and adversarial scores and metrics.

Job ids are hashes of everything that affects the result, so adding an attack
never retrains and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustad.attacks.reliability import cross_job_flags, job_flags
from robustad.benchmark.metrics import (
    at_least_clean,
    attack_metrics,
    auroc,
    certified_metrics,
    pixel_auroc,
    score_metrics,
)
from robustad.benchmark.store import Store
from robustad.datasets import OneClassData, load_dataset
from robustad.errors import UserError
from robustad.methods.base import Detector, RunContext, load_detector_state, save_detector
from robustad.registry import ATTACKS, DATASETS, METHODS
from robustad.threat import ThreatModel, default_eps

# Bump when a change to training code must invalidate cached checkpoints.
FIT_VERSION = 1


# -- reproducibility and provenance ----------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# Packages whose code computes or feeds a result (aa/square, ta:<Name>, image loading,
# statistics): recorded with every result, "not installed" where absent.
VERSIONED_PACKAGES = ("pyautoattack", "torchvision", "scipy", "Pillow", "torchattacks")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    import importlib.metadata

    import sklearn

    from robustad import __version__

    versions = {
        "robustad": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
    }
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@lru_cache(maxsize=1)
def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def resolve_device(device: str) -> str:
    """auto, cpu, cuda, cuda:N or mps; anything else, or a device this machine lacks, is a
    UserError. config.validate calls this, so a bad --device stops the run before training
    instead of failing every fit."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(
            f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
            "CUDA device(s), cuda:0 upwards"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' was asked for but MPS is not available; use --device cpu")
    return device


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


# -- the work of one job (also used by ``robustad.benchmark()``) ----------------------
def fit_detector(job: FitJob, data: OneClassData, device: str, progress=None) -> Detector:
    seed_everything(job.seed)
    detector = METHODS.create(job.method, **job.params)
    ctx = RunContext(device=device, seed=job.seed, progress=progress)
    detector.fit(data, ctx)
    detector.eval()
    return detector


def attack_test_set(
    detector: Detector,
    attack_name: str,
    attack_params: dict,
    threat: ThreatModel,
    data: OneClassData,
    seed: int,
    batch_size: int,
    device: str,
    adv_maps: list | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Attack every test sample; returns adversarial scores (N,) and attack diagnostics.

    With ``adv_maps`` (a list), the anomaly maps of the attacked images are appended to it,
    batch by batch (localising detectors on data with masks). Attacks that declare
    ``needs_masks`` (``pgd-map``) receive the test masks.
    """
    seed_everything(seed)
    attack = ATTACKS.create(attack_name, **{**attack_params, "seed": seed})
    detector.eval()
    adv_scores, n = [], 0
    stats: dict[str, float] = {}  # batch-size-weighted means of attack.stats
    members: dict[str, list[torch.Tensor]] = {}  # aa: per-member adversarial scores
    for i in range(0, len(data.test_x), batch_size):
        xb = data.test_x[i : i + batch_size].to(device)
        yb = data.test_y[i : i + batch_size].to(device)
        extra = {}
        if getattr(attack, "needs_masks", False):
            masks = data.test_masks[i : i + batch_size].to(device) if data.test_masks is not None else None
            extra["masks"] = masks
        x_adv = attack.perturb(detector, xb, yb, threat, **extra)
        _check_budget(x_adv, xb, threat)
        if adv_maps is not None:
            with torch.no_grad():
                adv_maps.append(detector.anomaly_map(x_adv).float().cpu())
        # The score each point was judged by when the attack chose it (for a
        # stochastic detector a fresh draw could exceed the clean score).
        adv_scores.append(attack.adv_scores.detach().cpu())
        for k, v in attack.stats.items():
            stats[k] = stats.get(k, 0.0) + v * len(xb)
        n += len(xb)
        for name, scores in getattr(attack, "member_scores", {}).items():
            members.setdefault(name, []).append(scores)
    info: dict[str, Any] = {k: v / max(n, 1) for k, v in stats.items()}
    if members:  # for the masking? flag of ensembles such as aa
        labels = data.test_y.numpy()
        member_adv = {k: torch.cat(v).numpy() for k, v in members.items()}
        info["member_auroc"] = {k: auroc(v, labels) for k, v in member_adv.items()}
        info["member_sole_best_frac"] = sole_best_fractions(member_adv, labels)
    return torch.cat(adv_scores).numpy().astype(np.float64), info


def localises_on(detector: Detector, data: OneClassData) -> bool:
    """Pixel-level results apply: the data has masks and the detector an anomaly map."""
    return data.test_masks is not None and type(detector).anomaly_map is not Detector.anomaly_map


def anomaly_maps(detector: Detector, x: torch.Tensor, batch_size: int, device: str) -> np.ndarray:
    """(N,H,W) anomaly maps, in batches, without gradients."""
    detector.eval()
    with torch.no_grad():
        return torch.cat([detector.anomaly_map(x[i : i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(x), batch_size)]).numpy()  # fmt: skip


def sole_best_fractions(member_adv: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Per member of an ensemble, the fraction of samples whose worst case it alone
    reaches (its ``d·s`` strictly above every other member's): what the member adds."""
    names = list(member_adv)
    d = 1.0 - 2.0 * labels.astype(np.float64)
    obj = np.stack([d * member_adv[k] for k in names])  # (members, N)
    out = {}
    for i, name in enumerate(names):
        others = np.delete(obj, i, axis=0)
        best_other = others.max(0) if len(others) else np.full(obj.shape[1], -np.inf)
        out[name] = float((obj[i] > best_other).mean())
    return out


def _check_budget(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> None:
    """Guard the protocol: an attack that leaves the threat model is a bug, not a result."""
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if threat.norm == "Linf" else delta.norm(dim=1)
    if (size > threat.eps * (1 + 1e-4) + 1e-6).any() or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError(f"attack left the threat model {threat.label()} (max ‖δ‖ {size.max():.4g})")


def load_config_dataset(cfg: dict[str, Any], dataset: str, normal_class: int) -> OneClassData:
    return load_dataset(
        dataset,
        normal_class,
        cfg.get("data_root"),
        bool(cfg.get("download")),
        **cfg["dataset_params"].get(dataset, {}),
    )


def reliability_flags(info: dict[str, Any]) -> list[str]:
    """Flags of one eval job (zero-grad; masking? inside aa), docs/THREAT_MODEL.md."""
    return job_flags(info)


def store_cross_job_flags(store: Store, fit_id: str) -> None:
    """Recompute the flags that compare eval jobs of one model (masking?, non-monotone)
    and store them with each job, so they are part of every result."""
    rows = store.jobs(kind="eval", status="done", fit_id=fit_id)
    white_box = {}
    for r in rows:
        try:
            white_box[r["attack"]] = bool(ATTACKS.get(r["attack"]).metadata.get("white_box", True))
        except UserError:  # an attack from a plug-in that is not loaded now
            white_box[r["attack"]] = False
    cross = cross_job_flags(rows, white_box)
    for r in rows:
        info = dict(r.get("info") or {})
        flags = reliability_flags(info) + cross.get(r["job_id"], [])
        if flags != info.get("flags"):
            info["flags"] = flags
            store.update_info(r["job_id"], info)


# -- the driver --------------------------------------------------------------------------
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


def _row(job: FitJob | EvalJob, cfg: dict[str, Any], started: float) -> dict[str, Any]:
    fit = job if isinstance(job, FitJob) else job.fit
    row = {
        "job_id": job.job_id,
        "kind": "fit" if isinstance(job, FitJob) else "eval",
        "fit_id": None if isinstance(job, FitJob) else fit.job_id,
        "method": fit.method,
        "dataset": fit.dataset,
        "normal_class": fit.normal_class,
        "seed": fit.seed,
        "config": {**job.spec, "preset": cfg.get("preset"), "batch_size": cfg["batch_size"]},
        "started": started,
        "finished": time.time(),
        "duration": time.time() - started,
        "versions": library_versions(),
        "git_rev": git_revision(),
    }
    if isinstance(job, EvalJob):
        row.update(attack=job.attack, norm=job.threat.norm, eps=job.threat.eps)
    return row


def run_grid(cfg: dict[str, Any], out: str | Path, quiet: bool = False) -> dict[str, int]:
    """Run every missing job of the configured grid; returns counts of what happened."""
    from robustad.methods.weights import downloads_allowed

    with downloads_allowed(bool(cfg.get("download"))):  # pretrained weights, only with --download
        return _run_grid(cfg, out, quiet)


def _run_grid(cfg: dict[str, Any], out: str | Path, quiet: bool) -> dict[str, int]:
    from robustad.config import check_buildable

    out = Path(out)
    ckpt_dir = out / "checkpoints"
    # Everything below fails fast, before any training: the results folder, the device,
    # every method and attack built with its parameters, the store's write lock, the data.
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the results")
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the results folder {out} ({exc.strerror}); use another --out"
        raise UserError(msg) from exc
    device = resolve_device(cfg["device"])
    check_buildable(cfg)
    grid = expand_grid(cfg)
    counts = {"done": 0, "skipped": 0, "failed": 0}

    with Store(out / "bench.sqlite") as store:
        store.check_writable()
        for dataset in cfg["datasets"]:  # one load per dataset
            load_config_dataset(cfg, dataset, dataset_classes(dataset, cfg["classes"])[0])  # fmt: skip
        progress = Progress(grid.n_jobs, quiet=quiet)
        try:
            for fit in grid.fits:
                _run_fit_and_evals(fit, grid.evals[fit], cfg, store, ckpt_dir, device,
                                   progress, counts)  # fmt: skip
        finally:
            progress.close()
    return counts


def _load_finished_fit(fit: FitJob, ckpt: Path, store: Store, device: str) -> Detector:
    """The model of a done fit row, for its pending eval jobs.

    A missing or unreadable checkpoint stops the run (UserError) and changes nothing:
    marking the fit failed would delete its clean scores, and a refit would sit next
    to eval rows computed on the old model.
    """
    detector = METHODS.create(fit.method, **fit.params)
    try:
        if not ckpt.is_file():
            raise FileNotFoundError("the file is missing")
        return load_detector_state(detector, ckpt).to(device)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"the checkpoint {ckpt} of the finished {fit.describe()} cannot be read ({reason}); "
            f"its results in {store.path} are kept, and it is retrained only with a fresh --out "
            f"or after deleting its rows (job_id or fit_id {fit.job_id}) from the store"
        ) from exc


def _run_fit_and_evals(fit, evals, cfg, store, ckpt_dir, device, progress, counts) -> None:
    ckpt = ckpt_dir / f"{fit.job_id}.pt"
    todo = [e for e in evals if not store.is_done(e.job_id)]
    fit_done = store.is_done(fit.job_id)
    if fit_done and not todo:
        progress.advance(1 + len(evals))
        counts["skipped"] += 1 + len(evals)
        return
    if fit_done:
        detector = _load_finished_fit(fit, ckpt, store, device)
    data = load_config_dataset(cfg, fit.dataset, fit.normal_class)

    started = time.time()
    try:
        if fit_done:
            counts["skipped"] += 1
        else:
            progress.log(fit.describe())
            detector = fit_detector(fit, data, device, progress.training(fit.method))
            tmp = ckpt.with_suffix(".tmp")
            save_detector(detector, tmp)
            os.replace(tmp, ckpt)  # atomic: a killed run never leaves half a checkpoint
            clean = detector.score_batched(data.test_x, cfg["batch_size"]).numpy().astype(np.float64)
            row = _row(fit, cfg, started)
            metrics = score_metrics(clean, data.test_y.numpy(), "clean_")
            maps = None
            if localises_on(detector, data):
                masks = data.test_masks.numpy()
                maps = {"masks": masks, "clean": anomaly_maps(detector, data.test_x, cfg["batch_size"], device)}
                metrics["clean_pixel_auroc"] = pixel_auroc(maps["clean"], masks)
            row.update(
                status="done",
                metrics=metrics,
                info={"device": device, **detector.info(), "train_size": len(data.train_x)},
            )
            store.put(row, labels=data.test_y.numpy(), clean=clean, maps=maps)
            counts["done"] += 1
    except (KeyboardInterrupt, UserError):
        raise
    except Exception:
        row = _row(fit, cfg, started)
        row.update(status="failed", error=traceback.format_exc())
        store.put(row)
        counts["failed"] += 1
        progress.log(f"FAILED {fit.describe()} (traceback stored in {fit.job_id})")
        progress.advance(1 + len(evals))
        return
    progress.advance(1)
    progress.advance(len(evals) - len(todo))
    counts["skipped"] += len(evals) - len(todo)

    clean = store.samples(fit.job_id)["clean"]
    labels = data.test_y.numpy()
    for job in todo:
        progress.log(job.describe())
        started = time.time()
        try:
            seed = job.params.get("seed", fit.seed)  # a user's attack seed, else the run seed
            fit_maps = store.maps(fit.job_id) if localises_on(detector, data) else None
            adv_maps = [] if fit_maps is not None else None
            adv, info = attack_test_set(detector, job.attack, job.params, job.threat, data,
                                        seed, cfg["batch_size"], device, adv_maps)  # fmt: skip
            adv = at_least_clean(clean, adv, labels)
            row = _row(job, cfg, started)
            info["flags"] = reliability_flags(info)
            metrics = attack_metrics(clean, adv, labels)
            metrics.update(certified_metrics(detector, job.threat, clean, labels))
            maps = None
            if fit_maps is not None:
                maps = {**fit_maps, "adv": torch.cat(adv_maps).numpy()}
                metrics["clean_pixel_auroc"] = pixel_auroc(maps["clean"], maps["masks"])
                metrics["adv_pixel_auroc"] = pixel_auroc(maps["adv"], maps["masks"])
            row.update(status="done", metrics=metrics, info=info)
            store.put(row, labels=labels, clean=clean, adv=adv, maps=maps)
            counts["done"] += 1
        except (KeyboardInterrupt, UserError):
            raise
        except Exception:
            row = _row(job, cfg, started)
            row.update(status="failed", error=traceback.format_exc())
            store.put(row)
            counts["failed"] += 1
            progress.log(f"FAILED {job.describe()} (traceback stored in {job.job_id})")
        progress.advance(1)
    if todo:
        store_cross_job_flags(store, fit.job_id)


def benchmark(
    method: str,
    dataset: str = "digits",
    normal_class: int = 0,
    attacks: list[str] | tuple[str, ...] = ("pgd",),
    preset: str = "quick",
    seed: int = 0,
    eps: float | str | None = None,
    norm: str | None = None,
    method_params: dict | None = None,
    attack_params: dict | None = None,
    data_root: str | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """One call, RobustBench style: fit ``method`` on one normal class and attack it.

    Returns ``{"clean": {auroc, aupr, fpr95}, "attacks": {name: metrics}, ...}`` with
    AUROC as a fraction in [0, 1]. Nothing is written to disk.
    """
    from robustad.config import resolve

    overrides: dict[str, Any] = {"methods": [method], "datasets": [dataset],
                                 "classes": [normal_class], "seeds": [seed],
                                 "attacks": list(attacks), "data_root": data_root}  # fmt: skip
    if eps is not None:
        overrides["eps"] = [eps]
    if norm is not None:
        overrides["norm"] = norm
    if method_params:
        overrides["method_params"] = {method: method_params}
    if attack_params:
        overrides["attack_params"] = attack_params
    cfg = resolve(preset, overrides=overrides)
    dev = resolve_device(device)
    grid = expand_grid(cfg)
    fit = grid.fits[0]
    data = load_config_dataset(cfg, dataset, normal_class)
    detector = fit_detector(fit, data, dev)
    labels = data.test_y.numpy()
    clean = detector.score_batched(data.test_x, cfg["batch_size"]).numpy().astype(np.float64)
    result: dict[str, Any] = {
        "method": fit.method,
        "dataset": dataset,
        "normal_class": normal_class,
        "clean": score_metrics(clean, labels),
        "attacks": {},
    }
    for job in grid.evals[fit]:
        adv, info = attack_test_set(detector, job.attack, job.params, job.threat, data,
                                    job.params.get("seed", seed), cfg["batch_size"], dev)  # fmt: skip
        adv = at_least_clean(clean, adv, labels)
        metrics = attack_metrics(clean, adv, labels)
        metrics.update(certified_metrics(detector, job.threat, clean, labels))
        metrics.update(threat=job.threat.to_dict(), flags=reliability_flags(info))
        result["attacks"][job.attack] = metrics
    return result
