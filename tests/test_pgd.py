"""PGD, FGSM and noise on detectors whose worst case is known in closed form."""

import math

import pytest
import torch

import robustad as ra
from robustad.attacks.base import objective
from robustad.testing import LinearDetector, linear_worst_case
from robustad.threat import ThreatModel


def _batch(n=40, c=1, h=6, w=6, lo=0.0, hi=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, c, h, w, generator=g)
    y = torch.arange(n) % 2
    return x, y


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_linf_attack_reaches_closed_form_optimum(attack):
    x, y = _batch()  # pixels everywhere in [0,1], so clipping is active for many
    threat = ra.ThreatModel("Linf", 8 / 255)
    det = LinearDetector()
    x_adv = ra.create_attack(attack).perturb(det, x, y, threat)
    expected = linear_worst_case(x, y, threat)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    # and the AUROC of the attacked scores equals that of the closed-form optimum
    got = ra.auroc(det.score(x_adv), y)
    want = ra.auroc(det.score(expected), y)
    assert got == pytest.approx(want, abs=1e-6)


def test_l2_pgd_reaches_closed_form_optimum():
    x, y = _batch(lo=0.3, hi=0.7)  # interior pixels: the box never binds at ε = 0.5
    threat = ra.ThreatModel("L2", 0.5)
    det = LinearDetector()
    x_adv = ra.create_attack("pgd", steps=20, random_start=False).perturb(det, x, y, threat)
    expected = linear_worst_case(x, y, threat)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    assert (x_adv - x).flatten(1).norm(dim=1).max().item() == pytest.approx(0.5, abs=1e-6)
    assert ra.auroc(det.score(x_adv), y) == pytest.approx(ra.auroc(det.score(expected), y), abs=1e-6)


def test_l2_pgd_with_random_start_is_near_optimal():
    x, y = _batch(lo=0.3, hi=0.7)
    threat = ra.ThreatModel("L2", 0.5)
    det = LinearDetector()
    x_adv = ra.create_attack("pgd", steps=50).perturb(det, x, y, threat)
    best = objective(det.score(linear_worst_case(x, y, threat)), y)
    got = objective(det.score(x_adv), y)
    # The optimum gains ε/√n = 0.0833 over clean. A random start's component
    # orthogonal to the gradient only shrinks geometrically under L2 projection,
    # so 50 steps reach within 5% of that gain (measured: within ~2.5%).
    gain = 0.5 / math.sqrt(36)
    assert ((best - got) <= 0.05 * gain).all()


def test_attacks_return_clean_input_when_nothing_beats_it():
    # A score that only decreases away from x for every sample: the best point is x itself.
    class Peaked(LinearDetector):
        def score(self, x):
            return -((x - 0.5) ** 2).flatten(1).sum(1)

    x = torch.full((4, 1, 3, 3), 0.5)
    y = torch.zeros(4, dtype=torch.long)  # normals: the attacker wants a higher score
    for name in ["pgd", "fgsm", "noise"]:
        x_adv = ra.create_attack(name).perturb(Peaked(), x, y, ra.ThreatModel("Linf", 0.1))
        assert torch.equal(x_adv, x), name


def test_projection_respects_ball_and_box():
    x = torch.rand(8, 3, 5, 5)
    far = x + torch.randn_like(x)
    for threat in (ra.ThreatModel("Linf", 0.05), ra.ThreatModel("L2", 0.3)):
        p = threat.project(far, x)
        assert p.min() >= 0 and p.max() <= 1
        d = (p - x).flatten(1)
        size = d.abs().amax(1) if threat.norm == "Linf" else d.norm(dim=1)
        assert (size <= threat.eps + 1e-6).all()


def test_pgd_keeps_best_iterate_not_last():
    # Oscillating step: α much larger than ε makes iterates bounce; the best is kept.
    x, y = _batch(lo=0.3, hi=0.7)
    det = LinearDetector()
    threat = ra.ThreatModel("Linf", 0.05)
    x_adv = ra.create_attack("pgd", steps=3, alpha=0.2).perturb(det, x, y, threat)
    assert torch.allclose(x_adv, linear_worst_case(x, y, threat), atol=1e-6)


