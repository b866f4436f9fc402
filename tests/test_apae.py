"""APAE (robustad/methods/apae.py): the approximate projection and the feature weighting.

- the unrolled score equals the inner descent run step by step without a graph
  (``torch.no_grad``, detached latents), for plain and accumulated gradients;
- its input gradient matches a float64 finite difference of the whole procedure, and
  the stopped-gradient (BPDA) and graph-free-steps variants do not;
- the feature weights and the weighted score match a hand computation;
- through ``bench run`` on digits, PGD lowers the AUROC and never raises it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import robustad.testing as T
from robustad.benchmark.store import Store
from robustad.cli import main
from robustad.datasets import load_dataset
from robustad.methods.apae import APAE, feature_weights
from robustad.methods.base import RunContext

K, ALPHA = 5, 0.01  # the published step size, a few steps
SMALL = dict(widths=(4, 8), latent_channels=4, latent_dim=8, inner_steps=K, inner_lr=ALPHA, epochs=30)
SMALL["batch_size"] = 32


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", 0)


@pytest.fixture(scope="module")
def fitted(data):
    return APAE(**SMALL).fit(data, RunContext(seed=0))


def reference_score(det: APAE, x: torch.Tensor, accumulate: bool = False) -> torch.Tensor:
    """The procedure written out: z₀ = E(x), K detached gradient steps on Σ SmoothL1(D(z), x),
    then Σ_p w_p SmoothL1(x_p, D(z_K)_p); no graph survives a step."""
    with torch.no_grad():
        z = det.encoder(x)
        total = torch.zeros_like(z)
        for _ in range(K):
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                loss = F.smooth_l1_loss(det.decoder(zz), x, reduction="sum", beta=1.0)
                (g,) = torch.autograd.grad(loss, zz)
            total = total + g if accumulate else g
            z = z - ALPHA * total
        r = (x - det.decoder(z)).abs()
        e = torch.where(r < 1, 0.5 * r**2, r - 0.5)
        return (det.weights * e).flatten(1).sum(1)


@pytest.mark.parametrize("accumulate", [False, True])
def test_unrolled_score_equals_the_inner_loop_run_without_autograd(fitted, data, accumulate):
    det = copy.deepcopy(fitted)
    det.accumulate_grad = accumulate
    x = data.test_x[:64]
    xg = x.clone().requires_grad_(True)
    unrolled = det.score(xg)  # gradients enabled: the unrolled path
    assert unrolled.requires_grad and unrolled.grad_fn is not None
    ref = reference_score(det, x, accumulate)
    scale = ref.abs().max().item()
    assert (unrolled.detach() - ref).abs().max().item() <= 1e-6 * scale
    with torch.no_grad():  # the graph-free path gives the same values
        assert (det.score(x) - ref).abs().max().item() <= 1e-6 * scale
        # and the descent does something: the plain reconstruction's score is far off
        det.inner_steps = 0
        plain = det.score(x)
    assert ((plain - ref).abs() / ref.abs()).median().item() > 0.05
    other = reference_score(det, x, not accumulate)
    assert ((other - ref).abs() / ref.abs()).max().item() > 1e-4  # the two variants differ


def test_input_gradient_matches_float64_finite_differences_of_the_whole_procedure(fitted, data):
    det = copy.deepcopy(fitted).double().eval()
    x = T.interior_inputs(data.test_x[:6].double(), seed=0)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(det.score(xg).sum(), xg)
    h = 1e-6
    with torch.no_grad():
        fd = (det.score(x + h * v) - det.score(x - h * v)) / (2 * h)
    ad = (g * v).flatten(1).sum(1)
    assert torch.allclose(ad, fd, rtol=1e-5, atol=1e-8 * fd.abs().max().item()), (ad, fd)
    # the check can tell: the gradient without the path through the inner loop is far off
    (g_bpda,) = torch.autograd.grad(det.surrogate_score(xg).sum(), xg)
    bpda = (g_bpda * v).flatten(1).sum(1)
    assert ((bpda - fd).abs() / fd.abs()).max().item() > 1e-2
    # as is the one whose steps keep z₀'s graph but take their gradients without one
    z = det.encoder(xg)
    for _ in range(K):
        zz = z.detach().requires_grad_(True)
        (step,) = torch.autograd.grad(det.inner_loss(zz, x).sum(), zz)
        z = z - ALPHA * step
    (g_part,) = torch.autograd.grad(det.weighted_error(xg, det.decoder(z)).sum(), xg)
    part = (g_part * v).flatten(1).sum(1)
    assert ((part - fd).abs() / fd.abs()).max().item() > 1e-2
    # the surrogate has the score's value
    with torch.no_grad():
        assert torch.allclose(det.surrogate_score(x), det.score(x), rtol=1e-12)


def test_feature_weighting_matches_a_hand_computation(fitted, data):
    # four training images of three pixels; even count: the median is the mean of the middle two
    errors = torch.tensor(
        [[0.000, 0.1, 0.5], [0.002, 0.3, 0.5], [0.004, 0.2, 0.1], [0.010, 0.4, 0.9]], dtype=torch.float64
    )
    w = feature_weights(errors, 1e-3)
    assert torch.allclose(w, torch.tensor([1 / 0.004, 1 / 0.251, 1 / 0.501], dtype=torch.float64))
    w_odd = feature_weights(errors[:3], 1e-3)  # odd count: the middle value
    assert torch.allclose(w_odd, torch.tensor([1 / 0.003, 1 / 0.201, 1 / 0.501], dtype=torch.float64))

    # the weighted error: SmoothL1 (β = 1) per pixel, quadratic below 1 and linear above
    det = copy.deepcopy(fitted)
    det.weights = torch.tensor([[[2.0, 3.0], [5.0, 7.0]]])
    x = torch.tensor([[[[0.0, 1.0], [0.5, 2.0]]]])
    x_hat = torch.tensor([[[[0.2, 0.5], [0.5, 0.5]]]])
    hand = 2.0 * 0.5 * 0.2**2 + 3.0 * 0.5 * 0.5**2 + 5.0 * 0.0 + 7.0 * (1.5 - 0.5)
    assert det.weighted_error(x, x_hat).item() == pytest.approx(hand, rel=1e-6)

    # the fitted weights: 1 / (1e-3 + per-pixel median of the plain reconstruction's errors
    # over the training images), in numpy
    with torch.no_grad():
        xt = data.train_x
        r = (xt - fitted.decoder(fitted.encoder(xt))).double().numpy()
    e = np.where(np.abs(r) < 1, 0.5 * r**2, np.abs(r) - 0.5)
    expected = 1.0 / (1e-3 + np.median(e, axis=0))
    assert np.allclose(fitted.weights.numpy(), expected, rtol=1e-4)
    assert expected.max() / expected.min() > 10  # the weights are far from uniform
    # and the score uses them: Σ_p w_p SmoothL1 of the projection's error
    with torch.no_grad():
        x = data.test_x[:16]
        r = (x - fitted.reconstruct(x, unroll=False)).double().numpy()
        s = fitted.score(x).double().numpy()
    hand = (expected * np.where(np.abs(r) < 1, 0.5 * r**2, np.abs(r) - 0.5)).reshape(16, -1).sum(1)
    assert np.allclose(s, hand, rtol=1e-4)


def test_pgd_lowers_and_never_raises_the_auroc_through_bench_run(tmp_path):
    out = tmp_path / "out"
    run = ["run", "--methods", "apae", "--classes", "0", "--attacks", "pgd", "--quiet"]
    assert main([*run, "--out", str(out)]) == 0
    with Store(out / "bench.sqlite") as store:
        (fit,) = store.jobs(kind="fit")
        (ev,) = store.jobs(kind="eval", attack="pgd")
        samples = store.samples(ev["job_id"])
    assert fit["method"] == "apae" and ev["status"] == "done"
    assert fit["info"]["inner_steps"] == 3 and fit["info"]["projection"] == "paper"  # the quick preset
    m = ev["metrics"]
    assert m["clean_auroc"] > 0.9
    assert m["adv_auroc"] < m["clean_auroc"], m
    assert ev["info"]["flags"] == [] and ev["info"]["zero_grad_frac"] == 0
    # the attack follows the score's gradient: normals' scores go up, anomalies' down
    clean, adv = np.asarray(samples["clean"]), np.asarray(samples["adv"])
    normal = np.asarray(samples["labels"]) == 0
    assert (adv[normal] >= clean[normal]).all() and (adv[~normal] <= clean[~normal]).all()
    assert (adv[normal] - clean[normal]).mean() > 0.05 * clean[normal].mean()
    assert (clean[~normal] - adv[~normal]).mean() > 0.05 * clean[~normal].mean()
