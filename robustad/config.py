"""Run configuration: a preset (configs/*.yaml) ← a user YAML (``--config``) ← CLI flags.

Unknown keys and bad values are errors (UserError), never silently ignored, and they
are found before any training: ``validate`` builds every configured method and attack
with its parameters (``check_buildable``) and checks the device.

Keys:
  preset        name of the preset the config started from (recorded with results)
  methods       list of method names, or "all" (every registered method)
  datasets      list of dataset names, or "all"
  classes       "all" or a list of normal-class indices or class names (e.g. bottle)
  seeds         list of integer seeds
  attacks       list of attack names (the clean score is always measured)
  norm          "Linf" or "L2"
  eps           "auto" (by resolution), a number, "8/255", or a list of those (a sweep)
  attack_mode   "both", "normal" or "anomaly": which AUROC the leaderboard shows
  batch_size    evaluation/attack batch size
  device        "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
  executor      "local" (one job after another) or "ray" (docs/SCALING.md)
  ray_address   with executor ray: None (a private local Ray), "auto" (the cluster
                 running on this machine), "host:port" or "ray://host:port"
  ray_cpus_per_task  CPUs per Ray task, also its torch thread count (default 1)
  ray_gpus_per_task  GPUs per Ray task, fractions allowed (None: 1 when the run uses CUDA)
  data_root     folder with datasets (optional)
  download      allow downloading missing datasets
  method_params {method: {param: value}} constructor parameters
  attack_params {attack: {param: value}} constructor parameters; an attack's ``seed``
                 (default: the run seed) is kept and is part of its eval job's identity
  dataset_params {dataset: {param: value}} loader parameters (e.g. image_size), and
                 test_subset (any dataset): a seeded, balanced subset of N test images
"""

from __future__ import annotations

import copy
import importlib.resources
from pathlib import Path
from typing import Any

import yaml

from robustad.errors import UserError
from robustad.threat import MODES, NORMS, parse_eps

KEYS = {
    "preset", "methods", "datasets", "classes", "seeds", "attacks", "norm", "eps",
    "attack_mode", "batch_size", "device", "executor", "data_root", "download",
    "method_params", "attack_params", "dataset_params",
    "ray_address", "ray_cpus_per_task", "ray_gpus_per_task",
}  # fmt: skip
EXECUTORS = ("local", "ray")


def preset_names() -> list[str]:
    files = importlib.resources.files("robustad.configs").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    text = importlib.resources.files("robustad.configs").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def load_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Override ``base`` key by key; the *_params mappings merge one level deeper."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None and key not in ("data_root",):
            continue
        if key in ("method_params", "attack_params", "dataset_params") and isinstance(value, dict):
            merged = dict(out.get(key) or {})
            for name, params in value.items():
                merged[name] = {**(merged.get(name) or {}), **(params or {})}
            out[key] = merged
        else:
            out[key] = value
    return out


def _as_list(value: Any, key: str) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (int, float)):
        return [value]
    raise UserError(f"config key {key!r} must be a list or a comma-separated string")


def resolve(
    preset: str = "quick", config_file: str | None = None, overrides: dict | None = None
) -> dict[str, Any]:
    """Build and validate the final configuration."""
    cfg = load_preset(preset)
    layers = [load_yaml(config_file)] if config_file else []
    layers.append(overrides or {})
    for layer in layers:
        unknown = sorted(set(layer) - KEYS)
        if unknown:
            raise UserError(
                f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(KEYS))}"
            )
        cfg = merge(cfg, layer)
    return validate(cfg)


