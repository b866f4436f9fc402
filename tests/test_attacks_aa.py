"""``aa``, AutoAttack for anomaly detection: closed forms, the per-sample worst case
over its members, the three traps of docs/THREAT_MODEL.md and a run through the CLI."""

import pytest
import torch
import yaml
from test_attack_toys import interior_batch, quadratic_problem, quadratic_worst_objective

import robustad as ra
from robustad.attacks.adapter import TwoLogitView
from robustad.attacks.base import objective
from robustad.benchmark.store import Store
from robustad.cli import main
from robustad.testing import LinearDetector, linear_worst_case

REL_TOL = 1e-4  # remaining gap ≤ 1e-4 of the optimal gain (measured ≤ 1e-6)
TINY = dict(apgd_steps=10, square_queries=20)


def _rel_gap(det, x, y, x_adv, want):
    clean = objective(det.score(x), y)
    return ((want - objective(det.score(x_adv), y)) / (want - clean)).max().item()


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_aa_reaches_linear_optimum(norm, eps):
    threat = ra.ThreatModel(norm, eps)
    if norm == "Linf":
        x = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
        y = torch.arange(40) % 2
    else:
        x, y = interior_batch()
    det = LinearDetector()
    x_adv = ra.create_attack("aa", **TINY).perturb(det, x, y, threat)
    want = objective(det.score(linear_worst_case(x, y, threat)), y)
    assert _rel_gap(det, x, y, x_adv, want) <= REL_TOL


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_aa_reaches_quadratic_optimum(norm, eps):
    x, y, det = quadratic_problem()
    threat = ra.ThreatModel(norm, eps)
    x_adv = ra.create_attack("aa", **TINY).perturb(det, x, y, threat)
    assert _rel_gap(det, x, y, x_adv, quadratic_worst_objective(x, y, det.center, threat)) <= REL_TOL


def test_aa_is_per_sample_max_over_members_and_clean(digits0, trained_svdd):
    x, y = digits0.test_x[::15], digits0.test_y[::15]  # 60 samples, both labels
    threat = ra.ThreatModel("Linf", 8 / 255)
    aa = ra.create_attack("aa", apgd_steps=5, square_queries=20)
    with torch.no_grad():
        got = objective(trained_svdd.score(aa.perturb(trained_svdd, x, y, threat)), y)
        clean = objective(trained_svdd.score(x), y)
    assert set(aa.member_scores) == {"apgd-ad", "apgd-ce", "square"}
    members = torch.stack([objective(s, y) for s in aa.member_scores.values()])
    for m in members:  # at least as strong as each member, on every sample
        assert (got >= m - 1e-5).all()
    assert (got >= clean - 1e-6).all()
    # and exactly the best of them (the ensemble keeps nothing else)
    assert torch.allclose(got, torch.maximum(members.max(0).values, clean), atol=1e-5)
    # the members differ: the ensemble is not one attack three times
    assert (members.max(0).values - members.min(0).values).max() > 0


def test_aa_attacks_samples_the_view_already_misclassifies():
    # Traps 2 and 3: stock AutoAttack only attacks samples its classifier gets right
    # and returns the clean image for the rest. The view is calibrated per sample, a
    # hair on the correct side of its own clean score, so no sample starts
    # misclassified and none is skipped; aa drives every sample to the optimum, with
    # each member alone too.
    x = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    y = torch.arange(40) % 2
    det = LinearDetector()
    view = TwoLogitView.calibrated(det, det.score, det.score(x), y)
    wrong = view(x).argmax(1) != y
    assert wrong.sum() == 0
    threat = ra.ThreatModel("Linf", 8 / 255)
    want = objective(det.score(linear_worst_case(x, y, threat)), y)
    for members in (["apgd-ad"], ["apgd-ce"], ["square"]):
        budget = dict(apgd_steps=10, square_queries=500, members=members)
        x_adv = ra.create_attack("aa", **budget).perturb(det, x, y, threat)
        assert _rel_gap(det, x, y, x_adv, want) <= 0.01, members


def test_aa_rejects_members_undefined_for_two_classes():
    # Trap 1: DLR, targeted APGD and FAB-T need more than two classes.
    for bad in (["apgd-dlr"], ["apgd-t"], ["fab-t"], []):
        with pytest.raises(ra.UserError, match="members"):
            ra.create_attack("aa", members=bad)


def test_aa_is_deterministic_and_leaves_global_rng_alone():
    x, y = interior_batch(n=10)
    threat = ra.ThreatModel("Linf", 8 / 255)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = ra.create_attack("aa", apgd_steps=3, square_queries=10, seed=1).perturb(
        LinearDetector(), x, y, threat
    )
    assert torch.equal(torch.get_rng_state(), state)
    b = ra.create_attack("aa", apgd_steps=3, square_queries=10, seed=1).perturb(
        LinearDetector(), x, y, threat
    )
    assert torch.equal(a, b)


def test_aa_end_to_end_through_the_cli(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "method_params": {"deepsvdd": {"epochs": 2}},
        "attack_params": {"aa": {"apgd_steps": 3, "square_queries": 10}, "pgd": {"steps": 3}},
    }))  # fmt: skip
    out = tmp_path / "res"
    argv = ["run", "--methods", "deepsvdd", "--datasets", "digits", "--classes", "1",
            "--attacks", "pgd,aa", "--eps", "4/255,8/255", "--config", str(cfg), "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    with Store(out / "bench.sqlite") as store:
        rows = store.jobs(kind="eval")
        assert sorted((r["attack"], round(r["eps"] * 255)) for r in rows) == [
            ("aa", 4), ("aa", 8), ("pgd", 4), ("pgd", 8)]  # fmt: skip
        for row in rows:
            assert row["status"] == "done" and isinstance(row["info"]["flags"], list)
            assert row["metrics"]["adv_auroc"] <= row["metrics"]["clean_auroc"]
            if row["attack"] == "aa":
                members = row["info"]["member_auroc"]
                assert set(members) == {"apgd-ad", "apgd-ce", "square"}
                assert row["metrics"]["adv_auroc"] <= min(members.values()) + 1e-12
                assert row["config"]["params"]["apgd_steps"] == 3
    board = (out / "leaderboard.md").read_text()
    assert "aa Linf 8/255" in board and "worst case Linf 4/255" in board
    assert (out / "plots" / "curves_digits_Linf.png").is_file()
    assert (out / "plots" / "clean_vs_robust.png").is_file()
    capsys.readouterr()
    assert main(["leaderboard", "--out", str(out), "--attack-mode", "normal"]) == 0
    assert "attack mode 'normal'" in capsys.readouterr().out
