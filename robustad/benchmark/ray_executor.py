"""``--executor ray``: the grid as Ray tasks, from one machine's cores to a cluster.

One task per fit job and one per eval job, each running the step functions of
``robustad.benchmark.runner``. A fit task returns its results and the checkpoint bytes;
the driver (``robustad.benchmark.driver``) writes the checkpoint and the row, and only
then submits that fit's eval tasks, which receive the checkpoint, the clean scores and
the clean maps through the object store. Results stream back with ``ray.wait``; a
bounded number of tasks is in flight. Job ids and skip rules are the local executor's.

Failures: an exception inside a task is caught there and stored as the job's failure
(with its traceback); a ``UserError`` stops the run (exit 2); a crashed worker gets one
retry (``max_retries=1``), then the job is stored as failed; a task killed for memory
is retried once (``RAY_task_oom_retries``), not forever. Ctrl-C cancels every task.
Pitfalls (token authentication, ``ray.init()`` joining any cluster, GPUs visible to
CPU tasks, read-only arrays, SQLite on network filesystems): docs/SCALING.md.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import sysconfig
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from robustad.errors import UserError

#: ``--ray-address`` meaning "the cluster already running on this machine"
AUTO = "auto"
#: one retry for a crashed worker (or a task killed for memory), then the job fails
MAX_RETRIES = 1
#: filesystems on which SQLite's WAL mode (shared memory, locks) is unsafe
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "lustre", "gpfs",
                       "beegfs", "ceph", "fuse.ceph", "glusterfs", "fuse.glusterfs", "9p", "afs"}  # fmt: skip


# -- before the run ------------------------------------------------------------------------
def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise UserError(
            "--executor ray needs Ray, which is not installed; pip install 'robustad[ray]'"
        ) from exc
    return ray


def task_resources(cfg: dict[str, Any], device: str) -> tuple[float, float, str]:
    """(CPUs, GPUs, device) of every task. The driver chooses the device: a run on CUDA
    gives each task ``ray_gpus_per_task`` (default 1) and the device ``cuda`` (the GPU
    Ray assigned it); any other run gives tasks no GPU."""
    cpus = float(cfg.get("ray_cpus_per_task") or 1)
    gpus = cfg.get("ray_gpus_per_task")
    if device.startswith("cuda"):
        gpus = 1.0 if gpus is None else float(gpus)
        if gpus <= 0:
            raise UserError(
                "the run uses CUDA but --ray-gpus-per-task is 0; give a GPU share or --device cpu"
            )
        return cpus, gpus, "cuda"
    if gpus:
        raise UserError(
            f"--ray-gpus-per-task {gpus:g} asks for GPUs but the run's device is {device}; "
            "give --device cuda (the driver needs to see CUDA too) or drop --ray-gpus-per-task"
        )
    return cpus, 0.0, device


def check_options(cfg: dict[str, Any], device: str) -> None:
    """Ray is importable and the task resources make sense (before any data or cluster)."""
    _import_ray()
    task_resources(cfg, device)


def network_filesystem(path: Path) -> str | None:
    """The filesystem type of ``path`` when it is a network one (Linux /proc/mounts), else None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target, best = str(path.resolve()), ("", "")
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(best[0]):
            best = (point, parts[2])
    return best[1] if best[1] in NETWORK_FILESYSTEMS else None


