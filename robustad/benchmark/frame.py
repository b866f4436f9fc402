"""The results store as one pandas frame: one row per finished eval job, plus the
per-sample worst case per model and threat (docs/STORE.md, "The results frame").

Every sample blob is read once. Labels are the leaderboard's (``leaderboard.identities``
over the current fits), so a row of the frame names the same method and attack
configuration as the leaderboard does. AUROC, AUPR and FPR@95 are fractions, as in the
store (the leaderboard shows AUROC in %).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from robustad.benchmark.bootstrap import N_BOOT, SEED, auroc_ci, run_seed
from robustad.benchmark.leaderboard import (
    WORST,
    _canonical,
    _data_config,
    _params,
    identities,
    per_sample_worst_case,
    superseded_fits,
)
from robustad.benchmark.metrics import auroc, one_sided_scores, score_metrics
from robustad.benchmark.store import Store
from robustad.errors import UserError

#: the frame's columns, in this order (docs/STORE.md describes each)
COLUMNS = [
    "method", "method_label", "method_params", "dataset", "dataset_label", "dataset_params",
    "normal_class", "seed", "attack", "attack_label", "attack_params", "norm", "eps", "mode",
    "clean_auroc", "clean_auroc_lo", "clean_auroc_hi", "clean_aupr", "clean_fpr95",
    "adv_auroc", "adv_auroc_lo", "adv_auroc_hi", "adv_aupr", "adv_fpr95",
    "adv_auroc_normal_only", "adv_auroc_anomaly_only", "certified_auroc", "n_attacks", "flags",
    "superseded", "fit_id", "eval_id", "fit_duration_s", "eval_duration_s",
]  # fmt: skip
#: rows are sorted by these (worst-case rows after the attacks of their model and threat)
SORT_BY = ["dataset_label", "method_label", "superseded", "normal_class", "seed", "fit_id",
           "norm", "eps", "_worst", "attack_label", "eval_id"]  # fmt: skip
RUNS_CSV = "runs.csv"


def _json(params: Any) -> str:
    return _canonical(params)


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def results_frame(
    store: Store, mode: str = "both", n_boot: int = N_BOOT, ci_seed: int = SEED
) -> pd.DataFrame:
    """The frame of :func:`load_results` from an open :class:`Store`."""
    all_fits = {r["job_id"]: r for r in store.jobs(kind="fit", status="done")}
    old = superseded_fits(all_fits.values())
    evals = [r for r in store.jobs(kind="eval", status="done") if r["fit_id"] in all_fits]
    # labels as the leaderboard shows them: computed over the current fits only; the
    # superseded fits (not on the leaderboard) are labelled among themselves
    ids = {}
    for is_old in (False, True):
        fits = {k: f for k, f in all_fits.items() if (k in old) == is_old}
        ids[is_old] = identities(fits, [r for r in evals if r["fit_id"] in fits])

    def base(fit_id: str) -> dict[str, Any]:
        fit, i = all_fits[fit_id], ids[fit_id in old]
        m = fit.get("metrics") or {}
        return {
            "method": fit["method"], "method_label": i.row[fit_id], "method_params": _json(_params(fit)),
            "dataset": fit["dataset"], "dataset_label": i.dataset[fit_id],
            "dataset_params": _json(_data_config(fit)),
            "normal_class": int(fit["normal_class"]), "seed": int(fit["seed"]), "mode": mode,
            "clean_auroc": _num(m.get("clean_auroc")), "clean_aupr": _num(m.get("clean_aupr")),
            "clean_fpr95": _num(m.get("clean_fpr95")), "superseded": fit_id in old, "fit_id": fit_id,
            "fit_duration_s": _num(fit.get("duration")),
        }  # fmt: skip

    def interval(scores, labels, fit_id: str) -> tuple[float, float]:
        """The bootstrap interval (robustad.benchmark.bootstrap) of one run's AUROC."""
        if not n_boot:
            return math.nan, math.nan
        fit = all_fits[fit_id]
        return auroc_ci(scores, labels, n_boot, run_seed(fit["normal_class"], fit["seed"], ci_seed))

    clean_ci: dict[str, tuple[float, float]] = {}  # fit_id → interval of its clean AUROC

    def clean_interval(fit_id: str, labels, clean) -> dict[str, float]:
        if fit_id not in clean_ci:
            clean_ci[fit_id] = interval(clean, labels, fit_id)
        return dict(zip(("clean_auroc_lo", "clean_auroc_hi"), clean_ci[fit_id]))

    def attacked_metrics(labels, clean, attacked, fit_id: str) -> dict[str, float]:
        out = score_metrics(attacked, labels, "adv_")
        out["adv_auroc_lo"], out["adv_auroc_hi"] = interval(attacked, labels, fit_id)
        out.update(clean_interval(fit_id, labels, clean))
        out["adv_auroc_normal_only"] = auroc(one_sided_scores(clean, attacked, labels, "normal"), labels)
        out["adv_auroc_anomaly_only"] = auroc(one_sided_scores(clean, attacked, labels, "anomaly"), labels)
        return out

    records: list[dict[str, Any]] = []
    # (fit_id, norm, eps) → [(eval row, labels, clean, attacked scores)]
    per_threat: dict[tuple[str, str, float], list] = defaultdict(list)
    for r in evals:
        s = store.samples(r["job_id"])
        labels, clean = s["labels"], s["clean"]
        attacked = one_sided_scores(clean, s["adv"], labels, mode)
        i = ids[r["fit_id"] in old]
        cert = (r.get("metrics") or {}).get("certified_auroc")
        records.append({
            **base(r["fit_id"]), "attack": r["attack"], "attack_label": i.attack[r["job_id"]],
            "attack_params": _json(_params(r)), "norm": r["norm"], "eps": float(r["eps"]),
            **attacked_metrics(labels, clean, attacked, r["fit_id"]),
            # a bound on both-sided attacks only, as on the leaderboard
            "certified_auroc": _num(cert) if mode == "both" else math.nan,
            "n_attacks": 1, "flags": ";".join(sorted((r.get("info") or {}).get("flags") or [])),
            "eval_id": r["job_id"], "eval_duration_s": _num(r.get("duration")),
        })  # fmt: skip
        per_threat[(r["fit_id"], r["norm"], round(float(r["eps"]), 10))].append((r, labels, clean, attacked))

    # the per-sample worst case per model and threat, where the leaderboard shows one: the
    # method configuration ran at least two attack configurations at that threat
    configs_run: dict[tuple, set] = defaultdict(set)
    for (fit_id, norm, eps), runs in per_threat.items():
        i = ids[fit_id in old]
        key = (fit_id in old, i.row[fit_id], i.dataset[fit_id], norm, eps)
        configs_run[key].update(i.attack_key[r["job_id"]] for r, *_ in runs)
    for (fit_id, norm, eps), runs in per_threat.items():
        i = ids[fit_id in old]
        if len(configs_run[(fit_id in old, i.row[fit_id], i.dataset[fit_id], norm, eps)]) < 2:
            continue  # a worst case over one attack repeats its row
        labels, clean = runs[0][1], runs[0][2]
        worst = per_sample_worst_case(labels, [a for *_, a in runs])
        flags = sorted({f for r, *_ in runs for f in ((r.get("info") or {}).get("flags") or [])})
        records.append({
            **base(fit_id), "attack": WORST, "attack_label": WORST,
            "attack_params": _json(sorted([[r["attack"], _params(r)] for r, *_ in runs], key=_json)),
            "norm": norm, "eps": float(runs[0][0]["eps"]), **attacked_metrics(labels, clean, worst, fit_id),
            "certified_auroc": math.nan, "n_attacks": len(runs), "flags": ";".join(flags),
            "eval_id": None, "eval_duration_s": math.nan,
        })  # fmt: skip

    if not records:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    df = pd.DataFrame.from_records(records)
    df["_worst"] = df["attack"] == WORST
    df = df.sort_values(SORT_BY, kind="mergesort", na_position="first").reset_index(drop=True)
    return df[COLUMNS]


