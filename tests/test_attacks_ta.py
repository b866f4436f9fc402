"""``ta:<Name>``: torchattacks through the two-logit adapter (an optional extra)."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from test_attack_toys import interior_batch

import robustad as ra
from robustad.attacks.base import objective
from robustad.cli import main
from robustad.testing import LinearDetector, linear_worst_case


def test_missing_torchattacks_is_a_clear_user_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import fails as if not installed
    with pytest.raises(ra.UserError, match=r"pip install 'robustad\[torchattacks\]'"):
        ra.create_attack("ta:PGD")
    code = main(["run", "--attacks", "ta:PGD", "--classes", "0", "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "torchattacks" in capsys.readouterr().err


class FakeFGSM:
    """The torchattacks calling convention: ``Attack(model, eps=...)(images, labels)``."""

    def __init__(self, model, eps=8 / 255):
        self.model, self.eps = model, eps

    def __call__(self, images, labels):
        images = images.clone().requires_grad_(True)
        loss = F.cross_entropy(self.model(images), labels)
        (grad,) = torch.autograd.grad(loss, images)
        return (images + self.eps * grad.sign()).clamp(0, 1).detach()


@pytest.fixture
def fake_torchattacks(monkeypatch):
    module = types.ModuleType("torchattacks")
    module.FGSM = FakeFGSM
    monkeypatch.setitem(sys.modules, "torchattacks", module)
    return module


def test_ta_attack_runs_on_the_two_logit_view(fake_torchattacks):
    x = torch.rand(20, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(20) % 2
    threat = ra.ThreatModel("Linf", 8 / 255)
    det = LinearDetector()
    attack = ra.create_attack("ta:FGSM")
    assert attack.registry_name == "ta:FGSM"
    x_adv = attack.perturb(det, x, y, threat)
    # CE on the view rises with d·s, so one signed step is the linear optimum.
    want = objective(det.score(linear_worst_case(x, y, threat)), y)
    assert torch.allclose(objective(det.score(x_adv), y), want, atol=1e-6)


def test_ta_unknown_name_lists_choices(fake_torchattacks):
    with pytest.raises(ra.UserError, match="ta:FGSM"):
        ra.create_attack("ta:NoSuchAttack")


def test_ta_result_is_clipped_to_threat_and_never_below_clean(fake_torchattacks):
    x, y = interior_batch(n=10)
    det = LinearDetector(scale=-1.0)  # a detector whose score falls with brightness
    x_adv = ra.create_attack("ta:FGSM", eps=0.3).perturb(det, x, y, ra.ThreatModel("Linf", 0.05))
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6  # a too-large torchattacks eps is projected back
    assert (objective(det.score(x_adv), y) >= objective(det.score(x), y) - 1e-6).all()
