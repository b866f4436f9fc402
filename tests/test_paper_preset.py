"""The ``paper`` preset end to end on CPU, at a tiny size, so that it cannot rot; and the
training-speed switches (amp, channels_last, torch_compile) of CSI and COBRA.

The preset runs as configured (every method, ResNet-18, PGD and aa, bf16 and
channels-last switched on) except for the budgets: one epoch on two images, one test
view instead of ten (a forward and backward pass of ResNet-18 over the 4 groups × 10
views of one image takes about two seconds on one CPU core), two attack steps, two test
images of a Fashion-MNIST fixture in the real file format; about 20 s on one core.
Off CUDA the speed switches are ignored and say so; with them at their defaults or
asked for on the CPU, a fit is the float32 code path, bit for bit.
"""

from __future__ import annotations

import functools
import time

import pytest
import torch

import robustad.testing as T
from robustad.benchmark.runner import run_grid
from robustad.benchmark.store import Store
from robustad.config import load_preset, resolve
from robustad.datasets import load_dataset
from robustad.datasets.fixtures import write_fmnist
from robustad.methods.contrastive import ShiftedContrastiveDetector, ShiftedContrastiveNet
from robustad.registry import METHODS
from robustad.threat import ThreatModel

#: the budgets of the smoke run; everything else is the paper preset's
TINY_PAPER = {
    # the built-in methods by name: "all" would include plug-ins other tests register
    "methods": ["cobra", "csi", "deepsvdd"],
    "classes": [0],
    "device": "cpu",
    "method_params": {
        "deepsvdd": {"epochs": 1},
        "csi": {"epochs": 1, "max_train": 2, "warmup_epochs": 0, "test_views": 1},
        "cobra": {"epochs": 1, "max_train": 2, "warmup_epochs": 0, "test_views": 1, "train_attack_steps": 1},
    },
    "attack_params": {
        "pgd": {"steps": 2},
        "aa": {"apgd_steps": 2, "apgd_restarts": 1, "square_queries": 2},
    },
    "dataset_params": {"fmnist": {"test_subset": 2}},
}


def test_paper_preset_runs_end_to_end_on_a_tiny_subset(tmp_path):
    root = write_fmnist(tmp_path / "fmnist", per_class=(4, 1))
    cfg = resolve("paper", overrides={**TINY_PAPER, "data_root": str(root)})
    # what the overrides leave alone is the preset's
    assert cfg["preset"] == "paper" and load_preset("paper")["methods"] == "all"
    assert cfg["attacks"] == ["pgd", "aa"]
    preset = load_preset("paper")["method_params"]
    for m in ("csi", "cobra"):
        p = cfg["method_params"][m]
        assert (p["width"], p["blocks"], p["proj_dim"]) == (64, [2, 2, 2, 2], 128)
        assert (p["amp"], p["channels_last"]) == ("bf16", True)
        assert (preset[m]["epochs"], preset[m]["test_views"]) == (100, 10)

    started = time.perf_counter()
    counts = run_grid(cfg, tmp_path / "out", quiet=True)
    elapsed = time.perf_counter() - started
    assert counts == {"done": 3 * (1 + 2), "skipped": 0, "failed": 0}, counts
    with Store(tmp_path / "out" / "bench.sqlite") as store:
        fits = {r["method"]: r for r in store.jobs(kind="fit")}
        evals = store.jobs(kind="eval")
    assert sorted(fits) == ["cobra", "csi", "deepsvdd"]
    for m in ("csi", "cobra"):
        info = fits[m]["info"]
        assert info["encoder"] == "resnet18 (cifar stem)" and info["epochs"] == 1
        note = "amp bf16, channels_last ignored on cpu (CUDA only); float32 training"
        assert info["training_speedups"] == note
    assert len(evals) == 6 and all(0 <= r["metrics"]["adv_auroc"] <= 1 for r in evals)
    assert elapsed < 300, f"the tiny paper run took {elapsed:.0f} s (about 20 s expected)"


# -- the speed switches ---------------------------------------------------------------------
TINY = dict(width=4, blocks=(1, 1), proj_dim=8, batch_size=16, lr=0.05, warmup_epochs=0, max_train=32)
SWITCHES_ON = dict(amp="bf16", channels_last=True, torch_compile=True)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 0)