def load_results(
    out: str | Path, mode: str = "both", n_boot: int = N_BOOT, ci_seed: int = SEED
) -> pd.DataFrame:
    """The results in ``<out>/bench.sqlite`` as a pandas frame.

    One row per finished eval job (an attack on one fitted model at one threat) and one
    row per (fit, norm, ε) for the per-sample worst case over the attacks run on that
    fit at that threat (``attack == "worst case"``), where the leaderboard shows one.
    ``mode`` (``both``, ``normal``, ``anomaly``) chooses who is attacked, as for the
    leaderboard. Fits of an older ``fit_version`` are kept, with ``superseded`` True
    (the leaderboard leaves them out). Columns: :data:`COLUMNS`, see docs/STORE.md.

    ``clean_auroc_lo/hi`` and ``adv_auroc_lo/hi`` are the 95% percentile bootstrap
    interval of the run's AUROC over its test samples (``n_boot`` stratified resamples,
    seeded by ``ci_seed``, the normal class and the seed; ``robustad.benchmark.bootstrap``);
    ``n_boot=0`` leaves them NaN.

    ``out`` is the results folder (or the ``bench.sqlite`` file itself).
    """
    path = Path(out)
    if path.is_dir() or not path.suffix:
        path = path / "bench.sqlite"
    if not path.is_file():
        raise UserError(f"no results store at {path}; run 'bench run --out {out}' first")
    with Store(path) as store:
        return results_frame(store, mode, n_boot, ci_seed)


def write_runs_csv(store: Store, out: str | Path, mode: str = "both") -> Path:
    """Write the frame of ``store`` to ``<out>/runs.csv`` (beside the leaderboards)."""
    path = Path(out) / RUNS_CSV
    frame = results_frame(store, mode)
    path.write_text(frame.to_csv(index=False, lineterminator="\n"))
    return path


__all__ = ["COLUMNS", "RUNS_CSV", "load_results", "results_frame", "write_runs_csv"]
