"""DRÆM (robustad/methods/draem.py): the simulated anomalies, the losses, the score.

- the simulated anomalies change an image inside their mask only, by the blend
  (1 − β)·texture + β·image, and the mask is the thresholded rotated Perlin noise;
- the Perlin noise is deterministic per seed, in [−1, 1], and equals the authors'
  ``rand_perlin_2d_np`` (restated in numpy below) for the same lattice gradients;
- the focal loss and the SSIM match hand computations;
- the score is the max of the mean-filtered softmax map, ``anomaly_map`` is that map at
  the input's size, and the surrogate is smooth; grey and RGB, native and resized
  inputs pass the conformance suite;
- a textures folder is used (and recorded) when given, synthetic textures otherwise;
- through ``bench run`` on digits, PGD lowers the AUROC and never raises it; on an MVTec
  fixture the stored maps give a pixel AUROC that ``pgd-map`` lowers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import robustad.testing as T
from robustad.benchmark.store import Store
from robustad.cli import main
from robustad.datasets import OneClassData, load_dataset
from robustad.errors import UserError
from robustad.methods.base import RunContext
from robustad.methods.draem import (
    DRAEM,
    focal_loss,
    gaussian_window,
    perlin_exponents,
    perlin_noise,
    rotate,
    simulate_anomalies,
    ssim,
)

#: tiny networks trained enough (lr 1e-3, 8 epochs) that the score depends on the image:
#: with the code's N(0, 0.02) initialisation and eval-mode BatchNorm, a few steps at the
#: published lr leave input gradients near 1e-8, below what finite differences resolve
TINY = dict(rec_width=4, disc_width=4, epochs=8, batch_size=16, lr=1e-3)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 0)


@pytest.fixture(scope="module")
def fitted(digits):
    return DRAEM(**TINY).fit(digits, RunContext(seed=0))


def rgb_data(size: int = 12, n_train: int = 32, n_test: int = 8) -> OneClassData:
    """Seeded random RGB images: the contract checks need no realism."""
    g = torch.Generator().manual_seed(3)
    train = torch.rand(n_train, 3, size, size, generator=g)
    test = torch.rand(n_test, 3, size, size, generator=g)
    y = torch.tensor([0, 1] * (n_test // 2))
    return OneClassData("rgb", 0, train, test, y, torch.zeros(n_test, size, size))


# -- the simulated anomalies --------------------------------------------------------------------
@pytest.mark.parametrize("channels,size,with_textures", [(1, 8, False), (3, 32, False), (3, 20, True)])
def test_simulated_anomalies_change_the_image_inside_the_mask_only(channels, size, with_textures):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, channels, size, size, generator=g)
    textures = torch.rand(5, channels, size, size, generator=g) if with_textures else None
    sim = simulate_anomalies(x, torch.Generator().manual_seed(1), textures)
    m, a = sim.masks, sim.anomalous
    # the mask is exactly the thresholded (rotated) noise, for the images given an anomaly
    assert torch.equal(m, ((sim.noise > 0.5) & a.view(-1, 1, 1, 1)).to(m.dtype))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    # outside the mask the image is untouched, bit for bit
    outside = (1 - m).bool().expand_as(x)
    assert torch.equal(sim.images[outside], x[outside])
    # inside, it is the blend (1 − β)·texture + β·image
    b = sim.betas.view(-1, 1, 1, 1)
    expected = (1 - b) * sim.textures + b * x
    inside = m.bool().expand_as(x)
    assert torch.allclose(sim.images[inside], expected[inside], atol=1e-6)
    # and it does change there: the texture differs from the image
    assert (sim.images[inside] - x[inside]).abs().mean() > 0.05
    # β in [0, 0.8), about half the images anomalous, clean ones untouched with empty masks
    assert (sim.betas >= 0).all() and (sim.betas < 0.8).all()
    assert 4 <= int(a.sum()) <= 28
    assert (m[~a] == 0).all() and torch.equal(sim.images[~a], x[~a])
    assert (m.flatten(1).sum(1)[a] > 0).sum() >= 2  # some masks are not empty
    assert ((sim.textures >= 0) & (sim.textures <= 1)).all()
    # the same generator seed gives the same anomalies
    again = simulate_anomalies(x, torch.Generator().manual_seed(1), textures)
    assert all(torch.equal(u, v) for u, v in zip(sim, again))


def test_a_texture_set_is_the_source_when_given(monkeypatch):
    import robustad.methods.draem as draem

    # without the random augmentation each texture is one of the set, and all are drawn
    monkeypatch.setattr(draem, "augment_texture", lambda t, generator: t)
    x = torch.zeros(48, 1, 8, 8)
    textures = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 8, 8) / 4 + 0.25
    sim = simulate_anomalies(x, torch.Generator().manual_seed(2), textures)
    picked = [int(torch.nonzero((textures == t).flatten(1).all(1))) for t in sim.textures]
    assert sorted(set(picked)) == [0, 1, 2]
    # without a set, the synthetic fractal noise is the source
    synthetic = simulate_anomalies(x, torch.Generator().manual_seed(2), None)
    assert min(len(t.unique()) for t in synthetic.textures) > 10


# -- Perlin noise ------------------------------------------------------------------------------
def reference_perlin(shape, res, angles: np.ndarray) -> np.ndarray:
    """The authors' ``rand_perlin_2d_np`` (data_loader.py), with the lattice angles given."""

    def fade(t):
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    def lerp(a, b, t):
        return a + t * (b - a)

    delta = (res[0] / shape[0], res[1] / shape[1])
    d = (shape[0] // res[0], shape[1] // res[1])
    grid = np.mgrid[0 : res[0] : delta[0], 0 : res[1] : delta[1]].transpose(1, 2, 0) % 1
    gradients = np.stack((np.cos(angles), np.sin(angles)), axis=-1)

    def tile(s1, s2):
        return np.repeat(np.repeat(gradients[s1[0] : s1[1], s2[0] : s2[1]], d[0], axis=0), d[1], axis=1)

    def dot(grad, shift):
        g = np.stack(
            (grid[: shape[0], : shape[1], 0] + shift[0], grid[: shape[0], : shape[1], 1] + shift[1]), -1
        )
        return (g * grad[: shape[0], : shape[1]]).sum(axis=-1)

    n00 = dot(tile([0, -1], [0, -1]), [0, 0])
    n10 = dot(tile([1, None], [0, -1]), [-1, 0])
    n01 = dot(tile([0, -1], [1, None]), [0, -1])
    n11 = dot(tile([1, None], [1, None]), [-1, -1])
    t = fade(grid[: shape[0], : shape[1]])
    return math.sqrt(2) * lerp(lerp(n00, n10, t[..., 0]), lerp(n01, n11, t[..., 0]), t[..., 1])


@pytest.mark.parametrize("shape,res", [((32, 32), (4, 2)), ((64, 32), (1, 8)), ((16, 16), (16, 16))])
def test_perlin_noise_is_the_authors_formula(shape, res):
    ours = perlin_noise(shape, res, torch.Generator().manual_seed(5))
    angles = (
        2
        * math.pi
        * torch.rand(res[0] + 1, res[1] + 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    )
    ref = reference_perlin(shape, res, angles.numpy())
    assert ours.shape == shape
    assert np.allclose(ours.numpy(), ref, atol=1e-6)


def test_perlin_noise_is_deterministic_per_seed_and_in_range():
    a = perlin_noise((64, 64), (4, 8), torch.Generator().manual_seed(0))
    b = perlin_noise((64, 64), (4, 8), torch.Generator().manual_seed(0))
    c = perlin_noise((64, 64), (4, 8), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for seed in range(20):
        for res in [(1, 1), (2, 4), (8, 8), (32, 32)]:
            p = perlin_noise((256, 256), res, torch.Generator().manual_seed(seed))
            assert p.abs().max() <= 1.0 + 1e-6
    # it uses its range (the 0.5 threshold is reached) and is zero on the lattice points
    big = torch.stack([perlin_noise((64, 64), (4, 4), torch.Generator().manual_seed(s)) for s in range(20)])
    assert big.max() > 0.5 and big.min() < -0.5
    assert big[:, ::16, ::16].abs().max() < 1e-6
    # odd sizes and a batch of maps work; each map of a batch is a Perlin map of its own
    assert perlin_noise((7, 9), (2, 4), batch=3).shape == (3, 7, 9)
    assert perlin_exponents(256, 0, 6) == (0, 6) and perlin_exponents(8, 0, 6) == (0, 3)


def test_rotation_turns_about_the_centre_with_zero_fill():
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(0)).expand(2, 3, 10, 10)
    quarter = rotate(x, torch.tensor([90.0, -90.0]))
    assert torch.allclose(quarter[0], torch.rot90(x[0], 1, (1, 2)), atol=1e-5) or torch.allclose(
        quarter[0], torch.rot90(x[0], -1, (1, 2)), atol=1e-5
    )
    assert torch.allclose(quarter[0], torch.rot90(quarter[1], 2, (1, 2)), atol=1e-5)
    assert torch.allclose(rotate(x, torch.zeros(2)), x, atol=1e-6)
    # at 45° the corners come from outside the image: zeros
    assert (rotate(torch.ones(1, 1, 10, 10), torch.tensor([45.0]))[0, 0, 0, 0]).item() == 0
    # and the simulated anomalies' noise is rotated: the fill shows as exact zeros in corners
    # (not the top-left one, a lattice point where Perlin noise is 0 anyway)
    sim = simulate_anomalies(torch.zeros(32, 1, 16, 16), torch.Generator().manual_seed(0))
    corners = sim.noise[:, 0, [0, -1, -1], [-1, 0, -1]]
    assert (corners == 0).any(1).float().mean() > 0.3


# -- the losses --------------------------------------------------------------------------------
def test_focal_loss_matches_a_hand_computation():
    # two pixels: p(anomaly) 0.2 with label 0, p(anomaly) 0.7 with label 1
    probs = torch.tensor([[0.8, 0.3], [0.2, 0.7]], dtype=torch.float64).view(1, 2, 1, 2)
    target = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    s = 1e-5
    # one-hot labels clamped to [s, 1 − s]; p_t = Σ onehot·p + s; −(1 − p_t)² log p_t, mean
    pt0 = (1 - s) * 0.8 + s * 0.2 + s
    pt1 = s * 0.3 + (1 - s) * 0.7 + s
    hand = (-((1 - pt0) ** 2) * math.log(pt0) - ((1 - pt1) ** 2) * math.log(pt1)) / 2
    assert focal_loss(probs, target).item() == pytest.approx(hand, rel=1e-12)
    # (0.2²·ln(1/0.8) + 0.3²·ln(1/0.7)) / 2 = (0.04·0.22314 + 0.09·0.35667) / 2 ≈ 0.020513,
    assert hand == pytest.approx(0.020513, abs=1e-5)  # the 1e-5 smoothing moves it by about 1e-6
    # γ = 0 is the cross-entropy of the smoothed labels
    ce = -(math.log(pt0) + math.log(pt1)) / 2
    assert focal_loss(probs, target, gamma=0.0).item() == pytest.approx(ce, rel=1e-12)


def test_ssim_matches_a_hand_computation():
    w = gaussian_window(11, 1.5, 1)
    assert w.shape == (1, 1, 11, 11) and w.sum().item() == pytest.approx(1.0, abs=1e-6)
    centre = torch.exp(-torch.tensor(50.0) / (2 * 1.5**2))  # the corner (offset 5, 5) over the centre
    assert (w[0, 0, 0, 0] / w[0, 0, 5, 5]).item() == pytest.approx(centre.item(), rel=1e-5)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    b = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    assert ssim(a, a, w).item() == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b, w).item() == pytest.approx(ssim(b, a, w).item(), abs=1e-12)
    # a 1×1 window: every local variance is 0, so SSIM per pixel is (2ab + C1) / (a² + b² + C1)
    one = gaussian_window(1, 1.5, 1)
    c1 = 0.01**2
    hand = ((2 * a * b + c1) / (a**2 + b**2 + c1)).mean()
    assert ssim(a, b, one).item() == pytest.approx(hand.item(), rel=1e-12)


# -- the score and the map ---------------------------------------------------------------------
def test_score_is_the_max_of_the_mean_filtered_anomaly_map(fitted, digits):
    x = digits.test_x[:16]
    det = DRAEM(**{**TINY, "pool_size": 3})
    det.build(fitted.input_shape)
    det.load_state_dict(fitted.state_dict())
    det.eval()
    with torch.no_grad():
        rec = det.reconstructive(x)
        z = det.discriminative(torch.cat([rec, x], 1))
        m = torch.softmax(z, 1)[:, 1:]
        pooled = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=True)
        assert torch.allclose(det.score(x), pooled.flatten(1).amax(1), atol=1e-7)
        amap = det.anomaly_map(x)
        assert amap.shape == (16, 8, 8) and torch.allclose(amap, m[:, 0])
        assert ((amap >= 0) & (amap <= 1)).all()
    # every image has a non-zero input gradient, through both sub-networks
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(det.score(xg).sum(), xg)
    assert (g.flatten(1).abs().amax(1) > 0).all()
    # the surrogate: τ·LSE of the pooled logit margin, ≥ its max and within τ·log(pixels) of it
    with torch.no_grad():
        margin = F.avg_pool2d(z[:, 1:] - z[:, :1], 3, stride=1, padding=1).flatten(1)
        sur = det.surrogate_score(x)
        top = margin.amax(1)
        assert (sur >= top - 1e-6).all() and (sur <= top + math.log(64) + 1e-6).all()
        assert torch.allclose(det.surrogate_score(x, temperature=0.5), 0.5 * torch.logsumexp(margin / 0.5, 1))
    (gs,) = torch.autograd.grad(det.surrogate_score(xg).sum(), xg)
    assert (gs.flatten(1).abs().amax(1) > 0).all()


