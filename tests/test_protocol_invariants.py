"""Two invariants of the protocol, checked on real artefacts: a constant detector
scores exactly 50 under every attack, and no committed leaderboard has an attacked
AUROC above its clean one."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import robustad as ra
from robustad.methods.base import Detector

RESULTS = Path(__file__).resolve().parent.parent / "results"
FAST = {"pgd": {"steps": 3}, "eot-pgd": {"steps": 2, "eot_draws": 2}, "apgd": {"steps": 3},
        "square": {"queries": 20}, "aa": {"apgd_steps": 2, "square_queries": 20}}  # fmt: skip


class Constant(Detector):
    """s(x) = 0.7 for every input, still a function of x so autograd runs."""

    def fit(self, data, ctx=None):
        return self

    def score(self, x):
        return 0.7 + 0.0 * x.flatten(1).sum(1)

    def anomaly_map(self, x):  # constant too, for pgd-map
        return 0.7 + 0.0 * x.mean(1)


@pytest.mark.parametrize("attack", [a for a in ra.list_attacks() if not a.startswith("ta:")])
def test_a_constant_detector_scores_exactly_50_under_every_attack(attack):
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(12) % 2
    atk = ra.create_attack(attack, **FAST.get(attack, {}))
    x_adv = atk.perturb(Constant(), x, y, ra.ThreatModel("Linf", 8 / 255))
    assert ra.auroc(atk.adv_scores, y) == 0.5
    assert ra.auroc(Constant().score(x_adv), y) == 0.5


def committed_leaderboards() -> list[Path]:
    return sorted(RESULTS.rglob("leaderboard.csv"))


def test_there_are_committed_leaderboards_to_check():
    assert committed_leaderboards(), f"no leaderboard.csv under {RESULTS}"


@pytest.mark.parametrize("path", committed_leaderboards(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_no_committed_attacked_auroc_exceeds_its_clean_auroc(path):
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        for col, value in row.items():
            if ":" not in col or col.endswith((":std", ":lo", ":hi")) or not value:
                continue
            dataset, column = col.split(":", 1)
            if column == "clean" or column.startswith("pixel"):  # pixel AUROC: another metric
                continue
            clean = row[f"{dataset}:clean"]
            assert float(value) <= float(clean), (path, row.get("method"), col)
