"""Regression tests for gradient masking at the box bounds, batch-size independence,
judged adversarial scores and the diversity of ``aa``'s members.

Each test here failed on the code before the fix it guards (see the mutation
harness, benchmarks/mutants.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import robustad as ra
from robustad.attacks.base import gradient_diagnostics, objective
from robustad.attacks.reliability import BOX_MASKING, job_flags
from robustad.datasets import load_dataset
from robustad.methods.base import Detector, RunContext
from robustad.methods.box import clamp_box
from robustad.methods.views import apply_light_aug, colour_jitter
from robustad.registry import METHODS
from robustad.testing import LinearDetector

TINY_CSI = dict(width=4, blocks=(1, 1, 1, 1), proj_dim=8, batch_size=16, max_train=32, test_views=1)


def _grad(fn, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


# -- the clamp --------------------------------------------------------------------------------
def test_clamp_box_passes_the_inward_one_sided_derivative_at_its_bounds():
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.5], dtype=torch.float64)
    g = _grad(lambda t: 2.0 * clamp_box(t), x)
    # one-sided finite differences from inside the box at 0 and 1, central inside, flat outside
    h = 1e-6
    fd = torch.tensor([
        0.0,
        (2 * clamp_box(x[1] + h) - 2 * clamp_box(x[1])) / h,
        (2 * clamp_box(x[2] + h) - 2 * clamp_box(x[2] - h)) / (2 * h),
        (2 * clamp_box(x[3]) - 2 * clamp_box(x[3] - h)) / h,
        0.0,
    ], dtype=torch.float64)  # fmt: skip
    assert torch.allclose(g, fd, atol=1e-6)
    assert torch.equal(clamp_box(x), x.clamp(0, 1))


def test_identity_view_is_exactly_the_image_with_unit_gradient_at_zero_and_one():
    x = torch.rand(2, 1, 8, 8)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    identity = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]]).expand(2, -1)
    assert torch.equal(apply_light_aug(x, identity), x)
    assert torch.equal(_grad(lambda t: apply_light_aug(t, identity), x), torch.ones_like(x))


def test_colour_jitter_gradient_at_black_pixels_is_the_brightness_factor():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 0] = 0.5
    one = torch.ones(1, dtype=torch.float64)
    g = _grad(lambda t: colour_jitter(t, 1.2 * one, one, one, 0 * one), x)
    # brightness 1.2 then contrast 1 about the mean: d/dx = 1.2 at every pixel, 0 included
    assert torch.allclose(g, torch.full_like(x, 1.2), atol=1e-9)


@pytest.fixture(scope="module")
def small_csi():
    data = load_dataset("digits", 0)
    torch.manual_seed(0)
    return METHODS.create("csi", epochs=1, **TINY_CSI).fit(data, RunContext(seed=0)), data


def test_csi_score_gradient_is_not_masked_at_black_pixels(small_csi):
    det, data = small_csi
    x, y = data.test_x[:40], data.test_y[:40]
    assert (x == 0).float().mean() > 0.3  # digits: many pixels exactly 0
    stats = gradient_diagnostics(det.score, x, y)
    assert stats["box_masked_frac"] == 0.0
    # inside the centre crop the gradient at a black pixel is non-zero
    g = _grad(det.score, x)
    assert (g[x == 0] != 0).float().mean() > 0.5


class ClampedLinear(Detector):
    """s(x) = mean(clamp(x, 0, 1)) with torch's clamp: the masking the flag must see."""

    def fit(self, data, ctx=None):
        return self

    def score(self, x):
        return x.clamp(0, 1).flatten(1).mean(1)


def test_box_masking_flag_catches_a_torch_clamp_on_the_score_path():
    x = torch.rand(6, 1, 8, 8)
    x[:, :, :3] = 0.0  # 3/8 of the pixels at the bound
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    stats = gradient_diagnostics(ClampedLinear().score, x, y)
    assert stats["box_masked_frac"] == pytest.approx(3 / 8)
    assert BOX_MASKING in job_flags(stats)
    assert BOX_MASKING not in job_flags(gradient_diagnostics(LinearDetector().score, x, y))


# -- batch independence ------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [("pgd", {"steps": 3}), ("apgd", {"steps": 4}),
                                         ("noise", {"draws": 2}), ("fgsm", {})])  # fmt: skip
