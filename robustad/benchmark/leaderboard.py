"""Leaderboards as pure functions of the store (RobustBench style: results are data).

Values are AUROC in %, the mean over normal classes (± the standard deviation over
seeds when there are several).

Identity: a result is identified by its full parameters, never by a bare name, so two
results that share a name are never merged and never overwrite each other.

* A **row** is a method configuration: (method name, the fit's full ``params`` with
  defaults, as stored in ``config['params']``). When the store holds one configuration
  of a method the row is labelled by the bare name; when it holds several, each row is
  labelled ``method (k=v, ...)`` with only the parameters that differ among that
  method's configurations (nested parameters as ``a.b=v``; ``k=unset`` where one
  configuration lacks a key another has).
* A **dataset** column group is (dataset name, ``data_params``, ``data_root``),
  labelled the same way (``fmnist (size=64)``) when one dataset has several.
* An **attack column** is (attack name, full attack ``params``, norm, ε), per dataset
  group: labelled by the attack name and the parameters that differ among that
  attack's configurations in the group (``pgd (steps=10)`` vs ``pgd (steps=100)``),
  followed by ``norm ε`` when the dataset has several threats.
* The **worst case** column is per model (per fit) and threat: for every test sample
  the strongest of all attack configurations run on that model at that threat.
* The **certified** column (L2 threats, attack mode ``both``) is the certified AUROC
  that detectors declaring a Lipschitz constant record (``metrics.certified_auroc``):
  a lower bound on any L2 attack at that ε, not an attack.

Completeness: a cell averages the (normal class, seed) runs that exist. When an attack
cell averages fewer runs than the clean cell of the same row and dataset (an eval job
failed or has not run yet), or a worst-case cell has runs that lack some of the
row's attack configurations at that threat, the cell is flagged ``[incomplete n/N]``
(n runs complete of the N behind the clean cell) in every output format, and the
notes say so: its mean is not over the same classes as the row's clean AUROC. A clean
cell is flagged the same way when it has fewer runs than all rows of its dataset
together (a fit failed or has not run).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustad.benchmark.bootstrap import LEVEL, N_BOOT, SEED, bootstrap_aurocs, percentile_interval, run_seed
from robustad.benchmark.metrics import auroc, one_sided_scores
from robustad.benchmark.store import Store
from robustad.errors import UnknownNameError
from robustad.threat import format_eps

CONSTANT_DETECTOR_AUROC = 50.0
WORST = "worst case"
CERTIFIED = "certified"
#: prefix of the pixel-level columns (localising methods on data with masks): pixel AUROC,
#: clean and under each attack; not bounded by the image AUROC columns
PIXEL = "pixel"
INCOMPLETE = "incomplete"


@dataclass
class Table:
    """A leaderboard: ``cells[(row label, dataset label, column label)] = (mean, std or None)``."""

    methods: list[str]  # row labels (see the module docstring)
    columns: list[tuple[str, str]]  # (dataset label, column label)
    cells: dict[tuple[str, str, str], tuple[float, float | None]] = field(default_factory=dict)
    mode: str = "both"
    notes: list[str] = field(default_factory=list)
    #: reliability flags (docs/THREAT_MODEL.md) raised on any run behind a cell, and
    #: ``incomplete n/N`` on cells that average fewer runs than their clean cell
    flags: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    #: row label → (method name, full method params)
    rows: dict[str, tuple[str, dict]] = field(default_factory=dict)
    #: (row, dataset, column) → (runs averaged, runs behind the row's clean cell), for
    #: the incomplete cells only
    incomplete: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
    #: (row, dataset, column) → (lo, hi): the bootstrap interval (%) of the cell's mean,
    #: when the table was built with ``ci=True`` (not for certified cells)
    ci: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)
    #: (dataset, column) → (column label without the threat, norm, ε) of every column but
    #: ``clean`` (``("pgd (steps=10)", "Linf", 8/255)``, ``("worst case", "Linf", 8/255)``)
    threats: dict[tuple[str, str], tuple[str, str, float]] = field(default_factory=dict)

    def flag_text(self, method: str, dataset: str, column: str) -> str:
        flags = self.flags.get((method, dataset, column))
        return f" [{', '.join(sorted(flags))}]" if flags else ""

    def best(self, dataset: str, column: str) -> float | None:
        vals = [self.cells[(m, dataset, column)][0] for m in self.methods
                if (m, dataset, column) in self.cells]  # fmt: skip
        return max(vals) if vals else None


# -- identities and their labels -----------------------------------------------------
def _canonical(params: Any) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_UNSET = object()


def _fmt_value(v: Any) -> str:
    if v is _UNSET:
        return "unset"
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"  # values that print alike get a hash suffix (config_labels)
    if v is None or isinstance(v, (bool, int)):
        return str(v)
    return json.dumps(v, sort_keys=True, default=str)


def config_labels(configs: dict[Any, tuple[str, dict]]) -> dict[Any, str]:
    """``key → (name, params)`` to ``key → label``: the bare name when the name has one
    configuration, else ``name (k=v, ...)`` over the parameters that differ among the
    configurations of that name. Distinct configurations always get distinct labels."""
    by_name: dict[str, dict[str, dict]] = defaultdict(dict)
    for name, params in configs.values():
        by_name[name][_canonical(params)] = params
    labels_of: dict[tuple[str, str], str] = {}
    for name, variants in by_name.items():
        if len(variants) == 1:
            labels_of[(name, next(iter(variants)))] = name
            continue
        flat = {c: _flatten(p) for c, p in variants.items()}
        keys = sorted({k for f in flat.values() for k in f})
        differ = [k for k in keys if len({_canonical(f.get(k, _UNSET)) for f in flat.values()}) > 1]
        made: dict[str, str] = {}
        for c, f in flat.items():
            label = f"{name} (" + ", ".join(f"{k}={_fmt_value(f.get(k, _UNSET))}" for k in differ) + ")"
            made[c] = label
        counts = Counter(made.values())
        for c, label in made.items():
            if counts[label] > 1:  # values that print alike (1 and "1"): tell them apart
                label = f"{label[:-1]}, #{hashlib.sha256(c.encode()).hexdigest()[:6]})"
            labels_of[(name, c)] = label
    return {key: labels_of[(name, _canonical(params))] for key, (name, params) in configs.items()}


def _params(row: dict) -> dict:
    return (row.get("config") or {}).get("params") or {}


def _data_config(fit: dict) -> dict:
    cfg = fit.get("config") or {}
    root = {"data_root": cfg["data_root"]} if cfg.get("data_root") else {}
    return {**(cfg.get("data_params") or {}), **root}


@dataclass
class Identities:
    """Labels of the stored results by job id (see the module docstring)."""

    row: dict[str, str]  # fit job id → row label
    row_config: dict[str, tuple[str, dict]]  # row label → (method, params)
    dataset: dict[str, str]  # fit job id → dataset label
    attack: dict[str, str]  # eval job id → attack label (name and differing params, no threat)
    attack_key: dict[str, tuple[str, str]]  # eval job id → (attack, canonical params)


def identities(fits: dict[str, dict], evals: list[dict]) -> Identities:
    """Row, dataset and attack labels of ``fits`` (job id → fit row) and ``evals``."""
    row = config_labels({k: (f["method"], _params(f)) for k, f in fits.items()})
    dataset = config_labels({k: (f["dataset"], _data_config(f)) for k, f in fits.items()})
    attack: dict[str, str] = {}
    per_dataset: dict[str, dict[str, tuple[str, dict]]] = defaultdict(dict)
    for r in evals:
        per_dataset[dataset[r["fit_id"]]][r["job_id"]] = (r["attack"], _params(r))
    for configs in per_dataset.values():
        attack.update(config_labels(configs))
    return Identities(
        row=row,
        row_config={row[k]: (f["method"], _params(f)) for k, f in fits.items()},
        dataset=dataset,
        attack=attack,
        attack_key={r["job_id"]: (r["attack"], _canonical(_params(r))) for r in evals},
    )


def _column_label(attack: str, norm: str, eps: float, multi_threat: bool) -> str:
    return f"{attack} {norm} {format_eps(eps)}" if multi_threat else attack


def _mean_over_classes_then_seeds(per_run: dict[tuple[int, int], float]) -> tuple[float, float | None]:
    """per_run[(class, seed)] = AUROC → (mean over classes averaged over seeds, std over seeds)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for (_, seed), v in per_run.items():
        by_seed[seed].append(v)
    seed_means = [float(np.mean(v)) for v in by_seed.values()]
    std = float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else None
    return float(np.mean(seed_means)), std


