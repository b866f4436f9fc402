"""The results frame (robustad.load_results, <out>/runs.csv): one row per eval job plus
the per-sample worst case, with the numbers and labels of the store and the leaderboard."""

import csv
import io
import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import robustad
from robustad.benchmark.bootstrap import (
    auroc_ci,
    bootstrap_aurocs,
    percentile_interval,
    resampled_aurocs,
    run_seed,
)
from robustad.benchmark.frame import COLUMNS, load_results, results_frame
from robustad.benchmark.leaderboard import (
    build_table,
    per_sample_worst_case_auroc,
    to_csv,
    to_latex,
    to_markdown,
)
from robustad.benchmark.metrics import one_sided_scores
from robustad.benchmark.runner import method_fit_version
from robustad.benchmark.store import Store
from robustad.cli import main
from robustad.errors import UserError
from robustad.registry import list_methods

LABELS = np.array([0] * 10 + [1] * 10)
CI_COLUMNS = ["clean_auroc_lo", "clean_auroc_hi", "adv_auroc_lo", "adv_auroc_hi"]
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


def _eval(store, job_id, fit_id, method, attack, params, adv, clean, flags=(), metrics=None, normal_class=0,
          seed=0):  # fmt: skip
    """A done eval row shaped like runner._row(EvalJob)."""
    config = {"kind": "eval", "fit_id": fit_id, "attack": attack, "params": params, "norm": "Linf",
              "eps": round(EPS, 12), "preset": None, "batch_size": 256}  # fmt: skip
    store.put({"job_id": job_id, "kind": "eval", "fit_id": fit_id, "method": method, "dataset": "digits",
               "normal_class": normal_class, "seed": seed, "attack": attack, "norm": "Linf", "eps": EPS,
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


# -- bootstrap confidence intervals (robustad.benchmark.bootstrap) ---------------------


def _sample(n_normal: int, n_anomalous: int, seed: int = 0, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_normal, int), np.ones(n_anomalous, int)]
    return rng.normal(0, 1, len(y)) + shift * y, y


def test_resampled_aurocs_equal_scikit_learns_on_every_resample():
    s, y = _sample(30, 20, seed=3)
    s = np.round(s, 1)  # ties within and across the classes
    rng = np.random.default_rng(1)
    i0, i1 = rng.integers(0, 30, (64, 30)), rng.integers(0, 20, (64, 20))
    got = resampled_aurocs(s, y, i0, i1)
    neg, pos = s[y == 0], s[y == 1]
    want = [roc_auc_score(np.r_[np.zeros(30), np.ones(20)], np.r_[neg[a], pos[b]]) for a, b in zip(i0, i1)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # rows of another shape than the test set (fewer normals than there are) as well
    got = resampled_aurocs(s, y, i0[:, :7], i1[:, :3])
    want = [
        roc_auc_score(np.r_[np.zeros(7), np.ones(3)], np.r_[neg[a[:7]], pos[b[:3]]]) for a, b in zip(i0, i1)
    ]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_bootstrap_resamples_are_stratified_and_seeded():
    s, y = _sample(40, 25, seed=4)
    a = bootstrap_aurocs(s, y, n_boot=500, seed=7)
    assert a.shape == (500,)
    np.testing.assert_array_equal(a, bootstrap_aurocs(s, y, n_boot=500, seed=7))  # deterministic
    assert not np.array_equal(a, bootstrap_aurocs(s, y, n_boot=500, seed=8))
    assert auroc_ci(s, y, seed=[0, 1, 2]) == auroc_ci(s, y, seed=[0, 1, 2])
    # the resampled AUROCs scatter around the test set's AUROC
    assert abs(np.mean(a) - roc_auc_score(y, s)) < 0.01
    # one anomaly: every stratified resample holds it, so every resample has an AUROC
    s1, y1 = s[:41], y[:41]
    assert np.isfinite(bootstrap_aurocs(s1, y1, n_boot=200)).all()
    with pytest.raises(ValueError, match="both normal and anomalous"):
        bootstrap_aurocs(s[:40], y[:40])


@pytest.mark.parametrize("n_normal, n_anomalous", [(100, 40), (40, 100)])
def test_each_class_is_resampled_on_its_own(n_normal, n_anomalous):
    """All normals score 0, the anomalies ±1 half and half: the AUROC is the fraction of
    anomalies above 0 (ties count ½), which only resampling the anomalies moves; its
    bootstrap standard deviation is sqrt(p(1 − p)/n) with p = ½ over the anomalies' count."""
    for varied, fixed in ((n_anomalous, n_normal), (n_normal, n_anomalous)):
        half = np.r_[np.ones(varied // 2), -np.ones(varied - varied // 2)]
        if varied == n_anomalous:  # anomalies vary, normals constant
            s, y = np.r_[np.zeros(fixed), half], np.r_[np.zeros(fixed, int), np.ones(varied, int)]
        else:  # normals vary, anomalies constant
            s, y = np.r_[half, np.zeros(fixed)], np.r_[np.zeros(varied, int), np.ones(fixed, int)]
        a = bootstrap_aurocs(s, y, n_boot=4000)
        assert roc_auc_score(y, s) == 0.5 and np.mean(a) == pytest.approx(0.5, abs=0.01)
        # the count drawn from each class is that class's size: the resampled fraction is
        # a binomial(varied, ½) / varied
        assert np.std(a) == pytest.approx(np.sqrt(0.25 / varied), rel=0.1)
        assert np.allclose(a * varied, np.round(a * varied))


def test_interval_contains_the_estimate_and_narrows_with_more_samples():
    widths = []
    for n in (40, 400, 4000):
        s, y = _sample(n, n, seed=n)
        lo, hi = auroc_ci(s, y)
        assert lo < roc_auc_score(y, s) < hi
        widths.append(hi - lo)
        for n0, n1 in ((n, n // 4), (n // 4, n)):  # more normals, more anomalies
            s, y = _sample(n0, n1, seed=n + 1, shift=0.5)
            lo, hi = auroc_ci(s, y)
            assert lo < roc_auc_score(y, s) < hi
    # the standard error falls like 1/sqrt(n): ten times the samples, about a third of the width
    assert widths[0] > 2 * widths[1] > 4 * widths[2]


def test_known_intervals():
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    separated = y + np.linspace(0, 0.5, 100)
    assert auroc_ci(separated, y) == (1.0, 1.0)  # every resample is perfectly separated
    assert auroc_ci(-separated, y) == (0.0, 0.0)
    assert auroc_ci(separated[20:], y[20:]) == (1.0, 1.0)  # more anomalies than normals
    assert auroc_ci(-separated[:70], y[:70]) == (0.0, 0.0)  # fewer
    assert auroc_ci(np.zeros(100), y) == (0.5, 0.5)  # a constant detector: all ties
    assert percentile_interval(np.arange(101.0)) == (pytest.approx(2.5), pytest.approx(97.5))
    assert percentile_interval(np.arange(101.0), level=0.5) == (pytest.approx(25.0), pytest.approx(75.0))


def test_bootstrap_is_fast():
    s, y = _sample(1000, 9000, seed=1)  # CIFAR-10 one-class: 1,000 normal, 9,000 anomalous
    auroc_ci(s[:100], y[:100] * 0 + np.r_[np.zeros(50, int), np.ones(50, int)])  # warm up
    start = time.perf_counter()
    auroc_ci(s, y)
    # ~0.2 s on one core; a loop or a sort per resample takes seconds
    assert time.perf_counter() - start < 2.0


def test_frame_intervals(store, tmp_path):
    df = load_results(tmp_path)
    for _, row in df.iterrows():
        assert row["clean_auroc_lo"] <= row["clean_auroc"] <= row["clean_auroc_hi"]
        assert row["adv_auroc_lo"] <= row["adv_auroc"] <= row["adv_auroc_hi"]
    row = df.set_index("eval_id").loc["eval-w8-s100"]
    s = store.samples("eval-w8-s100")
    seed = run_seed(row["normal_class"], row["seed"])
    assert (row["adv_auroc_lo"], row["adv_auroc_hi"]) == auroc_ci(s["adv"], s["labels"], seed=seed)
    assert (row["clean_auroc_lo"], row["clean_auroc_hi"]) == auroc_ci(s["clean"], s["labels"], seed=seed)
    # a worst-case row: the interval of the per-sample worst case
    w = df[(df["fit_id"] == "fit-w8") & (df["attack"] == "worst case")].iloc[0]
    advs = [store.samples(f"eval-w8-s{k}")["adv"] for k in (10, 100)]
    worst = np.where(LABELS == 0, np.max(advs, 0), np.min(advs, 0))
    assert (w["adv_auroc_lo"], w["adv_auroc_hi"]) == auroc_ci(worst, LABELS, seed=seed)
    # another base seed, other intervals; none at all with n_boot=0
    other = load_results(tmp_path, ci_seed=1)
    assert not np.allclose(other["adv_auroc_lo"], df["adv_auroc_lo"])
    none = load_results(tmp_path, n_boot=0)
    assert none[["clean_auroc_lo", "clean_auroc_hi", "adv_auroc_lo", "adv_auroc_hi"]].isna().all().all()
    pd.testing.assert_frame_equal(none.drop(columns=CI_COLUMNS), df.drop(columns=CI_COLUMNS))


def test_leaderboard_intervals_are_the_frames(store, tmp_path, capsys):
    df = load_results(tmp_path)
    df = df[~df["superseded"]]
    table = build_table(store, ci=True)
    assert not build_table(store).ci  # only on request
    for _, row in df.iterrows():  # one run per cell here: the cell's interval is the run's
        lo, hi = table.ci[(row["method_label"], "digits", row["attack_label"])]
        assert (lo, hi) == (
            pytest.approx(100 * row["adv_auroc_lo"]),
            pytest.approx(100 * row["adv_auroc_hi"]),
        )
        lo, hi = table.ci[(row["method_label"], "digits", "clean")]
        assert (lo, hi) == (
            pytest.approx(100 * row["clean_auroc_lo"]),
            pytest.approx(100 * row["clean_auroc_hi"]),
        )
    assert not any(c.startswith("certified") for _, _, c in table.ci)  # a bound, not an estimate
    board = {r["method"]: r for r in csv.DictReader(io.StringIO(to_csv(table)))}
    assert float(board["deepsvdd (width=8)"]["digits:pgd (steps=100):lo"]) == pytest.approx(
        table.ci[("deepsvdd (width=8)", "digits", "pgd (steps=100)")][0], abs=0.005)  # fmt: skip
    lo, hi = table.ci[("mahalanobis", "digits", "clean")]
    assert f"[{lo:.1f}, {hi:.1f}]" in to_markdown(table, ci=True)
    assert f"[{lo:.1f}, {hi:.1f}]" not in to_markdown(table)
    assert "bootstrap interval" in to_markdown(table, ci=True)
    assert "bootstrap interval" not in to_markdown(table)
    assert rf"\scriptsize [{lo:.1f}, {hi:.1f}]" in to_latex(table, ci=True)
    assert f"[{lo:.1f}, {hi:.1f}]" not in to_latex(table)
    # bench leaderboard: Markdown with --ci shows them; the CSV always has them
    assert main(["leaderboard", "--out", str(tmp_path)]) == 0
    assert f"[{lo:.1f}, {hi:.1f}]" not in capsys.readouterr().out
    assert main(["leaderboard", "--ci", "--out", str(tmp_path)]) == 0
    assert f"[{lo:.1f}, {hi:.1f}]" in capsys.readouterr().out
    assert main(["leaderboard", "--format", "csv", "--out", str(tmp_path)]) == 0
    (row,) = [r for r in csv.DictReader(io.StringIO(capsys.readouterr().out)) if r["method"] == "mahalanobis"]
    assert (row["digits:clean:lo"], row["digits:clean:hi"]) == (f"{lo:.2f}", f"{hi:.2f}")


def test_a_cell_interval_is_over_the_mean_of_its_runs(tmp_path):
    """Two classes and two seeds: each resample's cell value is the mean over classes, then
    seeds, of the runs' resampled AUROCs; the interval is over those means."""
    with Store(tmp_path / "bench.sqlite") as s:
        for c in range(2):
            for seed in range(2):
                clean = _fit(s, f"fit-{c}-{seed}", "deepsvdd", SVDD, normal_class=c, seed=seed,
                             clean_seed=10 * c + seed)  # fmt: skip
                _eval(s, f"eval-{c}-{seed}", f"fit-{c}-{seed}", "deepsvdd", "pgd", {},
                      _scores(50 + 10 * c + seed, 1.3), clean, normal_class=c, seed=seed)  # fmt: skip
        table = build_table(s, ci=True)
        boots = {(c, seed): bootstrap_aurocs(s.samples(f"eval-{c}-{seed}")["adv"], LABELS,
                                             seed=run_seed(c, seed))
                 for c in range(2) for seed in range(2)}  # fmt: skip
    means = np.mean([np.mean([boots[(c, seed)] for c in range(2)], 0) for seed in range(2)], 0)
    lo, hi = table.ci[("deepsvdd", "digits", "pgd")]
    assert (lo, hi) == (
        pytest.approx(100 * np.percentile(means, 2.5)),
        pytest.approx(100 * np.percentile(means, 97.5)),
    )
    mean, std = table.cells[("deepsvdd", "digits", "pgd")]
    assert lo <= mean <= hi and std is not None  # ± over seeds stays
    assert "± " in to_markdown(table, ci=True) and "[" in to_markdown(table, ci=True)
