"""The work of one job: pure step functions that compute and never touch the store.

``run_fit(job, cfg) -> FitResult`` trains a detector, serialises its checkpoint and
scores the clean test set; ``run_eval(job, detector, clean, cfg) -> EvalResult``
attacks the test set. Every executor (``robustad.benchmark.driver``: local, or Ray
tasks in ``robustad.benchmark.ray_executor``) and the one-call ``benchmark()`` run
these same functions, so a job computes the same numbers wherever it runs; the
driver alone writes the store and the checkpoints.

Job specs and the grid live in ``jobs``, provenance in ``provenance``, the progress
bar in ``progress``; their names are re-exported here for existing imports.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustad.attacks.reliability import job_flags
from robustad.benchmark.jobs import (  # noqa: F401  (re-exported)
    FIT_VERSION,
    EvalJob,
    FitJob,
    Grid,
    _hash,
    dataset_classes,
    dataset_eps,
    eval_batch_size,
    expand_grid,
    full_params,
    method_fit_version,
)
from robustad.benchmark.metrics import (
    at_least_clean,
    attack_metrics,
    auroc,
    certified_metrics,
    pixel_auroc,
    score_metrics,
)
from robustad.benchmark.progress import Progress  # noqa: F401  (re-exported)
from robustad.benchmark.provenance import (  # noqa: F401  (re-exported)
    DEVICE_PATTERN,
    VERSIONED_PACKAGES,
    git_revision,
    library_versions,
    resolve_device,
    seed_everything,
)
from robustad.datasets import OneClassData, load_dataset
from robustad.methods.base import Detector, RunContext, load_detector_state, save_detector
from robustad.registry import ATTACKS, METHODS
from robustad.threat import ThreatModel


# -- what a step returns -------------------------------------------------------------
@dataclass
class FitResult:
    """A fitted model's results: what the driver stores for a fit job."""

    labels: np.ndarray  # (N,) test labels
    clean: np.ndarray  # (N,) float64 clean scores
    metrics: dict[str, Any]
    info: dict[str, Any]
    checkpoint: bytes | None  # save_detector's bytes (None when not asked for)
    maps: dict[str, np.ndarray] | None = None  # masks and clean maps of a localising detector
    detector: Detector | None = None  # the fitted model, in the process that fitted it
    started: float = 0.0
    finished: float = 0.0


@dataclass
class EvalResult:
    """An attacked test set's results: what the driver stores for an eval job."""

    labels: np.ndarray
    adv: np.ndarray  # (N,) float64 attacked scores (at least the clean objective)
    metrics: dict[str, Any]
    info: dict[str, Any]
    maps: dict[str, np.ndarray] | None = None  # masks, clean and attacked maps
    started: float = 0.0
    finished: float = field(default=0.0)


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
        threat.check_budget(x_adv, xb)
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


def checkpoint_bytes(detector: Detector) -> bytes:
    """The checkpoint ``save_detector`` writes, as bytes (the driver writes the file)."""
    buf = io.BytesIO()
    save_detector(detector, buf)
    return buf.getvalue()


def detector_from_checkpoint(job: FitJob, checkpoint: bytes | str | Path, device: str) -> Detector:
    """The fitted model of ``job`` from checkpoint bytes (or a file), on ``device``."""
    source = io.BytesIO(checkpoint) if isinstance(checkpoint, (bytes, bytearray, memoryview)) else checkpoint
    detector = METHODS.create(job.method, **job.params)
    return load_detector_state(detector, source).to(device)