def test_auto_sizes_for_small_and_large_images():
    det = DRAEM()
    det.build((1, 8, 8))
    assert (det.rec_p, det.disc_p, det.window) == (2, 2, 1)
    det = DRAEM(rec_width=2, disc_width=2, image_size=256)
    det.build((3, 224, 224))
    assert (det.rec_p, det.disc_p, det.window) == (4, 5, 21)  # the published network at 256 px
    assert det.info()["input"] == "resized 224x224 -> 256x256 (bilinear)"
    det = DRAEM(rec_width=2, disc_width=2)
    det.build((1, 28, 28))
    assert (det.rec_p, det.disc_p, det.window) == (3, 3, 3)
    with pytest.raises(UserError, match="pool_size"):
        DRAEM(pool_size=4).build((1, 8, 8))


# -- conformance beyond the digits entry of tests/test_conformance.py ---------------------------
def test_rgb_images_resized_inside_the_model_pass_the_conformance_suite():
    data = rgb_data(size=12)
    params = dict(TINY, epochs=12, lr=2e-3, batch_size=8, image_size=8, pool_size=3)
    det = T.check_detector("draem", params, data, n_test=4)
    assert det.info()["input"] == "resized 12x12 -> 8x8 (bilinear)" and det.info()["channels"] == 3
    with torch.no_grad():
        amap = det.anomaly_map(data.test_x)
    assert amap.shape == (8, 12, 12)  # back at the input's size