def _interval_of_mean(per_run: dict[tuple[int, int], np.ndarray], level: float) -> tuple[float, float]:
    """per_run[(class, seed)] = bootstrap AUROCs (one per resample) → the percentile interval
    of the cell's mean (over classes, then over seeds), taken resample by resample."""
    by_seed: dict[int, list[np.ndarray]] = defaultdict(list)
    for (_, seed), v in per_run.items():
        by_seed[seed].append(v)
    means = np.mean([np.mean(v, axis=0) for v in by_seed.values()], axis=0)
    return percentile_interval(means, level)


def build_table(
    store: Store,
    mode: str = "both",
    ci: bool = False,
    n_boot: int = N_BOOT,
    ci_seed: int = SEED,
    level: float = LEVEL,
) -> Table:
    """Compute the leaderboard from stored per-sample scores (``mode``: who is attacked).

    With ``ci``, every cell but the certified ones gets the percentile bootstrap
    interval of its mean (``Table.ci``): each run's test set is resampled ``n_boot``
    times (stratified, seeded per run by ``robustad.benchmark.bootstrap.run_seed``), the
    cell's mean over classes and seeds is taken resample by resample, and ``level`` of
    those means lie in the interval. A cell of one run has its run's interval (the
    frame's ``*_auroc_lo/hi`` × 100).
    """
    all_fits = {r["job_id"]: r for r in store.jobs(kind="fit", status="done")}
    superseded = superseded_fits(all_fits.values())
    fits = {k: r for k, r in all_fits.items() if k not in superseded}
    evals = [r for r in store.jobs(kind="eval", status="done") if r["fit_id"] in fits]
    ids = identities(fits, evals)

    threats_per_dataset: dict[str, set] = defaultdict(set)
    for r in evals:
        threats_per_dataset[ids.dataset[r["fit_id"]]].add((r["norm"], round(r["eps"], 10)))

    # values[(row, dataset, column)][(class, seed)] = AUROC %; source: the job behind it
    values: dict[tuple[str, str, str], dict[tuple[int, int], float]] = defaultdict(dict)
    # boots[(row, dataset, column)][(class, seed)] = bootstrap AUROCs % (with ci)
    boots: dict[tuple[str, str, str], dict[tuple[int, int], np.ndarray]] = defaultdict(dict)
    source: dict[tuple[str, str, str, int, int], str] = {}
    collisions = 0

    def put(key: tuple[str, str, str], fit: dict, value: float, job_id: str, scores=None) -> None:
        """``scores``: (labels, scores) to bootstrap the run's AUROC from, with ``ci``."""
        nonlocal collisions
        run = (fit["normal_class"], fit["seed"])
        if source.setdefault((*key, *run), job_id) != job_id:
            collisions += 1  # same labels, class and seed, another job: not silently
        values[key][run] = value
        if ci and scores is not None:
            seed = run_seed(fit["normal_class"], fit["seed"], ci_seed)
            boots[key][run] = 100 * bootstrap_aurocs(scores[1], scores[0], n_boot, seed)

    attack_columns: dict[str, list[str]] = defaultdict(list)
    column_keys: dict[tuple[str, str], tuple[str, str, float, str]] = {}  # → (attack, norm, eps, label)
    flags: dict[tuple[str, str, str], set[str]] = {}
    # (fit_id, norm, eps) → [(attack config, labels, attacked scores)] of each attack on that model
    same_model_and_threat: dict[tuple[str, str, float], list] = defaultdict(list)
    for fit_id, fit in fits.items():
        s = store.samples(fit_id) if ci else None
        put((ids.row[fit_id], ids.dataset[fit_id], "clean"), fit, 100 * fit["metrics"]["clean_auroc"], fit_id,
            None if s is None or s["labels"] is None else (s["labels"], s["clean"]))  # fmt: skip
        if "clean_pixel_auroc" in (fit.get("metrics") or {}):
            pcol = f"{PIXEL} clean"
            put((ids.row[fit_id], ids.dataset[fit_id], pcol), fit, 100 * fit["metrics"]["clean_pixel_auroc"],
                f"{PIXEL}:{fit_id}")  # fmt: skip
            if pcol not in attack_columns[ids.dataset[fit_id]]:
                attack_columns[ids.dataset[fit_id]].append(pcol)
                column_keys[(ids.dataset[fit_id], pcol)] = (PIXEL, "", -1.0, pcol)
    for r in evals:
        row, dataset = ids.row[r["fit_id"]], ids.dataset[r["fit_id"]]
        multi = len(threats_per_dataset[dataset]) > 1
        col = _column_label(ids.attack[r["job_id"]], r["norm"], r["eps"], multi)
        if col not in attack_columns[dataset]:
            attack_columns[dataset].append(col)
            column_keys[(dataset, col)] = (r["attack"], r["norm"], r["eps"], ids.attack[r["job_id"]])
        run_flags = (r.get("info") or {}).get("flags") or []
        if run_flags:
            flags.setdefault((row, dataset, col), set()).update(run_flags)
        s = store.samples(r["job_id"])
        labels, clean, adv = s["labels"], s["clean"], s["adv"]
        attacked = one_sided_scores(clean, adv, labels, mode)
        put((row, dataset, col), fits[r["fit_id"]], 100 * auroc(attacked, labels), r["job_id"],
            (labels, attacked))  # fmt: skip
        same_model_and_threat[(r["fit_id"], r["norm"], round(r["eps"], 10))].append(
            (ids.attack_key[r["job_id"]], labels, attacked)
        )
        if "adv_pixel_auroc" in (r.get("metrics") or {}):
            pcol = f"{PIXEL} {col}"
            pixel = 100 * r["metrics"]["adv_pixel_auroc"]
            put((row, dataset, pcol), fits[r["fit_id"]], pixel, f"{PIXEL}:{r['job_id']}")
            if pcol not in attack_columns[dataset]:
                attack_columns[dataset].append(pcol)
                column_keys[(dataset, pcol)] = (PIXEL, r["norm"], r["eps"], pcol)
        # the certified L2 AUROC of a Lipschitz detector (metrics.certified_auroc): one per model
        # and threat, whichever attack's row carries it; both-sided only
        cert = (r.get("metrics") or {}).get("certified_auroc")
        if cert is not None and mode == "both":
            ccol = f"{CERTIFIED} {r['norm']} {format_eps(r['eps'])}" if multi else CERTIFIED
            put((row, dataset, ccol), fits[r["fit_id"]], 100 * cert,
                f"{CERTIFIED}:{r['fit_id']}:{r['norm']}:{round(r['eps'], 10)}")  # fmt: skip
            if ccol not in attack_columns[dataset]:
                attack_columns[dataset].append(ccol)
                column_keys[(dataset, ccol)] = (CERTIFIED, r["norm"], r["eps"], CERTIFIED)
    # attack configurations run on any model of a row, per dataset and threat: what a
    # complete worst case is over
    configs_run: dict[tuple[str, str, str, float], set] = defaultdict(set)
    for (fit_id, norm, eps), runs in same_model_and_threat.items():
        configs_run[(ids.row[fit_id], ids.dataset[fit_id], norm, eps)].update(k for k, _, _ in runs)
    worst_complete: dict[tuple[str, str, str], int] = Counter()
    for (fit_id, norm, eps), runs in same_model_and_threat.items():
        fit, row, dataset = fits[fit_id], ids.row[fit_id], ids.dataset[fit_id]
        expected = configs_run[(row, dataset, norm, eps)]
        if len(expected) < 2:
            continue  # a worst case over one attack repeats its column
        multi = len(threats_per_dataset[dataset]) > 1
        col = f"{WORST} {norm} {format_eps(eps)}" if multi else WORST
        labels = runs[0][1]
        worst = per_sample_worst_case(labels, [a for _, _, a in runs])
        put((row, dataset, col), fit, 100 * auroc(worst, labels), f"worst:{fit_id}:{norm}:{eps}",
            (labels, worst))  # fmt: skip
        if {k for k, _, _ in runs} >= expected:
            worst_complete[(row, dataset, col)] += 1
        if col not in attack_columns[dataset]:
            attack_columns[dataset].append(col)
            column_keys[(dataset, col)] = (WORST, norm, float(eps), WORST)

    datasets = sorted(set(ids.dataset.values()))
    methods = sorted(set(ids.row.values()), key=lambda m: (ids.row_config[m][0], m))
    columns = []
    for d in datasets:
        columns.append((d, "clean"))
        cols = sorted(attack_columns[d], key=lambda c: _column_order(c, column_keys.get((d, c))))
        columns += [(d, c) for c in cols]
    threats = {k: (label, norm, float(eps)) for k, (_, norm, eps, label) in column_keys.items()}
    table = Table(methods=methods, columns=columns, mode=mode, flags=flags,
                  rows={m: ids.row_config[m] for m in methods}, threats=threats)  # fmt: skip
    for key, per_run in values.items():
        table.cells[key] = _mean_over_classes_then_seeds(per_run)
    for key, per_run in boots.items():
        if len(per_run) == len(values[key]):  # every run behind the cell has its resamples
            table.ci[key] = _interval_of_mean(per_run, level)
    # incomplete cells: an attack cell with fewer runs than the clean cell of the same
    # row and dataset; a clean cell with fewer than all rows of its dataset together
    dataset_runs: dict[str, set] = defaultdict(set)
    for (_, dataset, col), per_run in values.items():
        if col == "clean":
            dataset_runs[dataset].update(per_run)
    for (row, dataset, col), per_run in values.items():
        if col == "clean":
            n, total = len(per_run), len(dataset_runs[dataset])
        else:
            total = len(values[(row, dataset, "clean")])
            n = worst_complete[(row, dataset, col)] if col.startswith(WORST) else len(per_run)
        if n < total:
            table.incomplete[(row, dataset, col)] = (n, total)
    n_classes = {d: len({f["normal_class"] for k, f in fits.items() if ids.dataset[k] == d})
                 for d in datasets}  # fmt: skip
    for d in datasets:
        threats = ", ".join(f"{n} ε={format_eps(e)}" for n, e in sorted(threats_per_dataset[d]))
        table.notes.append(f"{d}: mean over {n_classes[d]} normal class(es); {threats or 'no attacks'}")
    table.notes.append(
        f"AUROC in %, attack mode '{mode}'; a constant detector scores "
        f"{CONSTANT_DETECTOR_AUROC:.1f} under any attack."
    )
    if table.ci:
        table.notes.append(
            f"[lo, hi] = the {100 * level:g}% percentile bootstrap interval of the mean over the test "
            f"samples ({n_boot} stratified resamples of every run); ± = the standard deviation over seeds."
        )
    if any(flags.values()):  # the reliability flags' legend, only where one was raised
        table.notes.append(FLAG_NOTE)
    # a pretrained method run on random weights is not the published method: every cell says so
    random_rows = {(ids.row[k], ids.dataset[k]) for k, f in fits.items()
                   if (f.get("info") or {}).get("pretrained") is False}  # fmt: skip
    for row, dataset in random_rows:
        for d, c in table.columns:
            if d == dataset:
                flags.setdefault((row, d, c), set()).add(RANDOM_WEIGHTS)
    if random_rows:
        table.notes.append(RANDOM_WEIGHTS_NOTE)
    for key, (n, total) in table.incomplete.items():
        table.flags.setdefault(key, set()).add(f"{INCOMPLETE} {n}/{total}")
    if table.incomplete:
        table.notes.append(INCOMPLETE_NOTE)
    if any(name != label for label, (name, _) in table.rows.items()) or any(
        attack != config_label for attack, _, _, config_label in column_keys.values()
    ):
        table.notes.append(
            "rows and columns are configurations: `name (k=v, ...)` shows the parameters "
            "that differ among the configurations of one method or attack."
        )
    if collisions:
        table.notes.append(
            f"warning: {collisions} result(s) share their row, column, class and seed with "
            "another stored job (a difference the labels do not show); only the last is counted."
        )
    for method, n in sorted(Counter(superseded.values()).items()):
        table.notes.append(
            f"left out: {n} {method} model(s) trained before its training code changed "
            "(an older fit_version); rerun the same `bench run` to replace them"
        )
    return table


