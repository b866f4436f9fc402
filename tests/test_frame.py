"""The results frame (robustad.load_results, <out>/runs.csv): one row per eval job plus
the per-sample worst case, with the numbers and labels of the store and the leaderboard."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import robustad
from robustad.benchmark.frame import COLUMNS, load_results, results_frame
from robustad.benchmark.leaderboard import build_table, per_sample_worst_case_auroc
from robustad.benchmark.metrics import one_sided_scores
from robustad.benchmark.runner import method_fit_version
from robustad.benchmark.store import Store
from robustad.cli import main
from robustad.errors import UserError
from robustad.registry import list_methods

LABELS = np.array([0] * 10 + [1] * 10)
EPS = 8 / 255
SVDD = {"epochs": 3, "lr": 0.001, "width": 8}  # full params, as the runner stores them
TINY = """
method_params:
  deepsvdd: {epochs: 3, width: 8}
attack_params:
  pgd: {steps: 2}
"""


def _scores(seed: int, noise: float) -> np.ndarray:
    return LABELS + np.random.default_rng(seed).normal(0, noise, LABELS.shape)


def _fit(store, job_id, method, params, normal_class=0, seed=0, clean_seed=0, version=None):
    """A done fit row shaped like runner._row(FitJob) (tests/test_leaderboard.py)."""
    clean = _scores(clean_seed, 0.6)
    config = {"kind": "fit", "method": method, "params": params, "dataset": "digits", "data_params": {},
              "normal_class": normal_class, "seed": seed, "fit_version": 1, "preset": None,
              "batch_size": 256}  # fmt: skip
    if version is None:  # as the runner writes it: a registered method's current fit_version
        version = method_fit_version(method) if method in list_methods() else 1
    if version != 1:
        config["method_version"] = version
    store.put({"job_id": job_id, "kind": "fit", "fit_id": None, "method": method, "dataset": "digits",
               "normal_class": normal_class, "seed": seed, "config": config, "status": "done",
               "metrics": {"clean_auroc": roc_auc_score(LABELS, clean), "clean_aupr": 0.5,
                           "clean_fpr95": 0.25},
               "duration": 12.5},
              labels=LABELS, clean=clean)  # fmt: skip
    return clean


def _eval(store, job_id, fit_id, method, attack, params, adv, clean, flags=(), metrics=None):
    """A done eval row shaped like runner._row(EvalJob)."""
    config = {"kind": "eval", "fit_id": fit_id, "attack": attack, "params": params, "norm": "Linf",
              "eps": round(EPS, 12), "preset": None, "batch_size": 256}  # fmt: skip
    store.put({"job_id": job_id, "kind": "eval", "fit_id": fit_id, "method": method, "dataset": "digits",
               "normal_class": 0, "seed": 0, "attack": attack, "norm": "Linf", "eps": EPS,
               "config": config, "status": "done", "duration": 3.25,
               "metrics": {"adv_auroc": roc_auc_score(LABELS, adv), **(metrics or {})},
               "info": {"flags": list(flags)}},
              labels=LABELS, clean=clean, adv=adv)  # fmt: skip


@pytest.fixture
def store(tmp_path):
    """deepsvdd at width 8 and 16, each attacked by pgd with 10 and 100 steps; one
    deepsvdd fit of an older fit_version (superseded) attacked by pgd; mahalanobis
    attacked by fgsm only."""
    with Store(tmp_path / "bench.sqlite") as s:
        for k, width in enumerate((8, 16)):
            clean = _fit(s, f"fit-w{width}", "deepsvdd", {**SVDD, "width": width}, clean_seed=k)
            for j, steps in enumerate((10, 100)):
                adv = _scores(10 * k + j + 100, 1.0 + 0.5 * j + 0.3 * k)
                flags = ("zero-grad", "masking?") if (width, steps) == (8, 100) else ()
                _eval(s, f"eval-w{width}-s{steps}", f"fit-w{width}", "deepsvdd", "pgd",
                      {"steps": steps, "step_size": 0.01}, adv, clean, flags)  # fmt: skip
        assert method_fit_version("deepsvdd") > 1
        clean = _fit(s, "fit-old", "deepsvdd", {**SVDD, "width": 8}, clean_seed=5, version=1)
        _eval(s, "eval-old", "fit-old", "deepsvdd", "pgd", {"steps": 10, "step_size": 0.01},
              _scores(55, 1.0), clean)  # fmt: skip
        clean = _fit(s, "fit-maha", "mahalanobis", {"shrinkage": 0.1}, clean_seed=7)
        _eval(s, "eval-maha", "fit-maha", "mahalanobis", "fgsm", {}, _scores(77, 0.9), clean,
              metrics={"certified_auroc": 0.625})  # fmt: skip
        yield s


def test_one_row_per_eval_with_the_stored_numbers(store, tmp_path):
    df = load_results(tmp_path)
    assert list(df.columns) == COLUMNS
    evals = df[df["attack"] != "worst case"]
    assert sorted(evals["eval_id"]) == sorted(r["job_id"] for r in store.jobs(kind="eval"))
    for _, row in evals.iterrows():
        s = store.samples(row["eval_id"])
        assert row["adv_auroc"] == pytest.approx(roc_auc_score(s["labels"], s["adv"]))
        assert row["clean_auroc"] == pytest.approx(roc_auc_score(s["labels"], s["clean"]))
        assert row["adv_auroc_normal_only"] == pytest.approx(
            roc_auc_score(LABELS, np.where(LABELS == 0, s["adv"], s["clean"])))  # fmt: skip
    row = df.set_index("eval_id").loc["eval-w8-s100"]
    assert (row["method"], row["method_label"], row["attack"], row["attack_label"]) == (
        "deepsvdd", "deepsvdd (width=8)", "pgd", "pgd (steps=100)")  # fmt: skip
    assert json.loads(row["method_params"]) == {**SVDD, "width": 8}
    assert json.loads(row["attack_params"]) == {"steps": 100, "step_size": 0.01}
    assert (row["norm"], row["eps"], row["mode"]) == ("Linf", EPS, "both")
    assert (row["normal_class"], row["seed"]) == (0, 0)
    assert row["flags"] == "masking?;zero-grad"
    assert (row["fit_id"], row["fit_duration_s"], row["eval_duration_s"]) == ("fit-w8", 12.5, 3.25)
    assert (row["clean_aupr"], row["clean_fpr95"], row["n_attacks"]) == (0.5, 0.25, 1)
    assert np.isnan(row["certified_auroc"])
    assert df.set_index("eval_id").loc["eval-maha", "certified_auroc"] == 0.625
    assert df.set_index("eval_id").loc["eval-w8-s10", "flags"] == ""
    # the same frame through the package's namespace
    pd.testing.assert_frame_equal(robustad.load_results(tmp_path / "bench.sqlite"), df)


def test_worst_case_row_per_model_and_threat(store, tmp_path):
    df = load_results(tmp_path)
    worst = df[df["attack"] == "worst case"].set_index("fit_id")
    # one per current deepsvdd model (two pgd configurations each); none where the method
    # configuration ran one attack configuration (the old fit, mahalanobis), as on the leaderboard
    assert sorted(worst.index) == ["fit-w16", "fit-w8"]
    for width in (8, 16):
        rows = [r for r in store.jobs(kind="eval") if r["fit_id"] == f"fit-w{width}"]
        advs = [store.samples(r["job_id"])["adv"] for r in rows]
        by_hand = roc_auc_score(LABELS, np.where(LABELS == 0, np.max(advs, 0), np.min(advs, 0)))
        w = worst.loc[f"fit-w{width}"]
        assert w["adv_auroc"] == pytest.approx(per_sample_worst_case_auroc(store, rows))
        assert w["adv_auroc"] == pytest.approx(by_hand)
        assert w["adv_auroc"] <= min(roc_auc_score(LABELS, a) for a in advs) + 1e-12
        assert (w["n_attacks"], w["norm"], w["eps"], w["attack_label"]) == (2, "Linf", EPS, "worst case")
        assert pd.isna(w["eval_id"])
    assert worst.loc["fit-w8", "flags"] == "masking?;zero-grad"
    # the worst-case rows follow their model's attack rows
    order = list(df["attack_label"][df["fit_id"] == "fit-w8"])
    assert order == ["pgd (steps=10)", "pgd (steps=100)", "worst case"]


def test_two_configurations_get_the_leaderboards_labels(store, tmp_path):
    df = load_results(tmp_path)
    current = df[~df["superseded"]]
    assert set(current["method_label"]) == {"deepsvdd (width=8)", "deepsvdd (width=16)", "mahalanobis"}
    assert set(current["method_label"]) == set(build_table(store).methods)
    assert set(current["attack_label"]) == {"pgd (steps=10)", "pgd (steps=100)", "fgsm", "worst case"}
    # the frame's mean over runs is the leaderboard's cell
    table = build_table(store)
    for (m, a), v in current.groupby(["method_label", "attack_label"])["adv_auroc"]:
        assert table.cells[(m, "digits", a)][0] == pytest.approx(100 * v.mean())


def test_superseded_fits_are_marked(store, tmp_path):
    df = load_results(tmp_path)
    by_fit = df.groupby("fit_id")["superseded"].agg(set).to_dict()
    assert by_fit == {"fit-old": {True}, "fit-w8": {False}, "fit-w16": {False}, "fit-maha": {False}}
    old = df[df["fit_id"] == "fit-old"].set_index("attack")
    assert old.loc["pgd", "adv_auroc"] == pytest.approx(roc_auc_score(LABELS, _scores(55, 1.0)))


def test_attack_mode_and_missing_store(store, tmp_path):
    df = results_frame(store, mode="normal")
    row = df.set_index("eval_id").loc["eval-w16-s10"]
    s = store.samples("eval-w16-s10")
    assert row["mode"] == "normal"
    assert row["adv_auroc"] == pytest.approx(
        roc_auc_score(LABELS, one_sided_scores(s["clean"], s["adv"], LABELS, "normal")))  # fmt: skip
    assert df["certified_auroc"].isna().all()  # a bound on both-sided attacks only
    with pytest.raises(UserError, match="no results store"):
        load_results(tmp_path / "nowhere")


def test_bench_run_writes_runs_csv_matching_the_leaderboard(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "res"
    assert main(["run", "--methods", "deepsvdd", "--classes", "0,1", "--config", str(cfg),
                 "--quiet", "--out", str(out)]) == 0  # fmt: skip
    assert "runs.csv" in capsys.readouterr().out
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.columns) == COLUMNS
    assert len(runs) == 2 * (3 + 1)  # 2 classes × (noise, fgsm, pgd, worst case)
    with open(out / "leaderboard.csv") as fh:
        (board,) = list(csv.DictReader(fh))
    assert float(board["digits:clean"]) == pytest.approx(100 * runs.groupby("normal_class")["clean_auroc"]
                                                         .first().mean(), abs=0.005)  # fmt: skip
    for attack, v in runs.groupby("attack_label")["adv_auroc"]:
        assert float(board[f"digits:{attack}"]) == pytest.approx(100 * v.mean(), abs=0.005)
    # `bench leaderboard` writes the same file again from the store
    text = (out / "runs.csv").read_text()
    (out / "runs.csv").unlink()
    assert main(["leaderboard", "--out", str(out)]) == 0
    assert (out / "runs.csv").read_text() == text
