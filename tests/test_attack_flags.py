"""Reliability flags (masking?, zero-grad, non-monotone), ε sweeps and their display."""

import numpy as np
import pytest
from test_attack_toys import Rounded, overlapping_batch

import robustad as ra
from robustad.attacks.reliability import MASKING, NON_MONOTONE, ZERO_GRAD, cross_job_flags, job_flags
from robustad.benchmark.leaderboard import build_table, per_sample_worst_case_auroc, to_csv, to_markdown
from robustad.benchmark.runner import method_fit_version
from robustad.benchmark.store import Store

THREAT = ra.ThreatModel("Linf", 8 / 255)


def _row(job_id, attack, auroc, eps=8 / 255, params=None):
    return {"job_id": job_id, "attack": attack, "norm": "Linf", "eps": eps,
            "config": {"params": params or {}}, "metrics": {"adv_auroc": auroc}}  # fmt: skip


@pytest.fixture(scope="module")
def obfuscated_results():
    """AUROC (fraction) and stats of each attack on a rounded-mean detector."""
    x, y = overlapping_batch()
    det = Rounded(levels=100)
    out = {"clean": ra.auroc(det.score(x), y)}
    for name, params in (("pgd", {"steps": 10}), ("apgd", {"steps": 10}), ("square", {"queries": 300}),
                         ("aa", {"apgd_steps": 5, "square_queries": 300})):  # fmt: skip
        attack = ra.create_attack(name, **params)
        out[name] = ra.auroc(det.score(attack.perturb(det, x, y, THREAT)), y)
        out[name + "_stats"] = dict(attack.stats)
        if name == "aa":
            out["aa_members"] = {k: ra.auroc(v, y) for k, v in attack.member_scores.items()}
    return out


def test_obfuscated_gradients_defeat_white_box_but_not_square(obfuscated_results):
    r = obfuscated_results
    # Zero gradient: PGD and APGD only gain what their random start happens to give
    # (stated: within 3 points of clean); Square, gradient-free, takes the detector
    # far down (stated: at least 20 points below clean; measured: clean 88.4, PGD and
    # APGD 87.4, Square 59.7).
    assert 0.6 < r["clean"] < 0.95
    for white in ("pgd", "apgd"):
        assert r[white] > r["clean"] - 0.03
        assert r[white + "_stats"]["zero_grad_frac"] == 1.0
    assert r["square"] < r["clean"] - 0.20
    # aa keeps its Square member's points, so it is as strong as Square here
    assert r["aa"] <= r["square"] + 1e-9


def test_masking_and_zero_grad_flags_are_raised(obfuscated_results):
    r = obfuscated_results
    rows = [_row("p", "pgd", r["pgd"]), _row("a", "apgd", r["apgd"]), _row("s", "square", r["square"])]
    flags = cross_job_flags(rows, {"pgd": True, "apgd": True, "square": False})
    assert flags == {"p": [MASKING], "a": [MASKING]}
    assert job_flags({"zero_grad_frac": r["pgd_stats"]["zero_grad_frac"]}) == [ZERO_GRAD]
    # aa raises masking? on itself from its members
    members = r["aa_members"]
    assert members["square"] < min(members["apgd-ad"], members["apgd-ce"]) - 0.01
    assert MASKING in job_flags({"member_auroc": members, "zero_grad_frac": 1.0})


def test_flags_stay_quiet_on_honest_results():
    rows = [_row("p", "pgd", 0.700), _row("s", "square", 0.695)]  # square within 1 point
    assert cross_job_flags(rows, {"pgd": True, "square": False}) == {}
    assert job_flags({"zero_grad_frac": 0.10, "member_auroc": {"apgd-ad": 0.5, "square": 0.495}}) == []


def test_non_monotone_sweep_is_flagged_per_attack_and_params():
    rows = [_row("a", "pgd", 0.9, 2 / 255), _row("b", "pgd", 0.8, 4 / 255), _row("c", "pgd", 0.85, 8 / 255),
            _row("d", "pgd", 0.99, 8 / 255, {"steps": 1})]  # another budget: another sweep  # fmt: skip
    assert cross_job_flags(rows, {"pgd": True}) == {"c": [NON_MONOTONE]}


def test_eps_sweep_is_monotone_on_trained_deepsvdd(digits0, trained_svdd):
    x, y = digits0.test_x[::6], digits0.test_y[::6]
    aurocs, rows = [], []
    for k, eps in enumerate((2 / 255, 4 / 255, 8 / 255, 16 / 255)):
        x_adv = ra.create_attack("pgd", steps=10).perturb(trained_svdd, x, y, ra.ThreatModel("Linf", eps))
        aurocs.append(ra.auroc(trained_svdd.score_batched(x_adv), y))
        rows.append(_row(str(k), "pgd", aurocs[-1], eps))
    assert all(b <= a for a, b in zip(aurocs, aurocs[1:])), aurocs
    assert aurocs[-1] < aurocs[0]  # and it does fall
    assert cross_job_flags(rows, {"pgd": True}) == {}


