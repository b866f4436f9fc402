"""Leaderboard identity and completeness: results that share a name stay apart, and a
cell that averages fewer runs than its clean cell says so."""

import csv
import io

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from robustad.benchmark.leaderboard import build_table, config_labels, to_csv, to_latex, to_markdown
from robustad.benchmark.plots import robustness_curves
from robustad.benchmark.runner import method_fit_version
from robustad.benchmark.store import Store
from robustad.registry import list_methods

LABELS = np.array([0] * 10 + [1] * 10)
EPS = 8 / 255
SVDD = {"epochs": 3, "lr": 0.001, "width": 8}  # full params, as the runner stores them


def _scores(seed: int, noise: float) -> np.ndarray:
    return LABELS + np.random.default_rng(seed).normal(0, noise, LABELS.shape)


def _fit(store, job_id, method, params, normal_class=0, seed=0, clean_seed=0):
    """A done fit row shaped like runner._row(FitJob): config = spec + preset + batch size."""
    clean = _scores(clean_seed, 0.6)
    config = {"kind": "fit", "method": method, "params": params, "dataset": "digits", "data_params": {},
              "normal_class": normal_class, "seed": seed, "fit_version": 1, "preset": None,
              "batch_size": 256}  # fmt: skip
    # as the runner writes it: a registered method's current fit_version, when above 1
    version = method_fit_version(method) if method in list_methods() else 1
    if version != 1:
        config["method_version"] = version
    store.put({"job_id": job_id, "kind": "fit", "fit_id": None, "method": method, "dataset": "digits",
               "normal_class": normal_class, "seed": seed, "config": config, "status": "done",
               "metrics": {"clean_auroc": roc_auc_score(LABELS, clean)}},
              labels=LABELS, clean=clean)  # fmt: skip
    return clean


def _eval(store, job_id, fit_id, method, attack, params, adv, normal_class=0, seed=0, clean=None):
    """A done eval row shaped like runner._row(EvalJob)."""
    config = {"kind": "eval", "fit_id": fit_id, "attack": attack, "params": params, "norm": "Linf",
              "eps": round(EPS, 12), "preset": None, "batch_size": 256}  # fmt: skip
    store.put({"job_id": job_id, "kind": "eval", "fit_id": fit_id, "method": method, "dataset": "digits",
               "normal_class": normal_class, "seed": seed, "attack": attack, "norm": "Linf", "eps": EPS,
               "config": config, "status": "done", "metrics": {"adv_auroc": roc_auc_score(LABELS, adv)},
               "info": {"flags": []}},
              labels=LABELS, clean=clean if clean is not None else adv, adv=adv)  # fmt: skip


def _pct(scores) -> float:
    return 100 * roc_auc_score(LABELS, scores)


@pytest.fixture
def two_configs(tmp_path):
    """Two deepsvdd fits (width 8 and 16) of the same class and seed, each attacked by
    pgd with 10 and with 100 steps; one fit of another method with one configuration."""
    expected = {}
    with Store(tmp_path / "bench.sqlite") as store:
        for k, width in enumerate((8, 16)):
            params = {**SVDD, "width": width}
            clean = _fit(store, f"fit-w{width}", "deepsvdd", params, clean_seed=k)
            expected[("deepsvdd", width, "clean")] = _pct(clean)
            for j, steps in enumerate((10, 100)):
                adv = _scores(10 * k + j + 100, 1.0 + 0.5 * j + 0.3 * k)
                _eval(store, f"eval-w{width}-s{steps}", f"fit-w{width}", "deepsvdd", "pgd",
                      {"steps": steps, "step_size": 0.01}, adv, clean=clean)  # fmt: skip
                expected[("deepsvdd", width, steps)] = _pct(adv)
        clean = _fit(store, "fit-other", "mahalanobis", {"shrinkage": 0.1}, clean_seed=7)
        expected[("mahalanobis", "clean")] = _pct(clean)
        yield store, expected


def test_two_configurations_of_one_method_and_one_attack_are_kept_apart(two_configs):
    store, expected = two_configs
    table = build_table(store)
    assert table.methods == ["deepsvdd (width=16)", "deepsvdd (width=8)", "mahalanobis"]
    assert [c for _, c in table.columns] == ["clean", "pgd (steps=10)", "pgd (steps=100)", "worst case"]
    assert table.rows["deepsvdd (width=8)"] == ("deepsvdd", {**SVDD, "width": 8})
    for width in (8, 16):
        row = f"deepsvdd (width={width})"
        assert table.cells[(row, "digits", "clean")][0] == pytest.approx(
            expected[("deepsvdd", width, "clean")]
        )
        for steps in (10, 100):
            cell = table.cells[(row, "digits", f"pgd (steps={steps})")]
            assert cell == (pytest.approx(expected[("deepsvdd", width, steps)]), None)
    # the four pgd cells are four different numbers: nothing was merged or overwritten
    pgd = {
        table.cells[(m, "digits", c)][0]
        for m in table.methods[:2]
        for c in ("pgd (steps=10)", "pgd (steps=100)")
    }
    assert len(pgd) == 4
    assert table.cells[("mahalanobis", "digits", "clean")][0] == pytest.approx(
        expected[("mahalanobis", "clean")]
    )
    assert ("mahalanobis", "digits", "pgd (steps=10)") not in table.cells
    assert not table.incomplete and not table.flags

    # the same rows and columns in every output format
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert [r["method"] for r in rows] == table.methods
    assert float(rows[1]["digits:pgd (steps=100)"]) == pytest.approx(
        expected[("deepsvdd", 8, 100)], abs=0.005
    )
    md = to_markdown(table)
    assert "| deepsvdd (width=8) |" in md and "digits pgd (steps=100)" in md
    assert "parameters that differ" in md
    tex = to_latex(table)
    assert "deepsvdd (width=16) &" in tex and "pgd (steps=10) &" in tex