def per_sample_worst_case(labels: np.ndarray, attacked: list[np.ndarray]) -> np.ndarray:
    """The per-sample worst case over attacks on one model: for every test sample the
    attacked score with the highest attacker objective d·s (d = +1 for a normal sample,
    whose score the attacker raises, −1 for an anomaly), as if an adversary ran every
    attack and picked per sample. Its AUROC is never above the lowest single-attack
    AUROC of attack mode ``"both"``."""
    stacked = np.stack(attacked)
    return np.where(labels == 0, stacked.max(0), stacked.min(0))


def per_sample_worst_case_auroc(store: Store, eval_rows: list[dict], mode: str = "both") -> float:
    """AUROC (a fraction) of :func:`per_sample_worst_case` over ``eval_rows``, the eval
    jobs of one fit and one threat, read from ``store``."""
    labels, attacked = None, []
    for r in eval_rows:
        s = store.samples(r["job_id"])
        labels = s["labels"]
        attacked.append(one_sided_scores(s["clean"], s["adv"], labels, mode))
    return auroc(per_sample_worst_case(labels, attacked), labels)


def current_fits(store: Store) -> dict[str, dict]:
    """Finished fit rows by job id, without those of :func:`superseded_fits`."""
    fits = {r["job_id"]: r for r in store.jobs(kind="fit", status="done")}
    old = superseded_fits(fits.values())
    return {k: r for k, r in fits.items() if k not in old}