def _fingerprint(det, x, y):
    """Scores, a PGD attack's scores and the whole fitted state."""
    from robustad.registry import ATTACKS

    atk = ATTACKS.create("pgd", steps=2, seed=0)
    x_adv = atk.perturb(det, x, y, ThreatModel("Linf", 8 / 255))
    return det.score_batched(x), atk.adv_scores.detach(), x_adv, det.state_dict(), det.loss_history


@pytest.mark.parametrize(
    "method, params",
    [
        ("csi", dict(TINY, epochs=2, test_views=2)),
        ("cobra", dict(TINY, epochs=1, test_views=2, train_attack_steps=1)),
    ],
)
def test_speed_switches_change_nothing_on_cpu(digits, method, params):
    """Defaults, the defaults passed explicitly, and every switch asked for on the CPU
    give the same loss history, state, scores and attacked scores, bit for bit."""
    x, y = digits.test_x[:8], digits.test_y[:8]
    implicit = T.fit_detector(T.detector_factory(method, params), digits)
    explicit = T.fit_detector(
        T.detector_factory(method, dict(params, amp=None, channels_last=False, torch_compile=False)), digits
    )
    asked = T.fit_detector(T.detector_factory(method, dict(params, **SWITCHES_ON)), digits)
    ref = _fingerprint(implicit, x, y)
    for other in (explicit, asked):
        got = _fingerprint(other, x, y)
        for a, b in zip(ref[:3], got[:3]):
            assert torch.equal(a, b)
        assert ref[3].keys() == got[3].keys() and all(torch.equal(ref[3][k], got[3][k]) for k in ref[3])
        assert ref[4] == got[4]
    assert "training_speedups" not in implicit.info() and "training_speedups" not in explicit.info()
    note = asked.info()["training_speedups"]
    assert note == "amp bf16, channels_last, torch_compile ignored on cpu (CUDA only); float32 training"


def test_an_unknown_amp_is_refused():
    with pytest.raises(ValueError, match="amp"):
        METHODS.create("csi", amp="float8")


@pytest.mark.parametrize(
    "dtype, compiled", [(torch.bfloat16, False), (torch.float16, False), (torch.bfloat16, True)]
)
def test_the_cuda_training_path_keeps_scoring_in_float32(digits, monkeypatch, dtype, compiled):
    """The switches' code path (taken on CUDA only), forced on the CPU: training runs under
    autocast (channels-last, compiled), and what is left afterwards is a float32 network in
    the default memory format, the same state keys, no compiled module, a float32 bank,
    and a score computed without autocast."""
    monkeypatch.setattr(
        ShiftedContrastiveDetector, "speed_switches", lambda self, device: (dtype, True, compiled, "forced")
    )
    if compiled:  # dynamo without code generation: the plumbing, not the speed
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    seen = []  # (fit or score, autocast on) at each network pass
    real_forward = ShiftedContrastiveNet.forward

    def spy(self, x):
        seen.append((phase[0], torch.is_autocast_enabled("cpu")))
        return real_forward(self, x)

    phase = ["fit"]
    monkeypatch.setattr(ShiftedContrastiveNet, "forward", spy)
    params = dict(TINY, epochs=1, test_views=2, train_attack_steps=1, amp="bf16", channels_last=True)
    det = T.fit_detector(T.detector_factory("cobra", params), digits)
    phase[0] = "score"
    s = det.score_batched(digits.test_x[:4])
    fit_calls = [c for c in seen if c[0] == "fit"]
    # the training passes (attacks included) under autocast; the score statistics at
    # the end of fit and the score without
    assert fit_calls[0][1] and not fit_calls[-1][1]
    assert seen[-1] == ("score", False)
    assert s.dtype == torch.float32 and torch.isfinite(s).all()
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in det.parameters())
    assert det.bank.dtype == torch.float32 and "_compiled_net" not in det.__dict__
    assert not any(k.startswith("_compiled") for k in det.state_dict())
    assert det.info()["training_speedups"] == "forced"
    assert all(torch.isfinite(torch.tensor(det.loss_history)))


def test_an_epoch_plan_shortens_training_and_is_recorded(digits):
    det = METHODS.create("csi", **dict(TINY, epochs=5, test_views=1))
    calls = []
    det.epoch_plan = lambda done, seconds: calls.append((done, seconds)) or 2
    det.fit(digits)
    assert len(det.loss_history) == 2 and [c[0] for c in calls] == [1]
    assert det.info()["epochs_trained"] == 2 and det.info()["epochs"] == 5