def _class_index(value: Any, datasets: list[str]) -> int:
    """A normal class given as an index, or as a class name shared by every dataset of the run."""
    from robustad.registry import DATASETS

    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    found = {}
    for d in datasets:
        names = list(DATASETS.get(d).metadata.get("class_names") or [])
        if value in names:
            found[d] = names.index(value)
    if len(found) != len(datasets) or len(set(found.values())) != 1:
        raise UserError(
            f"classes must be 'all', integers or class names of {', '.join(datasets)} "
            f"(see 'bench list datasets'); got {value!r}"
        )
    return next(iter(found.values()))


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    from robustad.registry import ATTACKS, DATASETS, METHODS

    cfg = dict(cfg)
    for key, registry in (("methods", METHODS), ("datasets", DATASETS), ("attacks", ATTACKS)):
        names = _as_list(cfg.get(key, []), key)
        if names == ["all"]:
            names = registry.names()
        for n in names:
            registry.get(n)  # raises UnknownNameError with close matches
        cfg[key] = [registry.get(n).name for n in names]
    if not cfg["methods"] or not cfg["datasets"]:
        raise UserError("the run needs at least one method and one dataset")

    classes = cfg.get("classes", "all")
    if classes == "all":
        for d in cfg["datasets"]:
            meta = DATASETS.get(d).metadata
            if "num_classes" in meta and meta["num_classes"] is None:  # e.g. imagefolder
                raise UserError(f"{d} takes its classes from its folders; give --classes as indices")
    else:
        cfg["classes"] = [_class_index(c, cfg["datasets"]) for c in _as_list(classes, "classes")]
        for d in cfg["datasets"]:
            n = DATASETS.get(d).metadata.get("num_classes")
            bad = [c for c in cfg["classes"] if n is not None and not 0 <= c < n]
            if bad:
                raise UserError(f"{d} has classes 0..{n - 1}; class(es) {bad} are out of range")
    try:
        cfg["seeds"] = [int(s) for s in _as_list(cfg.get("seeds", [0]), "seeds")]
    except ValueError as exc:
        raise UserError(f"seeds must be integers, got {cfg.get('seeds')!r}") from exc

    if cfg.get("norm") not in NORMS:
        raise UserError(f"unknown norm {cfg.get('norm')!r}; choose one of {', '.join(NORMS)}")
    if cfg.get("attack_mode") not in MODES:
        raise UserError(f"unknown attack mode {cfg.get('attack_mode')!r}; choose {', '.join(MODES)}")
    eps = cfg.get("eps", "auto")
    if eps != "auto":
        values = [parse_eps(e) for e in _as_list(eps, "eps")]
        for v in values:
            if v <= 0 or (cfg["norm"] == "Linf" and v >= 1):
                raise UserError(
                    f"ε = {v:g} is impossible; give 0 < ε < 1 for L∞ (e.g. 8/255) or ε > 0 for L2"
                )
        cfg["eps"] = values
    if not isinstance(cfg.get("batch_size"), int) or cfg["batch_size"] < 1:
        raise UserError(f"batch_size must be a positive integer, got {cfg.get('batch_size')!r}")
    if cfg.get("executor") not in EXECUTORS:
        raise UserError(f"unknown executor {cfg.get('executor')!r}; available: {', '.join(EXECUTORS)}")
    _validate_ray_keys(cfg)
    cfg.setdefault("dataset_params", {})
    for key, registry in (
        ("method_params", METHODS),
        ("attack_params", ATTACKS),
        ("dataset_params", DATASETS),
    ):
        params = cfg.get(key) or {}
        if not isinstance(params, dict):
            raise UserError(f"{key} must map names to parameter mappings")
        for name, p in params.items():
            if name not in registry:
                # A misspelt name would otherwise drop its parameters silently; a
                # plug-in's parameters need the plug-in loaded (--plugin).
                raise UserError(f"{key}: {registry.unknown_message(name)}")
            entry = registry.get(name)
            valid = entry.parameters()
            if key == "dataset_params":
                valid = {**valid, "test_subset": None}  # taken by load_dataset for every dataset
            bad = sorted(set(p or {}) - set(valid))
            if bad and not entry.accepts_any_keyword():
                raise UserError(
                    f"{key}: {registry.kind} {name!r} has no parameter(s) {', '.join(bad)}; "
                    f"valid: {', '.join(valid)}"
                )
        cfg[key] = {k: dict(v or {}) for k, v in params.items()}
    for name, p in cfg["attack_params"].items():
        seed = p.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise UserError(f"attack_params: {name!r} seed must be an integer, got {seed!r}")

    from robustad.benchmark.runner import resolve_device

    cfg["device"] = cfg.get("device", "auto")
    resolve_device(cfg["device"])  # an unknown or absent device is a UserError now, not per fit
    check_buildable(cfg)
    return cfg