# -- the anomaly source ------------------------------------------------------------------------
def test_a_textures_folder_is_used_and_recorded(tmp_path, digits):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        sub = tmp_path / "textures" / f"kind{i}"
        sub.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(sub / f"t{i}.png")
    det = DRAEM(**{**TINY, "epochs": 1, "anomaly_source_dir": str(tmp_path / "textures")})
    det.fit(digits, RunContext(seed=0))
    info = det.info()
    assert info["anomaly_source"] == "textures" and info["anomaly_source_detail"].startswith("3 images from")
    assert int(det.texture_images_used) == 3
    plain = DRAEM(**{**TINY, "epochs": 1}).fit(digits, RunContext(seed=0))
    assert plain.info()["anomaly_source"] == "synthetic"
    with pytest.raises(UserError, match="anomaly_source_dir"):
        DRAEM(**{**TINY, "anomaly_source_dir": str(tmp_path / "nowhere")}).fit(digits)


# -- end to end --------------------------------------------------------------------------------
def test_pgd_lowers_and_never_raises_the_auroc_through_bench_run(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("method_params:\n  draem: {rec_width: 8, disc_width: 8, epochs: 10, batch_size: 16}\n")
    out = tmp_path / "out"
    run = ["run", "--methods", "draem", "--classes", "1", "--attacks", "pgd", "--quiet", "--config", str(cfg)]
    assert main([*run, "--out", str(out)]) == 0
    with Store(out / "bench.sqlite") as store:
        (fit,) = store.jobs(kind="fit")
        (ev,) = store.jobs(kind="eval", attack="pgd")
        samples = store.samples(ev["job_id"])
    assert fit["method"] == "draem" and ev["status"] == "done"
    assert fit["info"]["anomaly_source"] == "synthetic" and fit["info"]["epochs_run"] == 10
    m = ev["metrics"]
    assert m["clean_auroc"] > 0.6
    assert m["adv_auroc"] < m["clean_auroc"] - 0.1, m
    assert ev["info"]["flags"] == [] and ev["info"]["zero_grad_frac"] == 0
    # the attack follows the score's gradient: normals' scores go up, anomalies' down
    clean, adv = np.asarray(samples["clean"]), np.asarray(samples["adv"])
    normal = np.asarray(samples["labels"]) == 0
    assert (adv[normal] >= clean[normal]).all() and (adv[~normal] <= clean[~normal]).all()


def test_pixel_auroc_of_the_anomaly_map_through_bench_run_on_an_mvtec_tree(tmp_path):
    from robustad.datasets.fixtures import write_mvtec

    write_mvtec(tmp_path / "mv", "bottle", n_train=16, n_good=4, defects={"crack": 4}, grey=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "method_params:\n  draem: {rec_width: 8, disc_width: 8, epochs: 40, batch_size: 8, lr: 0.001}\n"
        "attack_params:\n  pgd: {steps: 5}\n  pgd-map: {steps: 5}\n"
        "dataset_params:\n  mvtec: {image_size: 32}\n"
    )
    out = tmp_path / "out"
    run = ["run", "--methods", "draem", "--datasets", "mvtec", "--classes", "bottle", "--quiet"]
    run += ["--data-root", str(tmp_path / "mv"), "--attacks", "pgd,pgd-map", "--eps", "8/255"]
    assert main([*run, "--config", str(cfg), "--out", str(out)]) == 0
    with Store(out / "bench.sqlite") as store:
        fit = store.jobs(kind="fit", status="done")[0]
        evals = {r["attack"]: r for r in store.jobs(kind="eval", status="done")}
        maps = store.maps(fit["job_id"])
    # DRÆM localises: its maps are stored at the images' size and score the defect pixels
    # (15 epochs left the map near chance and its sign dependent on the thread count; 40 epochs
    # converge to a pixel AUROC above 0.99 for 1 to 4 threads)
    assert maps["clean"].shape == (8, 32, 32)
    assert fit["metrics"]["clean_pixel_auroc"] > 0.9
    # attacking the image score never raises its AUROC; attacking the map lowers the pixel AUROC
    assert evals["pgd"]["metrics"]["adv_auroc"] <= fit["metrics"]["clean_auroc"]
    assert evals["pgd-map"]["metrics"]["adv_pixel_auroc"] < fit["metrics"]["clean_pixel_auroc"]
    assert evals["pgd-map"]["info"]["flags"] == []
    # a converged DRÆM's softmax saturates on this easy defect: PGD on the true image score
    # sees zero gradients and the flag says so (aa's apgd-surrogate follows the logits instead)
    assert evals["pgd"]["info"]["flags"] == ["zero-grad"]