def test_worst_case_stays_per_model(two_configs):
    store, _ = two_configs
    table = build_table(store)
    for width in (8, 16):
        fit_evals = [r for r in store.jobs(kind="eval") if r["fit_id"] == f"fit-w{width}"]
        advs = [store.samples(r["job_id"])["adv"] for r in fit_evals]
        worst = np.where(LABELS == 0, np.max(advs, 0), np.min(advs, 0))
        cell = table.cells[(f"deepsvdd (width={width})", "digits", "worst case")][0]
        assert cell == pytest.approx(_pct(worst))
        assert cell <= min(_pct(a) for a in advs) + 1e-9


def test_robustness_curves_keep_configurations_apart(two_configs):
    store, expected = two_configs
    curves = robustness_curves(store)[("digits", "Linf")]
    assert set(curves) == {"pgd (steps=10)", "pgd (steps=100)", "worst case"}
    assert set(curves["pgd (steps=100)"]) == {"deepsvdd (width=8)", "deepsvdd (width=16)"}
    (e0, a0), (e1, a1) = curves["pgd (steps=100)"]["deepsvdd (width=16)"]
    assert (e0, e1) == (0.0, pytest.approx(EPS))
    assert a0 == pytest.approx(expected[("deepsvdd", 16, "clean")])
    assert a1 == pytest.approx(expected[("deepsvdd", 16, 100)])


def test_a_missing_eval_marks_the_cell_incomplete(tmp_path):
    # Three normal classes; square failed (absent) on class 2: its cell averages two
    # classes while the clean column averages three.
    per_class = {}
    with Store(tmp_path / "bench.sqlite") as store:
        for c in range(3):
            clean = _fit(store, f"fit-{c}", "deepsvdd", SVDD, normal_class=c, clean_seed=c)
            per_class[(c, "clean")] = _pct(clean)
            for j, attack in enumerate(("pgd", "square")):
                if (c, attack) == (2, "square"):
                    continue
                adv = _scores(10 * c + j + 50, 1.2)
                _eval(store, f"eval-{c}-{attack}", f"fit-{c}", "deepsvdd", attack, {}, adv,
                      normal_class=c, clean=clean)  # fmt: skip
                per_class[(c, attack)] = _pct(adv)
        # another method whose class-2 fit failed: its clean cell averages two classes
        for c in range(2):
            _fit(store, f"fit-other-{c}", "other", {}, normal_class=c, clean_seed=c + 20)
        table = build_table(store)
    cell = table.cells[("deepsvdd", "digits", "square")]
    assert cell[0] == pytest.approx(np.mean([per_class[(0, "square")], per_class[(1, "square")]]))
    assert table.cells[("deepsvdd", "digits", "pgd")][0] == pytest.approx(
        np.mean([per_class[(c, "pgd")] for c in range(3)]))  # fmt: skip
    assert table.flag_text("deepsvdd", "digits", "square") == " [incomplete 2/3]"
    assert table.incomplete == {("deepsvdd", "digits", "square"): (2, 3),
                                ("deepsvdd", "digits", "worst case"): (2, 3),
                                ("other", "digits", "clean"): (2, 3)}  # fmt: skip
    assert table.flag_text("deepsvdd", "digits", "pgd") == ""
    assert table.flag_text("deepsvdd", "digits", "clean") == ""
    md = to_markdown(table)
    assert "[incomplete 2/3]" in md and "[incomplete n/N] = the cell averages n of the N" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert rows[0]["flags"] == "digits:square=incomplete 2/3; digits:worst case=incomplete 2/3"
    assert rows[1]["method"] == "other" and rows[1]["flags"] == "digits:clean=incomplete 2/3"
    assert float(rows[1]["digits:clean"]) == pytest.approx(
        np.mean([_pct(_scores(20, 0.6)), _pct(_scores(21, 0.6))]), abs=0.005
    )
    assert r"{\scriptsize [incomplete 2/3]}" in to_latex(table)


def test_a_complete_table_has_no_incomplete_marks(tmp_path):
    with Store(tmp_path / "bench.sqlite") as store:
        for c in range(2):
            clean = _fit(store, f"fit-{c}", "deepsvdd", SVDD, normal_class=c, clean_seed=c)
            _eval(store, f"eval-{c}", f"fit-{c}", "deepsvdd", "pgd", {}, _scores(c + 9, 1.0),
                  normal_class=c, clean=clean)  # fmt: skip
        table = build_table(store)
    assert not table.incomplete and "incomplete" not in to_markdown(table)


def test_config_labels_show_only_what_differs():
    labels = config_labels({
        1: ("pgd", {"steps": 10, "restarts": 1, "opt": {"momentum": 0.9}}),
        2: ("pgd", {"steps": 10, "restarts": 1, "opt": {"momentum": 0.5}}),
        3: ("pgd", {"steps": 10, "restarts": 1, "opt": {"momentum": 0.5}, "targeted": True}),
        4: ("fgsm", {"x": 1}),
        5: ("pgd", {"steps": 10, "restarts": 1, "opt": {"momentum": 0.9}}),  # same as 1
        6: ("aa", {"k": 1}),
        7: ("aa", {"k": "1"}),  # prints like 6, is not 6
    })  # fmt: skip
    assert labels[1] == labels[5] == "pgd (opt.momentum=0.9, targeted=unset)"
    assert labels[2] == "pgd (opt.momentum=0.5, targeted=unset)"
    assert labels[3] == "pgd (opt.momentum=0.5, targeted=True)"
    assert labels[4] == "fgsm"
    assert labels[6] != labels[7] and labels[6].startswith("aa (k=1, #")
