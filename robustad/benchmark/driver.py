"""The driver: the only writer of ``<out>/bench.sqlite`` and ``<out>/checkpoints/``.

It expands the grid, skips the jobs the store has finished, hands the rest to an
executor and stores what comes back: a finished job with its per-sample scores, a
failed one with its traceback (and goes on), the cross-job flags of a model once its
eval jobs are stored. Executors compute with the step functions of
``robustad.benchmark.runner`` and never write:

local  one job after another in this process (the default);
ray    one Ray task per fit and per eval job (``robustad.benchmark.ray_executor``).

Both use the same job ids and skip rules, so a run started on one resumes on the other.
``merge_results`` (``bench merge``) copies the finished jobs of other results folders
into one, e.g. runs split by class over machines without a shared Ray cluster.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from robustad.attacks.reliability import cross_job_flags
from robustad.benchmark import runner
from robustad.benchmark.jobs import EvalJob, FitJob, dataset_classes, expand_grid
from robustad.benchmark.progress import Progress
from robustad.benchmark.provenance import git_revision, library_versions, resolve_device
from robustad.benchmark.store import Store
from robustad.errors import UserError
from robustad.methods.base import Detector
from robustad.registry import ATTACKS


def run_grid(cfg: dict[str, Any], out: str | Path, quiet: bool = False, plugins=()) -> dict[str, int]:
    """Run every missing job of the configured grid; returns counts of what happened.

    ``plugins``: the ``--plugin`` modules of the run, which remote workers import too.
    """
    from robustad.methods.weights import downloads_allowed

    with downloads_allowed(bool(cfg.get("download"))):  # pretrained weights, only with --download
        return _run_grid(cfg, Path(out), quiet, list(plugins))


def _run_grid(cfg: dict[str, Any], out: Path, quiet: bool, plugins: list[str]) -> dict[str, int]:
    from robustad.config import check_buildable

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
    executor = cfg.get("executor") or "local"
    if executor == "ray":
        from robustad.benchmark import ray_executor

        ray_executor.check_options(cfg, device)  # before the data and the cluster
    grid = expand_grid(cfg)
    counts = {"done": 0, "skipped": 0, "failed": 0}

    with Store(out / "bench.sqlite") as store:
        store.check_writable()
        for dataset in cfg["datasets"]:  # one load per dataset
            runner.load_config_dataset(cfg, dataset, dataset_classes(dataset, cfg["classes"])[0])  # fmt: skip
        progress = Progress(grid.n_jobs, quiet=quiet)
        try:
            if executor == "ray":
                ray_executor.run(grid, cfg, Writer(store, ckpt_dir, cfg, progress, counts), device,
                                 plugins=plugins, quiet=quiet)  # fmt: skip
            else:
                writer = Writer(store, ckpt_dir, cfg, progress, counts)
                for fit in grid.fits:
                    _run_fit_and_evals(fit, grid.evals[fit], cfg, writer, device)
        finally:
            progress.close()
    return counts


# -- what the driver writes ------------------------------------------------------------
def _row(job: FitJob | EvalJob, cfg: dict[str, Any], started: float, finished: float | None = None) -> dict:
    fit = job if isinstance(job, FitJob) else job.fit
    finished = time.time() if finished is None else finished
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
        "finished": finished,
        "duration": finished - started,
        "versions": library_versions(),
        "git_rev": git_revision(),
    }
    if isinstance(job, EvalJob):
        row.update(attack=job.attack, norm=job.threat.norm, eps=job.threat.eps)
    return row


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a killed run never leaves half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Writer:
    """Everything the driver writes for one run, and the counts and progress it keeps."""

    def __init__(self, store: Store, ckpt_dir: Path, cfg: dict[str, Any], progress: Progress, counts: dict):
        self.store, self.ckpt_dir, self.cfg = store, ckpt_dir, cfg
        self.progress, self.counts = progress, counts

    def checkpoint(self, fit: FitJob) -> Path:
        return self.ckpt_dir / f"{fit.job_id}.pt"

    def fit_done(self, fit: FitJob, result: runner.FitResult) -> None:
        # checkpoint first: a stored fit row always has its checkpoint
        write_atomic(self.checkpoint(fit), result.checkpoint)
        row = _row(fit, self.cfg, result.started, result.finished)
        row.update(status="done", metrics=result.metrics, info=result.info)
        self.store.put(row, labels=result.labels, clean=result.clean, maps=result.maps)
        self.counts["done"] += 1

    def eval_done(self, job: EvalJob, clean, result: runner.EvalResult) -> None:
        row = _row(job, self.cfg, result.started, result.finished)
        row.update(status="done", metrics=result.metrics, info=result.info)
        self.store.put(row, labels=result.labels, clean=clean, adv=result.adv, maps=result.maps)
        self.counts["done"] += 1

    def failed(self, job: FitJob | EvalJob, started: float, error: str) -> None:
        row = _row(job, self.cfg, started)
        row.update(status="failed", error=error)
        self.store.put(row)
        self.counts["failed"] += 1
        self.progress.log(f"FAILED {job.describe()} (traceback stored in {job.job_id})")

    def skipped(self, n: int) -> None:
        self.counts["skipped"] += n
        self.progress.advance(n)

    def cross_job_flags(self, fit_id: str) -> None:
        store_cross_job_flags(self.store, fit_id)


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
        flags = runner.reliability_flags(info) + cross.get(r["job_id"], [])
        if flags != info.get("flags"):
            info["flags"] = flags
            store.update_info(r["job_id"], info)


def load_finished_fit(fit: FitJob, ckpt: Path, store: Store, device: str) -> Detector:
    """The model of a done fit row, for its pending eval jobs.

    A missing or unreadable checkpoint stops the run (UserError) and changes nothing:
    marking the fit failed would delete its clean scores, and a refit would sit next
    to eval rows computed on the old model.
    """
    try:
        if not ckpt.is_file():
            raise FileNotFoundError("the file is missing")
        return runner.detector_from_checkpoint(fit, ckpt, device)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"the checkpoint {ckpt} of the finished {fit.describe()} cannot be read ({reason}); "
            f"its results in {store.path} are kept, and it is retrained only with a fresh --out "
            f"or after deleting its rows (job_id or fit_id {fit.job_id}) from the store"
        ) from exc


_load_finished_fit = load_finished_fit  # the name before the split


# -- merging results folders ---------------------------------------------------------------
def merge_results(sources: list[str | Path], out: str | Path) -> dict[str, int]:
    """Copy every finished job of the ``sources`` (results folders or their
    ``bench.sqlite``) into ``<out>``, with the checkpoints of the fits; returns counts.

    Job ids are hashes of everything that defines a job, so a job finished in two
    folders is the same job: the one in ``out`` is kept. A model is only combined
    with attacks run on that very model: an eval job is copied when its clean scores
    equal those of the fit row ``out`` holds for it (or ``out`` has none). A fit done
    in both folders with different clean scores (a training that is not bit-for-bit
    reproducible, e.g. another thread count) is a conflict: neither it nor its
    attacks are copied. Failed rows are not copied. The cross-job flags of every model
    that received attacks are recomputed.
    """
    out = Path(out)
    target = out / "bench.sqlite"
    paths = []
    for source in sources:
        path = Path(source)
        path = path / "bench.sqlite" if path.is_dir() or not path.suffix else path
        if not path.is_file():
            raise UserError(f"no results store at {path}; give a folder written by bench run")
        if target.exists() and path.resolve() == target.resolve():
            raise UserError(f"{path} is the target of the merge (--out {out}); give other folders")
        paths.append(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the results")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    counts = {"copied": 0, "already": 0, "conflicts": 0, "no_checkpoint": 0}
    touched: set[str] = set()
    with Store(target) as dst:
        dst.check_writable()
        for path in paths:
            with Store(path) as src:
                _merge_one(src, path.parent / "checkpoints", dst, out / "checkpoints", counts, touched)
        for fit_id in sorted(touched):
            store_cross_job_flags(dst, fit_id)
    return counts


def _merge_one(src: Store, src_ckpts: Path, dst: Store, dst_ckpts: Path, counts: dict, touched: set) -> None:
    def fit_clean(store: Store, fit_id: str):
        return (store.samples(fit_id) or {}).get("clean") if store.is_done(fit_id) else None

    for fit in src.jobs(kind="fit", status="done"):
        fid, samples = fit["job_id"], src.samples(fit["job_id"])
        ckpt, dst_ckpt = src_ckpts / f"{fid}.pt", dst_ckpts / f"{fid}.pt"
        if dst.is_done(fid):
            same = _equal(fit_clean(dst, fid), (samples or {}).get("clean"))
            counts["already" if same else "conflicts"] += 1
            if same and ckpt.is_file() and not dst_ckpt.is_file():
                write_atomic(dst_ckpt, ckpt.read_bytes())
            continue
        if ckpt.is_file():  # checkpoint first, as for a run: a fit row has its checkpoint
            write_atomic(dst_ckpt, ckpt.read_bytes())
        else:
            counts["no_checkpoint"] += 1
        dst.put(fit, **(samples or {}), maps=src.maps(fid))
        counts["copied"] += 1
    model_cleans: dict[str, Any] = {}
    for ev in src.jobs(kind="eval", status="done"):
        if dst.is_done(ev["job_id"]):
            counts["already"] += 1
            continue
        samples = src.samples(ev["job_id"])
        if ev["fit_id"] not in model_cleans:  # read each model's clean scores once
            model_cleans[ev["fit_id"]] = fit_clean(dst, ev["fit_id"])
        model_clean = model_cleans[ev["fit_id"]]
        if model_clean is not None and not _equal(model_clean, (samples or {}).get("clean")):
            counts["conflicts"] += 1  # an attack on another training of this fit id
            continue
        dst.put(ev, **(samples or {}), maps=src.maps(ev["job_id"]))
        counts["copied"] += 1
        touched.add(ev["fit_id"])


def _equal(a, b) -> bool:
    return a is not None and b is not None and np.array_equal(a, b)


# -- the local executor ------------------------------------------------------------------
def _run_fit_and_evals(fit: FitJob, evals: list[EvalJob], cfg: dict[str, Any], w: Writer,
                       device: str) -> None:  # fmt: skip
    store, progress = w.store, w.progress
    todo = [e for e in evals if not store.is_done(e.job_id)]
    fit_done = store.is_done(fit.job_id)
    if fit_done and not todo:
        w.skipped(1 + len(evals))
        return
    if fit_done:
        detector = load_finished_fit(fit, w.checkpoint(fit), store, device)
    data = runner.load_config_dataset(cfg, fit.dataset, fit.normal_class)

    started = time.time()
    try:
        if fit_done:
            w.counts["skipped"] += 1
        else:
            progress.log(fit.describe())
            result = runner.run_fit(fit, cfg, data=data, device=device,
                                    progress=progress.training(fit.method))  # fmt: skip
            detector = result.detector
            w.fit_done(fit, result)
    except (KeyboardInterrupt, UserError):
        raise
    except Exception:
        w.failed(fit, started, traceback.format_exc())
        progress.advance(1 + len(evals))
        return
    progress.advance(1)
    w.skipped(len(evals) - len(todo))

    clean = store.samples(fit.job_id)["clean"]
    fit_maps = store.maps(fit.job_id)
    for job in todo:
        progress.log(job.describe())
        started = time.time()
        try:
            result = runner.run_eval(job, detector, clean, cfg, data=data, device=device, fit_maps=fit_maps)
            w.eval_done(job, clean, result)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception:
            w.failed(job, started, traceback.format_exc())
        progress.advance(1)
    if todo:
        w.cross_job_flags(fit.job_id)
