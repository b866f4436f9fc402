"""PatchCore, ZARND and MSAD: properties with known answers (random ResNet-18 backbones;
the weights contract itself is tested in test_weights.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

from robustad.datasets import load_dataset
from robustad.errors import UserError
from robustad.methods.base import RunContext
from robustad.methods.feature_knn import MSAD, ZARND, nt_xent
from robustad.methods.patchcore import PatchCore

SMALL = dict(backbone="resnet18", weights=None, input_size=16, resize_to=None)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", 0)


@pytest.fixture(scope="module")
def full_bank(data):
    """PatchCore with every training patch in the bank (coreset ratio 1)."""
    return PatchCore(**SMALL, embed_dim=64, coreset_ratio=1.0, max_train=24).fit(data, RunContext(seed=0))


def test_patchcore_scores_its_own_training_images_zero(full_bank, data):
    g = torch.Generator().manual_seed(0)
    train = data.train_x[torch.randperm(len(data.train_x), generator=g)[:24]]  # seeded_fit_start's draw
    with torch.no_grad():
        s = full_bank.score(train)
        test = full_bank.score(data.test_x[:16])
    assert s.abs().max().item() < 1e-4
    assert (test > 1e-3).any()


def test_patchcore_score_is_the_max_patch_nearest_squared_distance(full_bank, data):
    x = data.test_x[:6]
    with torch.no_grad():
        f, _ = full_bank.patch_features(x)
        s = full_bank.score(x)
    nn_ = NearestNeighbors(n_neighbors=1).fit(full_bank.bank.double().numpy())
    d, _ = nn_.kneighbors(f.reshape(-1, f.shape[-1]).double().numpy())
    expected = (d[:, 0] ** 2).reshape(len(x), -1).max(1)
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-3, atol=1e-4)


def test_patchcore_surrogate_tends_to_the_score(full_bank, data):
    x = data.test_x[:6]
    with torch.no_grad():
        exact = full_bank.score(x)
        far = (full_bank.surrogate_score(x, temperature=1.0) - exact).abs().max()
        near = (full_bank.surrogate_score(x, temperature=1e-4) - exact).abs().max()
    assert near < 1e-2 * max(1.0, float(exact.abs().max())) and near < far


def test_patchcore_anomaly_map_has_the_image_size_and_follows_the_patches(full_bank, data):
    x = data.test_x[:3]
    with torch.no_grad():
        maps = full_bank.anomaly_map(x)
    assert maps.shape == (3, 8, 8)
    assert torch.isfinite(maps).all()
    # with a centre crop, pixels outside the crop repeat the nearest border value
    cropped = PatchCore(backbone="resnet18", weights=None, input_size=16, resize_to=20, embed_dim=32,
                        max_train=16, map_sigma=0).fit(data, RunContext(seed=0))  # fmt: skip
    with torch.no_grad():
        m = cropped.anomaly_map(data.test_x[:2])
    assert m.shape == (2, 8, 8)
    ch = round(8 * 16 / 20)
    top = (8 - ch) // 2
    if top > 0:
        assert torch.equal(m[:, 0, :], m[:, top, :])


def test_patchcore_anomalib_reweighting_is_between_zero_and_one(data):
    det = PatchCore(**SMALL, variant="anomalib", num_neighbors=3, max_train=24).fit(data, RunContext(seed=0))
    x = data.test_x[:8]
    with torch.no_grad():
        d, _, _, _ = det.patch_scores(x)
        s = det.score(x)
    top = d.max(1).values
    assert ((s > 0) & (s < top)).all()  # w = 1 − softmax(...)[m*] ∈ (0, 1)
    assert (det.bank_neighbors[:, 0] == torch.arange(len(det.bank))).all()  # m* first


def test_patchcore_refuses_a_bank_over_its_memory_limit(data):
    det = PatchCore(**SMALL, max_bank_bytes=1000, max_train=16)
    with pytest.raises(UserError, match="max_bank_bytes"):
        det.fit(data, RunContext(seed=0))


def test_zarnd_score_is_the_sum_of_two_nearest_squared_distances(data):
    det = ZARND(backbone="resnet18", weights=None, input_size=16, max_train=40).fit(data, RunContext(seed=0))
    x = data.test_x[:10]
    with torch.no_grad():
        f = det.features(x)
        s = det.score(x)
    assert torch.allclose(f.norm(dim=1), torch.ones(10), atol=1e-5)
    d, _ = NearestNeighbors(n_neighbors=2).fit(det.bank.double().numpy()).kneighbors(f.double().numpy())
    np.testing.assert_allclose(s.numpy(), (d**2).sum(1), rtol=1e-4, atol=1e-6)


def test_nt_xent_equals_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    u1 = F.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=1)
    u2 = F.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=1)
    z = torch.cat([u1, u2])
    total = 0.0
    for i in range(6):
        j = (i + 3) % 6
        logits = torch.tensor([float(z[i] @ z[k]) / 0.25 for k in range(6) if k != i], dtype=torch.float64)
        pos = float(z[i] @ z[j]) / 0.25
        total += -(pos - torch.logsumexp(logits, 0).item())
    assert nt_xent(u1, u2, 0.25).item() == pytest.approx(total / 6, rel=1e-9)


def test_msad_fine_tunes_in_eval_mode_and_moves_the_weights(data):
    det = MSAD(backbone="resnet18", weights=None, input_size=16, resize_to=None, epochs=1, batch_size=8,
               lr=0.05, max_train=16)  # fmt: skip
    torch.manual_seed(0)
    det.fit(data, RunContext(seed=0))
    ref = MSAD(backbone="resnet18", weights=None, input_size=16, resize_to=None, epochs=0, max_train=16)
    ref.fit(data, RunContext(seed=0))
    bn, bn_ref = det.extractor.stem[1], ref.extractor.stem[1]
    # BatchNorm statistics frozen (the release fine-tunes in eval mode), its affine parameters trained
    assert torch.equal(bn.running_mean, bn_ref.running_mean)
    assert torch.equal(bn.running_var, bn_ref.running_var)
    assert not torch.equal(det.extractor.blocks[0][0].conv1.weight, ref.extractor.blocks[0][0].conv1.weight)
    assert not any(p.requires_grad for p in det.parameters())  # frozen again for the attacks
    assert det.frozen_prefixes() == ()
    assert MSAD(backbone="resnet152").frozen_prefixes() == ("stem", "blocks.0", "blocks.1")


def test_patchcore_with_faiss_scores_and_differentiates_like_torch(full_bank, data):
    pytest.importorskip("faiss")
    x = data.test_x[:4].clone().requires_grad_(True)
    exact = full_bank.score(x)
    (g,) = torch.autograd.grad(exact.sum(), x)
    full_bank.knn_backend = "faiss"
    try:
        fast = full_bank.score(x)
        (g_fast,) = torch.autograd.grad(fast.sum(), x)
    finally:
        full_bank.knn_backend = "torch"
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fast, g, rtol=1e-4, atol=1e-5)