# -- the step functions ----------------------------------------------------------------
def run_fit(
    job: FitJob,
    cfg: dict[str, Any],
    *,
    data: OneClassData | None = None,
    device: str | None = None,
    progress=None,
    checkpoint: bool = True,
    maps: bool = True,
) -> FitResult:
    """Train ``job``'s detector and score the clean test set; touches no store or file.

    ``device`` defaults to ``cfg["device"]`` resolved, ``data`` to the configured
    dataset; ``checkpoint``: also return the saved state as bytes; ``maps``: clean
    anomaly maps and pixel AUROC for a localising detector on data with masks.
    """
    started = time.time()
    device = device or resolve_device(cfg["device"])
    if data is None:
        data = load_config_dataset(cfg, job.dataset, job.normal_class)
    detector = fit_detector(job, data, device, progress)
    state = checkpoint_bytes(detector) if checkpoint else None
    clean = detector.score_batched(data.test_x, cfg["batch_size"]).numpy().astype(np.float64)
    labels = data.test_y.numpy()
    metrics = score_metrics(clean, labels, "clean_")
    fit_maps = None
    if maps and localises_on(detector, data):
        masks = data.test_masks.numpy()
        fit_maps = {"masks": masks, "clean": anomaly_maps(detector, data.test_x, cfg["batch_size"], device)}
        metrics["clean_pixel_auroc"] = pixel_auroc(fit_maps["clean"], masks)
    info = {"device": device, **detector.info(), "train_size": len(data.train_x)}
    return FitResult(labels, clean, metrics, info, state, fit_maps, detector, started, time.time())


def run_eval(
    job: EvalJob,
    detector: Detector,
    clean: np.ndarray,
    cfg: dict[str, Any],
    *,
    data: OneClassData | None = None,
    device: str | None = None,
    fit_maps: dict[str, np.ndarray] | None = None,
) -> EvalResult:
    """Attack the test set with ``job``'s attack; touches no store or file.

    ``clean`` are the fit's stored clean scores; ``fit_maps`` its stored masks and clean
    maps (used when the detector localises on this data: the attacked maps are added).
    """
    started = time.time()
    device = device or resolve_device(cfg["device"])
    fit = job.fit
    if data is None:
        data = load_config_dataset(cfg, fit.dataset, fit.normal_class)
    labels = data.test_y.numpy()
    seed = job.params.get("seed", fit.seed)  # a user's attack seed, else the run seed
    fit_maps = fit_maps if fit_maps is not None and localises_on(detector, data) else None
    adv_maps = [] if fit_maps is not None else None
    adv, info = attack_test_set(detector, job.attack, job.params, job.threat, data,
                                seed, cfg["batch_size"], device, adv_maps)  # fmt: skip
    adv = at_least_clean(clean, adv, labels)
    info["flags"] = reliability_flags(info)
    metrics = attack_metrics(clean, adv, labels)
    metrics.update(certified_metrics(detector, job.threat, clean, labels))
    maps = None
    if fit_maps is not None:
        maps = {**fit_maps, "adv": torch.cat(adv_maps).numpy()}
        metrics["clean_pixel_auroc"] = pixel_auroc(maps["clean"], maps["masks"])
        metrics["adv_pixel_auroc"] = pixel_auroc(maps["adv"], maps["masks"])
    return EvalResult(labels, adv, metrics, info, maps, started, time.time())


def run_grid(cfg: dict[str, Any], out: str | Path, quiet: bool = False, plugins=()) -> dict[str, int]:
    """Run every missing job of the configured grid (``robustad.benchmark.driver``)."""
    from robustad.benchmark.driver import run_grid as drive

    return drive(cfg, out, quiet=quiet, plugins=plugins)


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
    fitted = run_fit(fit, cfg, data=data, device=dev, checkpoint=False, maps=False)
    result: dict[str, Any] = {
        "method": fit.method,
        "dataset": dataset,
        "normal_class": normal_class,
        "clean": score_metrics(fitted.clean, fitted.labels),
        "attacks": {},
    }
    for job in grid.evals[fit]:
        evaluated = run_eval(job, fitted.detector, fitted.clean, cfg, data=data, device=dev)
        metrics = evaluated.metrics
        metrics.update(threat=job.threat.to_dict(), flags=evaluated.info["flags"])
        result["attacks"][job.attack] = metrics
    return result