def superseded_fits(fit_rows) -> dict[str, str]:
    """Fit job id → method, for fits made by an older ``fit_version`` of their method.

    A method bumps ``Detector.fit_version`` when its training changes; the new fits get
    new job ids and sit in the store next to the old ones, which must not be averaged
    with them. Methods that are not registered here (a plugin not loaded) are kept.
    """
    from robustad.benchmark.runner import method_fit_version

    out = {}
    for r in fit_rows:
        try:
            current = method_fit_version(r["method"])
        except UnknownNameError:  # not registered here: keep
            continue
        if int((r.get("config") or {}).get("method_version", 1)) < current:
            out[r["job_id"]] = r["method"]
    return out


#: weakest to strongest, so a row reads as the attack budget grows
ATTACK_ORDER = ("none", "noise", "fgsm", "pgd", "eot-pgd", "apgd", "square", "aa")
RANDOM_WEIGHTS = "random weights"
RANDOM_WEIGHTS_NOTE = (
    "[random weights]: a method published with a pretrained backbone, run here with a randomly "
    "initialised one (weights: null); not the published method's number."
)
FLAG_NOTE = (
    "[flags] raised on at least one run: zero-grad = over 10% of samples had a zero input "
    "gradient; box-masking = over 1% of pixels at 0 or 1 had a zero gradient there but not just "
    "inside the box (a clamp hides the attacker's direction); "
    "masking? = Square beat this white-box attack by over 1 point (gradient masking); "
    "non-monotone = AUROC rose as ε grew in a sweep."
)
INCOMPLETE_NOTE = (
    "[incomplete n/N] = the cell averages n of the N (normal class, seed) runs behind the "
    "row's clean cell (an eval job failed or has not run, or a worst case lacks some of "
    "the row's attacks); on a clean cell, n of the N runs of all rows on that dataset "
    "(a fit failed or has not run): not comparable with the complete cells."
)


