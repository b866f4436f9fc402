"""PrincipaLS (robustad/methods/principals.py): the principal latent space and its training.

- the fitted PCA stages are orthonormal and their cascade is a projection (idempotent);
- the moving-average PCA converges to the batch PCA of a fixed latent (numpy's SVD);
- the training attack stays inside its ε-ball and the box, and ascends the loss;
- through ``bench run`` on digits, PGD lowers the AUROC and never raises it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustad.benchmark.store import Store
from robustad.cli import main
from robustad.datasets import load_dataset
from robustad.methods.base import RunContext
from robustad.methods.principals import MovingPCA, PrincipaLS

SMALL = dict(widths=(4, 8), latent_channels=8, epochs=3, batch_size=32, train_attack_steps=2)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", 0)


@pytest.fixture(scope="module")
def fitted(data):
    return PrincipaLS(**SMALL).fit(data, RunContext(seed=0))


def test_fitted_pca_projections_are_orthonormal_and_idempotent(fitted, data):
    u_v = fitted.vector_pca.components
    u_s = fitted.spatial_pca.components
    assert u_v.shape == (8, 1) and u_s.shape == (16, 8)  # v = 8; one pooling on 8×8: 4×4 = 16 cells
    for p in (u_v, u_s):
        gram = p.t() @ p
        eye = torch.eye(p.shape[1])
        assert torch.allclose(gram, eye, atol=1e-5), (gram - eye).abs().max()
    with torch.no_grad():
        z = fitted.encoder(data.test_x[:64])
        once = fitted.principal_latent(z)
        twice = fitted.principal_latent(once)
    assert (twice - once).abs().max().item() < 1e-5
    # and it is a real projection, not the identity: it discards most of the latent
    assert (once - z).abs().max().item() > 0.05
    n, v, h, w = z.shape
    rank = torch.linalg.matrix_rank((once - once.mean(0)).reshape(n, -1).double(), rtol=1e-4)
    assert int(rank) <= 8  # k_S = 8 spatial components, one vector direction


def _numpy_pca(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    mean = rows.mean(0)
    _, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
    return mean, vt[:k].T


def test_moving_average_pca_converges_to_the_batch_pca_of_a_fixed_latent():
    rng = np.random.default_rng(0)
    dim, k = 6, 2
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spread = np.array([4.0, 2.5, 1.0, 0.5, 0.3, 0.2])
    offset = np.array([3.0, -2.0, 1.0, 0.0, 5.0, 1.0])
    latent = (rng.standard_normal((4000, dim)) * spread) @ rotation.T + offset
    mean_np, comp_np = _numpy_pca(latent, k)

    pca = MovingPCA(dim, k, rate=0.1)
    pca.update(torch.randn(64, dim, generator=torch.Generator().manual_seed(1)))  # a wrong start
    start_gap = np.abs(pca.mean.numpy() - mean_np).max()
    g = torch.Generator().manual_seed(2)
    data = torch.tensor(latent, dtype=torch.float32)
    for _ in range(200):
        pca.update(data[torch.randperm(len(data), generator=g)[:256]])

    comp = pca.components.double().numpy()
    assert np.allclose(comp.T @ comp, np.eye(k), atol=1e-5)
    assert start_gap > 1.0
    assert np.abs(pca.mean.numpy() - mean_np).max() < 0.1
    # each direction matches numpy's (up to sign), and so does the subspace
    cosines = np.abs((comp * comp_np).sum(0))
    assert cosines.min() > 0.995, cosines
    assert np.abs(comp @ comp.T - comp_np @ comp_np.T).max() < 0.05


def test_training_attack_stays_inside_its_eps_ball(fitted, data):
    x = data.train_x[:32]
    eps = fitted.resolved_eps_train()
    assert eps == pytest.approx(8 / 255)
    fitted.train()
    x_adv = fitted.training_attack(x, torch.Generator().manual_seed(0))
    assert fitted.training  # the attack runs in eval mode and restores the mode
    fitted.eval()
    gap = (x_adv - x).abs().flatten(1).amax(1)
    assert gap.max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert gap.min().item() >= 0.9 * eps  # it does move, to the ball's surface
    with torch.no_grad():
        assert fitted.score(x_adv).mean() > fitted.score(x).mean()  # and ascends the loss


def test_pgd_lowers_and_never_raises_the_auroc_through_bench_run(tmp_path):
    out = tmp_path / "out"
    run = ["run", "--methods", "principals", "--classes", "0", "--attacks", "pgd", "--quiet"]
    assert main([*run, "--out", str(out)]) == 0
    with Store(out / "bench.sqlite") as store:
        (fit,) = store.jobs(kind="fit")
        (ev,) = store.jobs(kind="eval", attack="pgd")
        samples = store.samples(ev["job_id"])
    assert fit["method"] == "principals" and ev["status"] == "done"
    m = ev["metrics"]
    assert m["clean_auroc"] > 0.9
    # lowered (digits' class 0 is easy and the model adversarially trained: by little)
    assert m["adv_auroc"] < m["clean_auroc"], m
    assert ev["info"]["flags"] == [] and ev["info"]["zero_grad_frac"] == 0
    # the attack follows the score's gradient: normals' scores go up, anomalies' down
    s = samples["clean"], samples["adv"], samples["labels"]
    clean, adv, normal = np.asarray(s[0]), np.asarray(s[1]), np.asarray(s[2]) == 0
    assert (adv[normal] >= clean[normal]).all() and (adv[~normal] <= clean[~normal]).all()
    assert (adv[normal] - clean[normal]).mean() > 0.05 * clean[normal].mean()
    assert (clean[~normal] - adv[~normal]).mean() > 0.05 * clean[~normal].mean()
    assert fit["info"]["paper_details_unverified"] == ["architecture", "eps_train", "eta", "epochs"]
