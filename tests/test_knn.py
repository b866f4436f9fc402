"""The shared nearest-neighbour module (robustad.methods.knn) against brute force and
scikit-learn, and PatchCore's patch features against their closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from sklearn.neighbors import NearestNeighbors

from robustad.methods import knn
from robustad.methods.patchcore import anomalib_embedding, gaussian_blur, paper_embedding


@pytest.fixture
def points():
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(
        300, 6, generator=g, dtype=torch.float64
    )


@pytest.mark.parametrize("chunk", [7, 64, 10_000])
@pytest.mark.parametrize("squared", [False, True])
def test_knn_distances_equal_scikit_learn(points, chunk, squared):
    q, bank = points
    d, i = knn.knn_distances(q, bank, k=3, squared=squared, chunk=chunk)
    ref_d, ref_i = NearestNeighbors(n_neighbors=3, algorithm="brute").fit(bank.numpy()).kneighbors(q.numpy())
    np.testing.assert_array_equal(i.numpy(), ref_i)
    np.testing.assert_allclose(d.numpy(), ref_d**2 if squared else ref_d, rtol=1e-9, atol=1e-9)


def test_knn_gradient_is_finite_at_zero_distance_and_matches_finite_differences(points):
    q, bank = points
    # the first query *is* a bank row, with integer values so that ‖a‖² + ‖b‖² − 2a·b is exactly 0
    bank = bank.clone()
    bank[0] = torch.tensor([1.0, -2.0, 0.0, 3.0, 1.0, 2.0], dtype=bank.dtype)
    q = torch.cat([bank[:1], q[:3]]).requires_grad_(True)
    d, _ = knn.knn_distances(q, bank, k=2)
    assert d[0, 0].item() == pytest.approx(1e-6)  # the floor: √1e-12
    (g,) = torch.autograd.grad(d.sum(), q)
    assert torch.isfinite(g).all()
    assert torch.autograd.gradcheck(
        lambda z: knn.knn_distances(z, bank, k=2)[0], (q[1:].detach().requires_grad_(True),)
    )


def test_faiss_search_equals_the_exact_search(points):
    pytest.importorskip("faiss")
    q, bank = points
    q = q.float().requires_grad_(True)
    bank = bank.float()
    d, i = knn.faiss_knn_distances(q, bank, k=4)
    ref_d, ref_i = knn.knn_distances(q, bank, k=4)
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(d, ref_d, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(d.sum(), q)  # gradients flow through the torch distances
    (ref_g,) = torch.autograd.grad(ref_d.sum(), q)
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-4)


def test_soft_min_tends_to_the_nearest_distance(points):
    q, bank = points
    exact = knn.knn_distances(q, bank, k=1)[0][:, 0]
    previous = None
    for tau in (1.0, 0.1, 1e-3):
        soft = knn.soft_knn_distance(q, bank, tau, chunk=50)
        assert (soft <= exact + 1e-12).all()  # a soft-min is below the min
        gap = (exact - soft).max().item()
        assert previous is None or gap < previous
        previous = gap
    assert previous < 1e-2
    vals = torch.tensor([[1.0, 3.0, 2.0]], dtype=torch.float64)
    assert knn.soft_max(vals, 1e-4).item() == pytest.approx(3.0, abs=1e-3)


def _brute_greedy(z: np.ndarray, first: np.ndarray, n_select: int, selected: list[int]) -> list[int]:
    dist = first.copy()
    for _ in range(n_select - len(selected)):
        i = int(np.argmax(dist))
        selected.append(i)
        dist = np.minimum(dist, np.linalg.norm(z - z[i], axis=1))
    return selected


def test_approximate_greedy_coreset_equals_brute_force(points):
    _, bank = points
    got = knn.approximate_greedy_coreset(
        bank, 25, torch.Generator().manual_seed(3), proj_dim=128, n_starts=10
    )
    # the same draws: no projection (proj_dim ≥ dim), then the 10 starting points
    starts = torch.randperm(len(bank), generator=torch.Generator().manual_seed(3))[:10].numpy()
    z = bank.numpy()
    first = np.linalg.norm(z[:, None] - z[starts][None], axis=2).mean(1)
    assert got.tolist() == _brute_greedy(z, first, 25, [])
    assert len(set(got.tolist())) == 25


def test_kcenter_greedy_coreset_equals_brute_force(points):
    _, bank = points
    assert knn.jl_dimension(len(bank)) > bank.shape[1]  # no projection at this size
    got = knn.kcenter_greedy_coreset(bank, 20, torch.Generator().manual_seed(5))
    first = int(torch.randint(len(bank), (1,), generator=torch.Generator().manual_seed(5)))
    z = bank.numpy()
    assert got.tolist() == _brute_greedy(z, np.linalg.norm(z - z[first], axis=1), 20, [first])


def test_projected_coreset_is_seeded_and_covers_the_set():
    g = torch.Generator().manual_seed(0)
    # 460 points in a tight core and 40 far apart: a k-center coreset takes every far one
    feats = 0.1 * torch.randn(500, 300, generator=g)
    feats[460:] += 10 * F.normalize(torch.randn(40, 300, generator=g), dim=1)
    a = knn.approximate_greedy_coreset(feats, 50, torch.Generator().manual_seed(1))
    b = knn.approximate_greedy_coreset(feats, 50, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # a k-center coreset covers the set better than a random subset of the same size
    cover = lambda idx: knn.knn_distances(feats, feats[idx], k=1)[0].max()  # noqa: E731
    assert set(range(460, 500)) <= set(a.tolist())
    assert cover(a) < 0.5 * cover(torch.randperm(500, generator=g)[:50])


def test_paper_embedding_has_the_closed_form_of_the_authors_pooling():
    """WideResNet-50-2's channel counts (512, 1024) and embed_dim 1024: dims 0–511 are each
    layer2 channel averaged over its 3×3 neighbourhood with weight 0.2 on the centre and 0.1
    elsewhere; dims 512–1023 the 3×3 mean of layer3 with channel pairs averaged, upsampled."""
    g = torch.Generator().manual_seed(0)
    l2 = torch.randn(2, 512, 4, 4, generator=g, dtype=torch.float64)
    l3 = torch.randn(2, 1024, 2, 2, generator=g, dtype=torch.float64)
    got = paper_embedding([l2, l3], 1024).view(2, 4, 4, 1024)
    w = torch.full((3, 3), 0.1, dtype=torch.float64)
    w[1, 1] = 0.2
    first = F.conv2d(l2, w.expand(512, 1, 3, 3).contiguous(), padding=1, groups=512)
    mean3 = F.avg_pool2d(l3, 3, stride=1, padding=1, count_include_pad=True)
    paired = mean3.view(2, 512, 2, 2, 2).mean(2)
    second = F.interpolate(paired, size=(4, 4), mode="bilinear", align_corners=False)
    expected = torch.cat([first, second], 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_anomalib_embedding_concatenates_pooled_layers():
    g = torch.Generator().manual_seed(0)
    l2, l3 = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 5, 2, 2, generator=g)
    got = anomalib_embedding([l2, l3])
    assert got.shape == (1, 16, 8)
    # the centre patch (1,1) of layer2 is the plain mean of its 3×3 neighbourhood
    torch.testing.assert_close(got[0, 5, :3], l2[0, :, 0:3, 0:3].mean((1, 2)))


@pytest.mark.parametrize("size", [5, 28])
def test_gaussian_blur_equals_scipy(size):
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, size, size, generator=g, dtype=torch.float64)
    got = gaussian_blur(maps, 4.0, "symmetric")
    for m, out in zip(maps, got):
        ref = gaussian_filter(m.numpy(), 4.0, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)
    got = gaussian_blur(maps, 1.0, "reflect")
    ref = gaussian_filter(maps[0].numpy(), 1.0, mode="mirror", truncate=4.0)
    np.testing.assert_allclose(got[0].numpy(), ref, rtol=1e-10, atol=1e-10)
