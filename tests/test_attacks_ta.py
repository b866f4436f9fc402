"""``ta:<Name>``: torchattacks through the two-logit adapter (an optional extra)."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from test_attack_toys import interior_batch

import robustad as ra
from robustad.attacks.adapter import TwoLogitView, ViewBatchError, margin_objective
from robustad.attacks.base import objective
from robustad.cli import main
from robustad.testing import LinearDetector, linear_worst_case


def test_missing_torchattacks_is_a_clear_user_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import fails as if not installed
    with pytest.raises(ra.UserError, match=r"pip install --no-deps torchattacks"):
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


# --- with the real torchattacks (scored in eval mode, buffers left alone) -------------------


@pytest.fixture
def real_torchattacks():
    return pytest.importorskip("torchattacks")


def _buffers(det):
    return {name: b.detach().clone() for name, b in det.named_buffers()}


def test_ta_scores_in_eval_mode_and_leaves_buffers_alone(real_torchattacks, trained_svdd, digits0):
    # Deep SVDD has BatchNorm: scored in training mode it uses batch statistics and
    # updates its running buffers. torchattacks records the model's mode and restores
    # it, so the view must never put the detector into training mode.
    det = trained_svdd.eval()
    x, y = digits0.test_x, digits0.test_y
    before = _buffers(det)
    modes = []
    score = det.score

    def spy(inputs):
        modes.append(det.training)
        return score(inputs)

    threat = ra.ThreatModel("Linf", 8 / 255)
    attack = ra.create_attack("ta:FGSM")
    attack.score_fn = lambda detector: spy
    x_adv = attack.perturb(det, x, y, threat)
    assert modes and not any(modes), "the detector was scored in training mode"
    assert not det.training
    after = _buffers(det)
    # the view itself: created in eval mode, and train() never reaches the detector
    view = TwoLogitView.calibrated(det, det.score, det.score(x[:4]).detach(), y[:4])
    assert not view.training and not det.training
    view.train()
    assert not det.training
    assert all(torch.equal(before[k], after[k]) for k in before), "a buffer changed during ta:FGSM"
    with torch.no_grad():
        clean, adv = objective(det.score(x), y), objective(det.score(x_adv), y)
    assert (adv >= clean).all()


def test_ta_fgsm_equals_native_fgsm(real_torchattacks, trained_svdd, digits0):
    # Both are one signed step of ε on an increasing function of d·s (cross entropy of
    # the per-sample calibrated view vs d·s itself), no random start: same points.
    det = trained_svdd.eval()
    x, y = digits0.test_x, digits0.test_y
    threat = ra.ThreatModel("Linf", 8 / 255)
    x_ta = ra.create_attack("ta:FGSM").perturb(det, x, y, threat)
    x_native = ra.create_attack("fgsm").perturb(det, x, y, threat)
    with torch.no_grad():
        ta_scores, native_scores = det.score(x_ta), det.score(x_native)
    ta_auroc, native_auroc = ra.auroc(ta_scores, y), ra.auroc(native_scores, y)
    assert abs(ta_auroc - native_auroc) <= 1e-6, (ta_auroc, native_auroc)
    assert ta_auroc < ra.auroc(det.score(x).detach(), y)


def test_ta_norms_are_declared_and_checked(real_torchattacks):
    pgd = ra.create_attack("ta:PGD")
    assert pgd.supports_norm("Linf") and not pgd.supports_norm("L2")
    x, y = interior_batch(n=6)
    with pytest.raises(ra.UserError, match="ta:PGDL2"):
        pgd.perturb(LinearDetector(), x, y, ra.ThreatModel("L2", 0.5))
    pgdl2 = ra.create_attack("ta:PGDL2")
    assert pgdl2.supports_norm("L2") and not pgdl2.supports_norm("Linf")
    for name in ("ta:CW", "ta:DeepFool"):
        assert ra.create_attack(name).norms == ("L2",)
    apgd = ra.create_attack("ta:APGD")
    assert apgd.supports_norm("Linf") and apgd.supports_norm("L2")
    # a norm fixed by the user's parameters is the only one the attack supports
    assert not ra.create_attack("ta:APGD", norm="L2").supports_norm("Linf")


def test_ta_white_box_metadata_has_one_source(real_torchattacks):
    for name, white in (("ta:Square", False), ("ta:Pixle", False), ("ta:FGSM", True), ("ta:PGD", True)):
        assert ra.registry.ATTACKS.get(name).metadata["white_box"] is white, name
        assert ra.create_attack(name).white_box is white, name


def test_calibrated_view_is_per_sample():
    # τ and T come from each sample's own clean score: a sample's logits do not
    # depend on the batch it was calibrated and attacked in.
    g = torch.Generator().manual_seed(0)
    det = LinearDetector()
    x = torch.rand(12, 1, 6, 6, generator=g)
    y = torch.arange(12) % 2
    others = torch.rand(5, 1, 6, 6, generator=g) * 0.2  # a very different batch
    x2 = torch.cat([x[:1], others])
    y2 = torch.cat([y[:1], torch.tensor([1, 1, 0, 1, 1])])
    view = TwoLogitView.calibrated(det, det.score, det.score(x), y)
    view2 = TwoLogitView.calibrated(det, det.score, det.score(x2), y2)
    x_shift = x.clamp(0.1, 0.9) + 0.05  # the logits at a perturbed point, not only at the clean one
    x2_shift = torch.cat([x_shift[:1], others + 0.05])
    assert torch.allclose(view(x)[0], view2(x2)[0], atol=0, rtol=0)
    assert torch.allclose(view(x_shift)[0], view2(x2_shift)[0], atol=1e-7)
    # the margin stays increasing in d·s: the attacker's objective rises with it
    m0 = margin_objective(view(x), y)
    m1 = margin_objective(view(x_shift), y)
    ds0, ds1 = objective(det.score(x), y), objective(det.score(x_shift), y)
    assert ((m1 > m0) == (ds1 > ds0)).all()


def test_per_sample_view_refuses_unmatched_rows_and_ta_falls_back_to_one_sample(real_torchattacks):
    x, y = interior_batch(n=6)
    det = LinearDetector()
    view = TwoLogitView.calibrated(det, det.score, det.score(x), y)
    with pytest.raises(ViewBatchError):
        view(x[:2])  # rows cannot be matched to their samples
    assert torch.equal(view.rows(slice(2, 3))(x[2:3]), view(x)[2:3])
    # DeepFool queries one image at a time: the adapter runs it sample by sample.
    x_adv = ra.create_attack("ta:DeepFool").perturb(det, x, y, ra.ThreatModel("L2", 0.5))
    assert (objective(det.score(x_adv), y) > objective(det.score(x), y)).all()


def test_ta_attacks_undefined_for_two_classes_are_user_errors(real_torchattacks):
    for name in ("ta:APGDT", "ta:AutoAttack"):
        with pytest.raises(ra.UserError, match="three classes"):
            ra.create_attack(name)
    with pytest.raises(ra.UserError, match="sparse"):
        ra.create_attack("ta:JSMA").check_norm("Linf")
