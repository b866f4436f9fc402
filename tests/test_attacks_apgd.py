"""APGD, adaptive attacks and EOT on detectors with closed-form worst cases."""

import pytest
import torch
from test_attack_toys import Quadratic, Rounded, interior_batch, quadratic_problem, quadratic_worst_objective
from torch import nn

import robustad as ra
from robustad.attacks.apgd import checkpoints
from robustad.attacks.base import objective
from robustad.methods.base import Detector
from robustad.testing import LinearDetector, linear_worst_case

# Stated tolerance for reaching a closed-form optimum: the remaining gap may be at
# most 1e-4 of the optimal gain over the clean objective (float32; measured ≤ 4e-7).
REL_TOL = 1e-4


def _rel_gap(det, x, y, x_adv, want):
    clean = objective(det.score(x), y)
    got = objective(det.score(x_adv), y)
    return ((want - got) / (want - clean)).max().item()


def test_checkpoints_are_the_published_ones():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, Sec. 3.2)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000)[:3] == [220, 410, 570]


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_apgd_reaches_linear_optimum(norm, eps):
    threat = ra.ThreatModel(norm, eps)
    if norm == "Linf":  # pixels over all of [0,1]: the box binds for many of them
        x = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
        y = torch.arange(40) % 2
    else:
        x, y = interior_batch()
    det = LinearDetector()
    x_adv = ra.create_attack("apgd", steps=20).perturb(det, x, y, threat)
    want = objective(det.score(linear_worst_case(x, y, threat)), y)
    assert _rel_gap(det, x, y, x_adv, want) <= REL_TOL


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_apgd_reaches_quadratic_optimum(norm, eps):
    x, y, det = quadratic_problem()
    threat = ra.ThreatModel(norm, eps)
    x_adv = ra.create_attack("apgd", steps=20).perturb(det, x, y, threat)
    want = quadratic_worst_objective(x, y, det.center, threat)
    assert _rel_gap(det, x, y, x_adv, want) <= REL_TOL
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert (size <= eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1


def test_apgd_beats_pgd_at_equal_budget_on_l2_quadratic():
    # PGD's fixed α = 2.5ε/steps cannot finish from a random start in 20 steps
    # (measured gap 4% of the gain); APGD's η = 2ε with halving does (gap ~3e-7).
    x, y, det = quadratic_problem()
    threat = ra.ThreatModel("L2", 0.5)
    want = quadratic_worst_objective(x, y, det.center, threat)
    gap_apgd = _rel_gap(det, x, y, ra.create_attack("apgd", steps=20).perturb(det, x, y, threat), want)
    gap_pgd = _rel_gap(det, x, y, ra.create_attack("pgd", steps=20).perturb(det, x, y, threat), want)
    assert gap_apgd <= REL_TOL < 0.01 < gap_pgd


def test_apgd_restarts_keep_best_and_clean():
    class Peaked(LinearDetector):
        def score(self, x):
            return -((x - 0.5) ** 2).flatten(1).sum(1)

    x = torch.full((4, 1, 3, 3), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    x_adv = ra.create_attack("apgd", steps=5, restarts=3).perturb(Peaked(), x, y, ra.ThreatModel("Linf", 0.1))
    assert torch.equal(x_adv, x)


class SmoothedRounded(Rounded):
    """True score piecewise constant (zero gradient); surrogate = the unrounded mean."""

    def __init__(self, sign: float = 1.0):
        super().__init__(levels=100)
        self.sign = sign

    def surrogate_score(self, x):
        return self.sign * x.flatten(1).mean(1)


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_adaptive_follows_surrogate(attack):
    x, y = interior_batch(n=20)
    threat = ra.ThreatModel("Linf", 8 / 255)
    det = SmoothedRounded()
    # Closed form: the rounded mean of the L∞ optimum of the linear surrogate.
    want = objective(det.score(linear_worst_case(x, y, threat)), y)
    got = objective(
        det.score(ra.create_attack(attack, steps=10, adaptive=True).perturb(det, x, y, threat)), y
    )
    assert torch.allclose(got, want, atol=1e-6)


def test_adaptive_judges_best_point_by_true_score():
    x, y = interior_batch(n=20)
    threat = ra.ThreatModel("Linf", 8 / 255)
    # Zero true gradient: plain PGD without a random start cannot move at all.
    plain = ra.create_attack("pgd", steps=10, random_start=False)
    assert torch.equal(plain.perturb(SmoothedRounded(), x, y, threat), x)
    # A surrogate pointing the wrong way never raises the true score, so the best
    # point, chosen by the true score, stays the clean input for every sample.
    adaptive = ra.create_attack("pgd", steps=10, adaptive=True, random_start=False)
    assert torch.equal(adaptive.perturb(SmoothedRounded(sign=-1.0), x, y, threat), x)


def test_adaptive_without_surrogate_is_a_user_error():
    x, y = interior_batch(n=4)
    with pytest.raises(ra.UserError, match="surrogate_score"):
        ra.create_attack("apgd", steps=2, adaptive=True).perturb(LinearDetector(), x, y, ra.ThreatModel())


class NoisyGradient(Detector):
    """Deterministic value mean(x), random gradient 1/n + σ·z per pixel (z ~ N(0,1))."""

    stochastic = True

    def __init__(self, sigma_times_n: float = 3.0):
        super().__init__()
        self.k = sigma_times_n
        self._anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def score(self, x):
        n = x[0].numel()
        noise = torch.randn_like(x) * self.k / n
        return x.flatten(1).mean(1) + (noise * (x - x.detach())).flatten(1).sum(1) + self._anchor


def test_eot_is_used_for_stochastic_detectors_and_helps():
    x, y = interior_batch(n=20)
    threat = ra.ThreatModel("Linf", 8 / 255)
    det = NoisyGradient()
    want = objective(linear_worst_case(x, y, threat).flatten(1).mean(1), y)
    clean = objective(x.flatten(1).mean(1), y)

    def gain(attack):
        torch.manual_seed(0)
        got = objective(attack.perturb(det, x, y, threat).flatten(1).mean(1), y)
        return ((got - clean) / (want - clean)).mean().item()

    eot = ra.create_attack("pgd", steps=10, eot_draws=30)
    g_eot = gain(eot)
    assert eot.stats["eot_draws"] == 30
    single = ra.create_attack("pgd", steps=10, eot_draws=1)
    g_single = gain(single)
    # Per pixel a single draw points the wrong way with P(z < -1/3) = 37%; the mean of
    # 30 draws with 4%. Stated: EOT reaches ≥ 90% of the optimal gain, one draw < 75%.
    assert g_eot >= 0.9 and g_single < 0.75
    # eot-pgd averages even on a deterministic detector
    always = ra.create_attack("eot-pgd", steps=2, eot_draws=3)
    always.perturb(LinearDetector(), x, y, threat)
    assert always.stats["eot_draws"] == 3


def test_quadratic_detector_center_is_a_buffer():
    det = Quadratic(torch.zeros(1, 2, 2))
    assert "center" in det.state_dict()


def _fixed_start(monkeypatch):
    from robustad.threat import ThreatModel

    monkeypatch.setattr(ThreatModel, "random_start", lambda self, x, generator: x.clone())


def test_apgd_trajectory_by_hand_momentum_and_halving(monkeypatch):
    # One pixel x = 0.5, an anomaly pulled toward c = 0.56 (objective −(x − c)²),
    # L∞ ε = 0.1 (so η starts at 0.2), three steps, checkpoints after steps 1, 2, 3,
    # and the start fixed at x. By hand (Croce & Hein 2020, Alg. 1):
    #   step 1 (no momentum): z = P(0.5 + 0.2) = 0.6 = x1, f = −0.0016 > −0.0036.
    #     checkpoint 1: one increase of one step, best improved: η stays 0.2.
    #   step 2: z = P(0.6 − 0.2) = 0.4; x2 = 0.6 + 0.75(0.4 − 0.6) + 0.25(0.6 − 0.5)
    #     = 0.475, f = −0.007225: no increase.
    #     checkpoint 2: 0 increases < 0.75 → η = 0.1, restart from the best point 0.6.
    #   step 3: z = P(0.6 − 0.1) = 0.5; x3 = 0.6 + 0.75(0.5 − 0.6) = 0.525, f = −0.001225,
    #     the best point. Without momentum step 3 lands on 0.5 (f = −0.0036); without
    #     halving, on 0.6 + 0.75(0.4 − 0.6) = 0.45: either way the best stays 0.6.
    from test_attack_toys import Quadratic

    _fixed_start(monkeypatch)
    det = Quadratic(torch.full((1, 1, 1), 0.56))
    x, y = torch.full((1, 1, 1, 1), 0.5), torch.ones(1, dtype=torch.long)
    assert checkpoints(3) == [1, 2, 3]
    x_adv = ra.create_attack("apgd", steps=3).perturb(det, x, y, ra.ThreatModel("Linf", 0.1))
    assert x_adv.item() == pytest.approx(0.525, abs=1e-6)
    assert objective(det.score(x_adv), y).item() == pytest.approx(-(0.035**2), abs=1e-7)


def test_apgd_halving_reaches_an_interior_optimum():
    # Anomalies whose nearest point to c lies inside the ball: the optimum is x = c,
    # objective 0, which sign steps of a fixed size (2ε, projected) can only bounce
    # around. With η halved at the checkpoints APGD closes in on c. Stated: every
    # pixel within ε/100 of c after 100 steps (η can fall to 2ε/2^8 by then).
    from test_attack_toys import Quadratic

    eps = 0.05
    g = torch.Generator().manual_seed(0)
    center = 0.3 + 0.4 * torch.rand(1, 4, 4, generator=g)
    x = center + eps * (2 * torch.rand(8, 1, 4, 4, generator=g) - 1) * 0.9
    y = torch.ones(8, dtype=torch.long)
    det = Quadratic(center)
    x_adv = ra.create_attack("apgd", steps=100).perturb(det, x, y, ra.ThreatModel("Linf", eps))
    assert (x_adv - center).abs().max() <= eps / 100