def test_huge_eps_drives_differentiable_detector_below_5_percent(digits0, trained_svdd):
    # ε = 0.5 in L∞ lets the attacker reach mid-grey from any image and far beyond:
    # every normal can be made more anomalous than every anomaly.
    x, y = digits0.test_x[::6], digits0.test_y[::6]
    x_adv = ra.create_attack("pgd", steps=10).perturb(trained_svdd, x, y, ra.ThreatModel("Linf", 0.5))
    assert ra.auroc(trained_svdd.score_batched(x_adv), y) < 0.05


def test_leaderboard_shows_stored_flags(tmp_path):
    labels = np.array([0, 0, 1, 1])
    clean = np.array([0.1, 0.2, 0.8, 0.9])
    with Store(tmp_path / "bench.sqlite") as store:
        base = {"method": "m", "dataset": "digits", "normal_class": 0, "seed": 0, "status": "done"}
        store.put({**base, "job_id": "fit-1", "kind": "fit", "config": {},
                   "metrics": {"clean_auroc": 1.0}}, labels=labels, clean=clean)  # fmt: skip
        for jid, attack, flags in (("e1", "pgd", [MASKING, ZERO_GRAD]), ("e2", "square", [])):
            row = {**base, "job_id": jid, "kind": "eval", "fit_id": "fit-1", "attack": attack,
                   "norm": "Linf", "eps": 8 / 255, "config": {"params": {}},
                   "metrics": {"adv_auroc": 0.5}, "info": {"flags": flags}}  # fmt: skip
            store.put(row, labels=labels, clean=clean, adv=clean[::-1].copy())
        table = build_table(store)
    md = to_markdown(table)
    assert "[masking?, zero-grad]" in md and "masking? = Square beat" in md
    assert to_csv(table).splitlines()[1].endswith("digits:pgd=masking?|zero-grad")
    # columns: clean, then attacks weakest to strongest, then the worst case
    assert [c for _, c in table.columns] == ["clean", "pgd", "square", "worst case"]


def test_leaderboard_leaves_out_models_from_an_older_fit_version(tmp_path):
    # Two COBRA fits of the same class and seed: one made before COBRA's first training
    # change (no method_version in its spec, i.e. 1), one at today's fit_version. Only
    # the new one counts.
    labels = np.array([0, 0, 1, 1])
    with Store(tmp_path / "bench.sqlite") as store:
        base = {"method": "cobra", "dataset": "digits", "normal_class": 0, "seed": 0, "status": "done",
                "kind": "fit"}  # fmt: skip
        current = method_fit_version("cobra")
        new = {"job_id": "fit-new", "config": {"method_version": current}, "metrics": {"clean_auroc": 1.0}}
        store.put({**base, **new}, labels=labels, clean=np.array([0.1, 0.2, 0.8, 0.9]))
        # stored last, so without the version check it would be the one shown
        store.put({**base, "job_id": "fit-old", "config": {}, "metrics": {"clean_auroc": 0.0}},
                  labels=labels, clean=np.array([0.9, 0.8, 0.2, 0.1]))  # fmt: skip
        table = build_table(store)
    assert table.cells[("cobra", "digits", "clean")][0] == pytest.approx(100.0)  # the new model alone
    assert any("left out: 1 cobra model(s)" in n for n in table.notes)


def test_worst_case_column_picks_the_strongest_attack_per_sample(tmp_path):
    # Attack A wins on normal sample 0, attack B on anomaly 3: per-attack AUROCs are
    # 50 and 75, the per-sample worst case [0.95, 0.2, 0.8, 0.15] gives 1 of 4 pairs.
    labels = np.array([0, 0, 1, 1])
    clean = np.array([0.1, 0.2, 0.8, 0.9])
    adv = {"pgd": np.array([0.95, 0.2, 0.8, 0.9]), "square": np.array([0.1, 0.2, 0.8, 0.15])}
    with Store(tmp_path / "bench.sqlite") as store:
        base = {"method": "m", "dataset": "digits", "normal_class": 0, "seed": 0, "status": "done"}
        store.put({**base, "job_id": "fit-1", "kind": "fit", "config": {},
                   "metrics": {"clean_auroc": 1.0}}, labels=labels, clean=clean)  # fmt: skip
        for attack, scores in adv.items():
            row = {**base, "job_id": attack, "kind": "eval", "fit_id": "fit-1", "attack": attack,
                   "norm": "Linf", "eps": 8 / 255, "config": {"params": {}}, "metrics": {}}  # fmt: skip
            store.put(row, labels=labels, clean=clean, adv=scores)
        table = build_table(store)
        worst = per_sample_worst_case_auroc(store, store.jobs(kind="eval"))
    assert worst == pytest.approx(0.25)
    cells = {c: table.cells[("m", "digits", c)][0] for c in ("pgd", "square", "worst case")}
    assert cells == pytest.approx({"pgd": 50.0, "square": 75.0, "worst case": 25.0})