def plugin_sources(plugins: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The plugins as workers load them, (absolute .py path or module name, the folder
    it was found in here), and the local files or package folders to ship with
    ``py_modules`` (not the installed ones)."""
    names, ship = [], []
    paths = sysconfig.get_paths()
    installed = {str(Path(paths[k]).resolve()) for k in ("purelib", "platlib")}
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin).resolve()
            names.append((str(path), str(path.parent)))
            ship.append(str(path))
            continue
        spec = importlib.util.find_spec(plugin.split(".")[0])
        if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
            names.append((plugin, ""))
            continue
        origin = Path(spec.origin).resolve()
        where = origin.parent if spec.submodule_search_locations else origin
        names.append((plugin, str(where.parent)))
        if not any(str(where).startswith(root + os.sep) for root in installed):
            ship.append(str(where))
    return names, ship


def connect(cfg: dict[str, Any], quiet: bool, runtime_env: dict[str, Any]) -> bool:
    """Start or join Ray; True when this call started it (and must stop it).

    No address: a private local Ray (``address="local"``: a plain ``ray.init()`` would
    silently join any cluster on this machine). ``runtime_env`` ships the code (local
    paths are allowed at this, the job, level only). A Ray this process already started
    (a notebook, the tests) is used as it is, with the runtime_env it was given.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    address = cfg.get("ray_address")
    kwargs: dict[str, Any] = {"log_to_driver": not quiet, "logging_level": logging.WARNING,
                              "runtime_env": runtime_env}  # fmt: skip
    if address is None:
        kwargs.update(address="local", include_dashboard=False)
    else:
        kwargs["address"] = address
    # A task killed by Ray's memory monitor is retried MAX_RETRIES times, not forever
    # (Ray's default); read by this process's Ray core, and by a private local Ray.
    saved = os.environ.get("RAY_task_oom_retries")
    os.environ.setdefault("RAY_task_oom_retries", str(MAX_RETRIES))
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        where = "running on this machine" if address == AUTO else f"at {address}"
        raise UserError(
            f"--ray-address {address}: no Ray cluster is {where} ({str(exc).splitlines()[0]}); "
            "start one with 'ray start --head', or leave out --ray-address for a private local Ray"
        ) from exc
    except Exception as exc:
        if "auth" in type(exc).__name__.lower() or "token" in str(exc).lower():
            raise UserError(
                f"Ray at {address} refused the connection ({str(exc).splitlines()[0]}); the cluster "
                "uses token authentication: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to its "
                "token, see docs/SCALING.md"
            ) from exc
        raise
    finally:
        if saved is None:
            os.environ.pop("RAY_task_oom_retries", None)
    return True


# -- inside a task -------------------------------------------------------------------------
_LOADED_PLUGINS: set[str] = set()


def _prepare(threads: int, plugins: list[tuple[str, str]], cwd: str) -> None:
    """Per task: the thread count (a reused worker keeps its first one otherwise), the
    driver's folder for relative paths when this node has it, the run's plugins once."""
    import torch

    torch.set_num_threads(threads)
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    from robustad.registry import load_plugin

    for plugin, folder in plugins:
        if plugin in _LOADED_PLUGINS:
            continue
        if plugin.endswith(".py") and not os.path.isfile(plugin):
            load_plugin(Path(plugin).stem)  # shipped with py_modules: importable by name
        else:
            if folder and os.path.isdir(folder) and folder not in sys.path:
                sys.path.append(folder)  # where the driver found it (a Ray without py_modules)
            load_plugin(plugin)
        _LOADED_PLUGINS.add(plugin)


def job_task(kind: str, job, cfg: dict[str, Any], device: str, threads: int, plugins: list[str],
             cwd: str, checkpoint=None, clean=None, fit_maps=None):  # fmt: skip
    """One fit or eval job: ("done", result), ("failed", (started, traceback)) or
    ("user_error", message). Only a crash of the worker itself escapes."""
    from robustad.benchmark import runner
    from robustad.methods.weights import downloads_allowed

    started = time.time()
    try:
        _prepare(threads, plugins, cwd)
        with downloads_allowed(bool(cfg.get("download"))):
            if kind == "fit":
                result = runner.run_fit(job, cfg, device=device)
                result.detector = None  # the checkpoint bytes travel instead
            else:
                detector = runner.detector_from_checkpoint(job.fit, checkpoint, device)
                # arrays from the object store are read-only: copy before use
                clean = np.array(clean)
                fit_maps = {k: np.array(v) for k, v in fit_maps.items()} if fit_maps else None
                result = runner.run_eval(job, detector, clean, cfg, device=device, fit_maps=fit_maps)
        return "done", result
    except UserError as exc:
        return "user_error", str(exc)
    except Exception:
        return "failed", (started, traceback.format_exc())


# -- the driver's loop ---------------------------------------------------------------------
def run(grid, cfg: dict[str, Any], writer, device: str, plugins: list[str] = (), quiet: bool = False) -> None:
    """Run the missing jobs of ``grid`` as Ray tasks; ``writer`` (the driver) stores results."""
    ray = _import_ray()
    fs = network_filesystem(writer.store.path.parent)
    if fs:
        print(f"bench: warning: --out {writer.store.path.parent} is on a network filesystem ({fs}); "
              "SQLite in WAL mode can corrupt or lock there: keep --out on a local disk of the "
              "driver's machine (docs/SCALING.md)", file=sys.stderr)  # fmt: skip
    import robustad

    cpus, gpus, task_device = task_resources(cfg, device)
    names, ship = plugin_sources(list(plugins))
    code = {
        "py_modules": [str(Path(robustad.__file__).resolve().parent), *ship],
        "excludes": ["__pycache__", "*.pyc"],
    }
    owned = connect(cfg, quiet, code)
    try:
        _drive(ray, grid, cfg, writer, cpus, gpus, task_device, names)
    finally:
        if owned:
            ray.shutdown()


def _drive(ray, grid, cfg, w, cpus: float, gpus: float, device: str, plugins: list) -> None:
    from robustad.benchmark.driver import load_finished_fit

    threads = max(1, int(cpus))
    env_vars = {"OMP_NUM_THREADS": str(threads)}
    if gpus == 0:
        env_vars["CUDA_VISIBLE_DEVICES"] = ""  # a task without a GPU request sees every GPU otherwise
    task = ray.remote(job_task).options(
        num_cpus=cpus,
        num_gpus=gpus,
        max_retries=MAX_RETRIES,
        retry_exceptions=False,
        runtime_env={"env_vars": env_vars},  # merged with the job's py_modules
    )
    # all paths absolute: workers start elsewhere
    root = cfg.get("data_root")
    task_cfg = {**cfg, "data_root": str(Path(root).expanduser().resolve()) if root else None}
    common = (task_cfg, device, threads, plugins, os.getcwd())

    resources = ray.cluster_resources()
    slots = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // cpus)
    max_in_flight = max(2, 2 * max(slots, 1))

    store, progress = w.store, w.progress
    queue: deque = deque()  # ("fit", fit, todo) or ("eval", job)
    fits: dict[str, dict[str, Any]] = {}  # per fit with evals to run: refs, clean scores, count left
    for fit in grid.fits:
        evals = grid.evals[fit]
        todo = [e for e in evals if not store.is_done(e.job_id)]
        fit_done = store.is_done(fit.job_id)
        if fit_done and not todo:
            w.skipped(1 + len(evals))
        elif fit_done:
            w.skipped(1 + len(evals) - len(todo))
            fits[fit.job_id] = {"fit": fit, "stored": True, "left": len(todo)}
            queue.extend(("eval", e) for e in todo)
        else:
            queue.append(("fit", fit, todo))

    def refs_of(fit) -> dict[str, Any]:
        entry = fits[fit.job_id]
        if "refs" not in entry:  # a fit finished by an earlier run: its stored model and scores
            ckpt = w.checkpoint(fit)
            load_finished_fit(fit, ckpt, store, "cpu")  # unreadable: UserError, as local
            entry["clean"] = store.samples(fit.job_id)["clean"]
            entry["refs"] = (
                ray.put(ckpt.read_bytes()),
                ray.put(entry["clean"]),
                ray.put(store.maps(fit.job_id)),
            )
        return entry

    in_flight: dict[Any, tuple] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < max_in_flight:
                item = queue.popleft()
                job = item[1]
                progress.log(job.describe())
                if item[0] == "fit":
                    ref = task.remote("fit", job, *common)
                else:
                    ref = task.remote("eval", job, *common, *refs_of(job.fit)["refs"])
                in_flight[ref] = (item, time.time())
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                item, submitted = in_flight.pop(ref)
                status, payload = _outcome(ray, ref, submitted)
                if status == "user_error":
                    raise UserError(payload)
                if item[0] == "fit":
                    _fit_back(ray, item, status, payload, grid, w, fits, queue)
                else:
                    _eval_back(item[1], status, payload, w, fits)
    except BaseException:
        for ref in in_flight:  # Ctrl-C, a UserError: stop every task of the run
            ray.cancel(ref, force=True)
        raise


def _outcome(ray, ref, submitted: float) -> tuple[str, Any]:
    try:
        return ray.get(ref)
    except ray.exceptions.RuntimeEnvSetupError as exc:
        raise UserError(
            f"Ray could not set up the workers' environment (the robustad package and plugins "
            f"through runtime_env py_modules): {str(exc).strip().splitlines()[-1]}"
        ) from exc
    except ray.exceptions.RayError as exc:  # a crashed worker (after its retry), OOM, a lost node
        error = (f"the Ray task failed outside the job's code after {MAX_RETRIES} retry "
                 f"({type(exc).__name__}):\n{exc}")  # fmt: skip
        return "failed", (submitted, error)


def _fit_back(ray, item, status, payload, grid, w, fits, queue) -> None:
    _, fit, todo = item
    evals = grid.evals[fit]
    if status == "failed":
        started, error = payload
        w.failed(fit, started, error)
        w.progress.advance(1 + len(evals))
        return
    w.fit_done(fit, payload)
    w.progress.advance(1)
    w.skipped(len(evals) - len(todo))
    if todo:
        refs = (ray.put(payload.checkpoint), ray.put(payload.clean), ray.put(payload.maps))
        fits[fit.job_id] = {"fit": fit, "refs": refs, "clean": payload.clean, "left": len(todo)}
        queue.extendleft(("eval", e) for e in reversed(todo))  # before new fits: frees the model sooner


def _eval_back(job, status, payload, w, fits) -> None:
    entry = fits[job.fit.job_id]
    if status == "failed":
        started, error = payload
        w.failed(job, started, error)
    else:
        w.eval_done(job, entry["clean"], payload)
    w.progress.advance(1)
    entry["left"] -= 1
    if entry["left"] == 0:
        w.cross_job_flags(job.fit.job_id)
        del fits[job.fit.job_id]  # drops the object-store references