def _validate_ray_keys(cfg: dict[str, Any]) -> None:
    """The executor's resources: CPUs per task > 0, GPUs per task >= 0 (None: automatic)."""
    cfg.setdefault("ray_address", None)
    cfg.setdefault("ray_cpus_per_task", 1)
    cfg.setdefault("ray_gpus_per_task", None)
    address = cfg["ray_address"]
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise UserError(f"ray_address must be 'auto', host:port or ray://host:port, got {address!r}")
    for key, least in (("ray_cpus_per_task", 0.0), ("ray_gpus_per_task", 0.0)):
        value = cfg[key]
        if value is None and key == "ray_gpus_per_task":
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < least
            or (key == "ray_cpus_per_task" and value == 0)
        ):
            what = "a positive number" if key == "ray_cpus_per_task" else "a number >= 0"
            raise UserError(f"{key} must be {what}, got {value!r}")


def check_buildable(cfg: dict[str, Any]) -> None:
    """Build every method and attack of the run with its configured parameters.

    Constructors check their values (``pgd: {steps: 0}`` raises ValueError) and do no
    work, so building them here turns an impossible value into a UserError before any
    training instead of a failed job afterwards. ``run_grid`` calls this too.
    """
    import inspect

    from robustad.registry import ATTACKS, METHODS

    for key, registry, names in (
        ("method_params", METHODS, cfg["methods"]),
        ("attack_params", ATTACKS, cfg.get("attacks") or []),
    ):
        for name in names:
            params = dict((cfg.get(key) or {}).get(name) or {})
            try:
                obj = registry.create(name, **params)
            except (ValueError, TypeError) as exc:
                raise UserError(
                    f"{registry.kind} {name!r} cannot be built with {key} {params}: {exc}"
                ) from exc
            # An attack on the anomaly map (pgd-map) needs methods that have one.
            if getattr(obj, "needs_anomaly_map", False):
                from robustad.methods.base import Detector

                def has_map(method: str) -> bool:
                    own = getattr(METHODS.get(method).factory, "anomaly_map", None)
                    return own is not Detector.anomaly_map

                without = [m for m in cfg["methods"] if not has_map(m)]
                if without:
                    raise UserError(
                        f"attack {name!r} attacks the anomaly map, which {', '.join(without)} do(es) not "
                        f"produce; run it on localising methods only (bench list methods: localises)"
                    )
            # An attack that supports only some norms (ta:PGD is L∞ only) says so now,
            # not after training.
            check_norm = getattr(obj, "check_norm", None)
            if callable(check_norm) and cfg.get("norm"):
                check_norm(cfg["norm"])
            # ta:<Name> passes its keywords on to a torchattacks class: check their names
            # against that class now, not when the attack first runs after training.
            target, given = getattr(obj, "cls", None), getattr(obj, "params", None)
            if inspect.isclass(target) and isinstance(given, dict):
                accepted = inspect.signature(target.__init__).parameters
                if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
                    bad = sorted(set(given) - set(accepted) - {"self", "model"})
                    if bad:
                        valid = [n for n in accepted if n not in ("self", "model")]
                        raise UserError(
                            f"{key}: {registry.kind} {name!r} has no parameter(s) {', '.join(bad)}; "
                            f"valid: {', '.join(valid)}"
                        )