def test_attack_result_of_a_sample_does_not_depend_on_its_batch(trained_svdd, digits0, name, params):
    x, y = digits0.test_x[:30], digits0.test_y[:30]
    threat = ra.ThreatModel("Linf", 8 / 255)
    whole = ra.create_attack(name, **params, seed=3)
    whole.perturb(trained_svdd, x, y, threat)
    parts = []
    for i in (0, 7, 19):  # uneven batches, other positions
        j = {0: 7, 7: 19, 19: 30}[i]
        atk = ra.create_attack(name, **params, seed=3)
        atk.perturb(trained_svdd, x[i:j], y[i:j], threat)
        parts.append(atk.adv_scores)
    assert torch.allclose(torch.cat(parts), whole.adv_scores, atol=1e-6)


def test_batch_size_is_part_of_the_identity_only_of_batch_dependent_attacks():
    from robustad.benchmark.runner import expand_grid
    from robustad.config import resolve

    def ids(batch_size):
        cfg = resolve("quick", overrides={"methods": ["deepsvdd"], "attacks": ["pgd", "aa"], "classes": [0],
                                          "batch_size": batch_size})  # fmt: skip
        grid = expand_grid(cfg)
        return {e.attack: e.job_id for e in grid.evals[grid.fits[0]]}

    a, b = ids(128), ids(64)
    assert a["pgd"] == b["pgd"] and a["aa"] != b["aa"]


# -- stochastic detectors: the stored score is the judged one --------------------------------------
class NoisyLinear(Detector):
    """s(x) = mean(x) + N(0, 0.3²) per call: an attack judged on one draw and stored
    with a fresh one would often store a point worse than clean."""

    stochastic = True

    def fit(self, data, ctx=None):
        return self

    def score(self, x):
        return x.flatten(1).mean(1) + 0.3 * torch.randn(len(x))


def test_stochastic_detector_attacked_auroc_never_exceeds_clean(digits0):
    from robustad.benchmark.metrics import at_least_clean
    from robustad.benchmark.runner import attack_test_set

    det = NoisyLinear()
    data = digits0
    torch.manual_seed(0)
    clean = det.score_batched(data.test_x, 256).numpy().astype(np.float64)
    labels = data.test_y.numpy()
    adv, _ = attack_test_set(det, "pgd", {"steps": 2, "eot_draws": 2}, ra.ThreatModel("Linf", 1e-4),
                             data, 0, 128, "cpu")  # fmt: skip
    adv = at_least_clean(clean, adv, labels)
    d = 1 - 2 * labels
    assert (d * adv >= d * clean).all()
    assert roc_auc_score(labels, adv) <= roc_auc_score(labels, clean)


def test_adv_scores_are_the_values_the_best_points_were_judged_by(trained_svdd, digits0):
    x, y = digits0.test_x[:50], digits0.test_y[:50]
    atk = ra.create_attack("pgd", steps=3)
    x_adv = atk.perturb(trained_svdd, x, y, ra.ThreatModel("Linf", 8 / 255))
    with torch.no_grad():
        rescored = trained_svdd.score(x_adv)
    assert torch.allclose(atk.adv_scores, rescored, atol=1e-5)
    assert (objective(atk.adv_scores, y) >= objective(trained_svdd.score(x), y) - 1e-6).all()


# -- aa's members --------------------------------------------------------------------------------
def test_aa_members_start_from_different_points_and_report_what_each_adds(small_csi):
    from robustad.benchmark.runner import sole_best_fractions

    det, data = small_csi
    x, y = data.test_x[:24], data.test_y[:24]
    threat = ra.ThreatModel("Linf", 8 / 255)
    aa = ra.create_attack("aa", apgd_steps=3, square_queries=20)
    aa.perturb(det, x, y, threat)
    # CSI has a surrogate score, so the adaptive member runs
    assert set(aa.member_scores) == {"apgd-ad", "apgd-ce", "apgd-surrogate", "square"}
    ad, ce = aa.member_scores["apgd-ad"], aa.member_scores["apgd-ce"]
    assert not torch.allclose(ad, ce)  # the CE member no longer retraces the margin member
    wins = sole_best_fractions({k: v.numpy() for k, v in aa.member_scores.items()}, y.numpy())
    assert set(wins) == set(aa.member_scores) and 0 < sum(wins.values()) <= 1
    # a detector without a surrogate runs the other three
    aa.perturb(LinearDetector(), x, y, threat)
    assert set(aa.member_scores) == {"apgd-ad", "apgd-ce", "square"}
