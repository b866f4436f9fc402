"""Pixel-level robustness: anomaly maps stored with every fit and eval job of a localising
detector on data with masks, pixel AUROC recomputed from the stored maps, and the map
attack (pgd-map) against a detector whose optimum is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustad.datasets.fixtures as fx
from robustad.attacks.map_attack import MapPGD
from robustad.benchmark.metrics import pixel_auroc
from robustad.benchmark.store import Store
from robustad.cli import main
from robustad.methods.base import Detector
from robustad.threat import ThreatModel


class BrightnessMap(Detector):
    """anomaly map = pixel brightness, score = mean brightness: linear in the input."""

    def fit(self, data, ctx=None):
        self.build(tuple(data.train_x.shape[1:]))
        return self

    def anomaly_map(self, x):
        return x.mean(1)

    def score(self, x):
        return x.mean((1, 2, 3))


def test_map_attack_reaches_the_closed_form_optimum():
    """For a linear map the best L∞ perturbation moves every pixel by ε towards its target
    (up on normal pixels, down on defect pixels), clipped to the box."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 6, 6, generator=g) * 0.6 + 0.2
    y = torch.tensor([0, 1, 1, 0])
    masks = torch.zeros(4, 6, 6)
    masks[1:3, 2:4, 2:4] = 1
    x[1:3, :, 2:4, 2:4] = 0.9  # defects are bright: pixel AUROC 1 before the attack
    eps = 0.3
    det = BrightnessMap()
    attack = MapPGD(steps=10, seed=0)
    x_adv = attack.perturb(det, x, y, ThreatModel("Linf", eps), masks=masks)
    w = 1 - 2 * masks[:, None]
    expected = (x + eps * w).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-6)
    before = pixel_auroc(det.anomaly_map(x), masks)
    after = pixel_auroc(det.anomaly_map(x_adv), masks)
    assert before == 1.0 and after < 0.5
    torch.testing.assert_close(attack.adv_scores, x_adv.mean((1, 2, 3)))  # the image score at x_adv


def test_map_attack_needs_a_map():
    class NoMap(BrightnessMap):
        def anomaly_map(self, x):
            return None

    with pytest.raises(Exception, match="anomaly map"):
        MapPGD().perturb(NoMap(), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), ThreatModel("Linf", 0.1))


def test_map_attack_on_a_method_without_maps_is_refused_before_training(tmp_path, capsys):
    code = main(["run", "--methods", "deepsvdd", "--attacks", "pgd-map", "--classes", "0",
                 "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert code == 2
    assert "anomaly map" in capsys.readouterr().err


def test_pixel_auroc_is_stored_per_eval_job_and_matches_the_stored_maps(tmp_path):
    fx.write_mvtec(tmp_path / "mv", "bottle", n_train=6, n_good=3, defects={"crack": 3}, grey=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "method_params:\n"
        "  patchcore: {backbone: resnet18, weights: null, input_size: 32, resize_to: null,\n"
        "              embed_dim: 32, map_sigma: 1}\n"
        "attack_params:\n  pgd: {steps: 2}\n  pgd-map: {steps: 2}\n"
        "dataset_params:\n  mvtec: {image_size: 32}\n"
    )
    out = tmp_path / "out"
    assert main(["run", "--methods", "patchcore", "--datasets", "mvtec", "--classes", "bottle",
                 "--data-root", str(tmp_path / "mv"), "--attacks", "pgd,pgd-map", "--eps", "8/255",
                 "--config", str(cfg), "--out", str(out), "--quiet"]) == 0  # fmt: skip
    with Store(out / "bench.sqlite") as store:
        fit = store.jobs(kind="fit", status="done")[0]
        fit_maps = store.maps(fit["job_id"])
        assert fit_maps["clean"].shape == (6, 32, 32) and fit_maps["adv"] is None
        assert fit["metrics"]["clean_pixel_auroc"] == pytest.approx(
            pixel_auroc(fit_maps["clean"], fit_maps["masks"])
        )
        evals = {r["attack"]: r for r in store.jobs(kind="eval", status="done")}
        assert set(evals) == {"pgd", "pgd-map"}
        for r in evals.values():
            m = store.maps(r["job_id"])
            assert m["adv"].shape == (6, 32, 32)
            assert r["metrics"]["adv_pixel_auroc"] == pytest.approx(pixel_auroc(m["adv"], m["masks"]))
            assert np.array_equal(m["clean"], fit_maps["clean"])
        # the attack on the map lowers the pixel AUROC it targets
        assert evals["pgd-map"]["metrics"]["adv_pixel_auroc"] < fit["metrics"]["clean_pixel_auroc"]

    # the leaderboard shows the pixel AUROCs beside the image ones
    from robustad.benchmark.leaderboard import build_table

    with Store(out / "bench.sqlite") as store:
        table = build_table(store)
    cols = [c for d, c in table.columns]
    assert cols.index("pixel clean") > cols.index("pgd-map")
    assert "pixel pgd" in cols and "pixel pgd-map" in cols
    row = table.methods[0]
    pixel_clean = table.cells[(row, "mvtec", "pixel clean")][0]
    assert pixel_clean == pytest.approx(100 * fit["metrics"]["clean_pixel_auroc"])
    pixel_map = table.cells[(row, "mvtec", "pixel pgd-map")][0]
    assert pixel_map == pytest.approx(100 * evals["pgd-map"]["metrics"]["adv_pixel_auroc"])