def _column_order(label: str, key: tuple[str, str, float, str] | None) -> tuple:
    """Attack columns by ATTACK_ORDER (unknown attacks after, by name), then norm and ε
    (numerically: 2/255 before 16/255), then configuration; then the certified columns
    and last the worst-case columns, each by norm and ε."""
    if key is None:
        return (3, 0, label, "", 0.0, "")
    attack, norm, eps, config_label = key
    if attack in (CERTIFIED, WORST):
        return (1 if attack == CERTIFIED else 2, 0, attack, norm, float(eps), "")
    if attack == PIXEL:  # after the image-level columns: clean first, then by threat
        return (4, 0, attack, norm, float(eps), config_label)
    rank = ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else len(ATTACK_ORDER)
    return (0, rank, attack, norm, float(eps), config_label)


def _fmt(cell: tuple[float, float | None] | None) -> str:
    if cell is None:
        return "–"
    mean, std = cell
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _fmt_ci(interval: tuple[float, float] | None) -> str:
    return "" if interval is None else f"[{interval[0]:.1f}, {interval[1]:.1f}]"


def to_csv(table: Table, ci: bool = True) -> str:
    """The table as CSV: per column the mean, ``:std`` (over seeds) and ``:lo``/``:hi`` (the
    bootstrap interval, empty when the table was built without ``ci``), then the flags.
    ``ci`` is accepted for a uniform signature; the interval columns are always there."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["method"]
    for d, c in table.columns:
        header += [f"{d}:{c}", f"{d}:{c}:std", f"{d}:{c}:lo", f"{d}:{c}:hi"]
    header.append("flags")
    w.writerow(header)
    for m in table.methods:
        row: list[str] = [m]
        for d, c in table.columns:
            cell = table.cells.get((m, d, c))
            interval = table.ci.get((m, d, c))
            row += ["" if cell is None else f"{cell[0]:.2f}",
                    "" if cell is None or cell[1] is None else f"{cell[1]:.2f}",
                    "" if interval is None else f"{interval[0]:.2f}",
                    "" if interval is None else f"{interval[1]:.2f}"]  # fmt: skip
        row.append("; ".join(f"{d}:{c}={'|'.join(sorted(table.flags[(m, d, c)]))}"
                             for d, c in table.columns if table.flags.get((m, d, c))))  # fmt: skip
        w.writerow(row)
    return buf.getvalue()


def to_markdown(table: Table, ci: bool = False) -> str:
    """The table in Markdown; with ``ci``, each cell's bootstrap interval after its value."""
    header = "| method | " + " | ".join(f"{d} {c}" for d, c in table.columns) + " |"
    sep = "|---|" + "---:|" * len(table.columns)
    lines = [header, sep]
    for m in table.methods:
        cells = []
        for d, c in table.columns:
            text = _fmt(table.cells.get((m, d, c)))
            if table.cells.get((m, d, c)) and table.cells[(m, d, c)][0] == table.best(d, c):
                text = f"**{text}**"
            if ci and (m, d, c) in table.ci:
                text += " " + _fmt_ci(table.ci[(m, d, c)])
            cells.append(text + table.flag_text(m, d, c))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {n}" for n in table.notes if ci or not n.startswith("[lo, hi]")]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("ε", r"$\epsilon$")