@pytest.mark.parametrize("attack", ["none", "noise", "fgsm", "pgd"])
def test_adversarial_auroc_never_exceeds_clean(attack, digits0, trained_svdd):
    threat = ra.ThreatModel("Linf", 8 / 255)
    x, y = digits0.test_x, digits0.test_y
    for det in (trained_svdd, LinearDetector(), LinearDetector(scale=-1.0)):
        clean = ra.auroc(det.score_batched(x), y)
        x_adv = ra.create_attack(attack).perturb(det, x, y, threat)
        adv = ra.auroc(det.score_batched(x_adv), y)
        assert adv <= clean + 1e-12
        # and per sample the objective never falls below the clean one
        assert (objective(det.score_batched(x_adv), y) >= objective(det.score_batched(x), y) - 1e-6).all()


def test_noise_barely_moves_trained_deepsvdd(digits0, trained_svdd):
    """Uniform noise in the 8/255 ball: stated tolerance 2 AUROC points (measured ~0.1)."""
    x, y = digits0.test_x, digits0.test_y
    threat = ra.ThreatModel("Linf", 8 / 255)
    clean = ra.auroc(trained_svdd.score_batched(x), y)
    noisy = ra.auroc(
        trained_svdd.score_batched(ra.create_attack("noise").perturb(trained_svdd, x, y, threat)), y
    )
    pgd = ra.auroc(trained_svdd.score_batched(ra.create_attack("pgd").perturb(trained_svdd, x, y, threat)), y)
    assert clean - noisy < 0.02
    assert pgd < noisy  # the real attack does more than noise


def test_pgd_is_deterministic_under_seed(digits0, trained_svdd):
    x, y = digits0.test_x[:50], digits0.test_y[:50]
    threat = ra.ThreatModel("Linf", 8 / 255)
    a = ra.create_attack("pgd", seed=3).perturb(trained_svdd, x, y, threat)
    b = ra.create_attack("pgd", seed=3).perturb(trained_svdd, x, y, threat)
    assert torch.equal(a, b)


def test_pgd_returns_its_best_iterate_when_the_last_is_worse():
    # Anomalies are pulled toward c (s = ‖x − c‖², objective −‖x − c‖²) with a fixed
    # L∞ step α and no random start. Every pixel starts 3α/4 from c, so the first step
    # overshoots to α/4 on the far side and the second comes back: the iterates
    # alternate between x (distance 3α/4 per pixel) and x + α·sign(c − x) (α/4). After
    # an even number of steps the last iterate is x again; the best one, which PGD must
    # return, is the other, with objective −n(α/4)² instead of −n(3α/4)².
    from test_attack_toys import Quadratic

    alpha, n_pix = 0.04, 16
    g = torch.Generator().manual_seed(0)
    center = 0.4 + 0.2 * torch.rand(1, 4, 4, generator=g)
    signs = torch.where(torch.rand(6, 1, 4, 4, generator=g) < 0.5, -1.0, 1.0)
    x = center - 0.75 * alpha * signs
    y = torch.ones(6, dtype=torch.long)
    det = Quadratic(center)
    threat = ra.ThreatModel("Linf", 0.1)  # > α: the ball never binds
    x_adv = ra.create_attack("pgd", steps=4, alpha=alpha, random_start=False).perturb(det, x, y, threat)
    assert torch.allclose(x_adv, x + alpha * signs, atol=1e-6)
    got = objective(det.score(x_adv), y)
    assert torch.allclose(got, torch.full((6,), -n_pix * (alpha / 4) ** 2), atol=1e-7)
    last = objective(det.score(x), y)  # the last iterate is the start
    assert (got > last + n_pix * alpha**2 / 4).all()


def test_budget_check_refuses_points_outside_the_ball_or_the_box():
    x = torch.full((2, 1, 2, 2), 0.5)
    linf = ThreatModel("Linf", 0.1)
    linf.check_budget(x + 0.1, x)  # on the sphere: inside the threat model
    with pytest.raises(RuntimeError, match="left the threat model"):
        linf.check_budget(x + 0.11, x)
    with pytest.raises(RuntimeError, match="left the threat model"):
        linf.check_budget(torch.zeros_like(x) - 0.01, torch.zeros_like(x))  # in the ball, out of the box
    l2 = ThreatModel("L2", 0.5)
    step = torch.zeros_like(x)
    step[:, 0, 0, 0] = 0.5  # ‖δ‖₂ = 0.5 exactly
    l2.check_budget(x + step, x)
    with pytest.raises(RuntimeError, match="left the threat model"):
        l2.check_budget(x + 1.2 * step, x)
    assert torch.allclose(l2.size(step), torch.tensor([0.5, 0.5]))