def _tex_cell(table: Table, m: str, d: str, c: str, ci: bool) -> str:
    cell = table.cells.get((m, d, c))
    text = _fmt(cell).replace("±", r"$\pm$").replace("–", "--")
    if cell is not None and cell[0] == table.best(d, c):
        text = rf"\textbf{{{text}}}"
    if ci and (m, d, c) in table.ci:
        text += rf"\,{{\scriptsize {_fmt_ci(table.ci[(m, d, c)])}}}"
    flag = table.flag_text(m, d, c)
    return text + (rf"\,{{\scriptsize{flag}}}" if flag else "")


def _dataset_threats(table: Table, dataset: str) -> list[tuple[str, float]]:
    """The (norm, ε) threats of a dataset's columns, by norm then ε."""
    return sorted({(n, round(e, 10)) for (d, _), (_, n, e) in table.threats.items() if d == dataset})


def to_latex(table: Table, ci: bool = False) -> str:
    """booktabs tabulars. Datasets attacked at one threat share one tabular, a column
    group each; a dataset attacked at several (an ε sweep) gets a tabular of its own
    with the threat as a row level (one row per method and ε; columns: clean, then one
    per attack configuration, worst case and certified), so a sweep stays a few columns
    wide. With ``ci``, each cell's bootstrap interval follows its value."""
    datasets = list(dict.fromkeys(d for d, _ in table.columns))
    sweeps = [d for d in datasets if len(_dataset_threats(table, d)) > 1]
    parts = []
    if len(sweeps) < len(datasets):
        parts.append(_latex_by_column(table, [d for d in datasets if d not in sweeps], ci))
    parts += [_latex_by_threat(table, d, ci) for d in sweeps]
    return "\n".join(parts)


def _latex_by_column(table: Table, datasets: list[str], ci: bool) -> str:
    columns = [(d, c) for d, c in table.columns if d in datasets]
    spec = "l" + "r" * len(columns)
    lines = [r"\begin{tabular}{" + spec + "}", r"\toprule"]
    groups, rules, start = [], [], 2
    for d in datasets:
        n = sum(1 for dd, _ in columns if dd == d)
        groups.append(rf"\multicolumn{{{n}}}{{c}}{{{_tex_escape(d)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" & " + " & ".join(groups) + r" \\")
    lines.append(" ".join(rules))
    lines.append("method & " + " & ".join(_tex_escape(c) for _, c in columns) + r" \\")
    lines.append(r"\midrule")
    for m in table.methods:
        cells = [_tex_cell(table, m, d, c, ci) for d, c in columns]
        lines.append(_tex_escape(m) + " & " + " & ".join(cells) + r" \\")
    lines.append(r"\midrule")
    lines.append(
        "constant detector & " + " & ".join(f"{CONSTANT_DETECTOR_AUROC:.1f}" for _ in columns) + r" \\"
    )
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex_by_threat(table: Table, dataset: str, ci: bool) -> str:
    threats = _dataset_threats(table, dataset)
    norms = {n for n, _ in threats}
    by_key: dict[tuple[str, str, float], str] = {}  # (column label w/o threat, norm, ε) → column
    for (d, c), (base, n, e) in table.threats.items():
        if d == dataset:
            by_key[(base, n, round(e, 10))] = c
    order = [c for d, c in table.columns if d == dataset and c != "clean"]
    bases = list(dict.fromkeys(table.threats[(dataset, c)][0] for c in order))
    n_cols = 2 + 1 + len(bases)
    lines = [r"\begin{tabular}{ll" + "r" * (1 + len(bases)) + "}", r"\toprule"]
    lines.append(rf" & & \multicolumn{{{1 + len(bases)}}}{{c}}{{{_tex_escape(dataset)}}} \\")
    lines.append(rf"\cmidrule(lr){{3-{n_cols}}}")
    eps_head = rf"$\epsilon$ ({next(iter(norms))})" if len(norms) == 1 else "threat"
    lines.append(f"method & {eps_head} & clean & " + " & ".join(_tex_escape(b) for b in bases) + r" \\")
    lines.append(r"\midrule")

    def threat_label(norm: str, eps: float) -> str:
        return format_eps(eps) if len(norms) == 1 else f"{norm} {format_eps(eps)}"

    for i, m in enumerate(table.methods):
        if not any(table.cells.get((m, dataset, c)) for c in ["clean", *order]):
            continue
        rows = [th for th in threats if any((m, dataset, by_key.get((b, *th))) in table.cells for b in bases)]
        if i and lines[-1] != r"\midrule":
            lines.append(r"\addlinespace")
        for j, threat in enumerate(rows or [None]):  # None: a method with a clean cell only
            head = [_tex_escape(m), _tex_cell(table, m, dataset, "clean", ci)] if j == 0 else ["", ""]
            cols = [None if threat is None else by_key.get((b, *threat)) for b in bases]
            cells = [_tex_cell(table, m, dataset, c, ci) if c else "--" for c in cols]
            label = "--" if threat is None else threat_label(*threat)
            lines.append(f"{head[0]} & {label} & {head[1]} & " + " & ".join(cells) + r" \\")
    lines.append(r"\midrule")
    const = f"{CONSTANT_DETECTOR_AUROC:.1f}"
    lines.append("constant detector & any & " + " & ".join(const for _ in range(1 + len(bases))) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


FORMATS = {"csv": to_csv, "md": to_markdown, "latex": to_latex}
EXTENSIONS = {"csv": "csv", "md": "md", "latex": "tex"}


def write_leaderboards(
    store: Store, out: str | Path, formats=("csv", "md", "latex"), mode: str = "both", ci: bool = False
) -> dict[str, Path]:
    """Write ``leaderboard.<ext>`` for each format into ``out``; returns the paths. The
    CSV always carries the bootstrap intervals; Markdown and LaTeX show them with ``ci``."""
    table = build_table(store, mode, ci="csv" in formats or ci)
    paths = {}
    for fmt in formats:
        path = Path(out) / f"leaderboard.{EXTENSIONS[fmt]}"
        path.write_text(FORMATS[fmt](table, ci=ci))
        paths[fmt] = path
    return paths
