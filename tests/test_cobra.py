"""COBRA and CSI: loss index sets and values, training attacks, the score, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import robustad.methods  # noqa: F401  (registration)
from robustad.datasets import load_dataset
from robustad.methods.base import RunContext, load_detector_state, save_detector
from robustad.methods.contrastive_loss import (
    LOG_FLOOR,
    cobra_loss,
    opposite_pairs,
    positive_mask,
)
from robustad.methods.contrastive_training import ContrastiveTrainer
from robustad.registry import METHODS

TINY = dict(width=4, blocks=(1, 1), proj_dim=8, batch_size=16, lr=0.05, warmup_epochs=0, test_views=2)


# -- index sets ------------------------------------------------------------------------------
def test_positive_and_opposite_index_sets_for_k2():
    # B = 2 images, K = 2 groups, 2 blocks: row = block·4 + group·2 + image.
    pos = positive_mask(batch=2, groups=2, blocks=2)
    expected = {(0, 4), (1, 5), (2, 6), (3, 7)}
    expected |= {(j, i) for i, j in expected}
    assert {tuple(p) for p in pos.nonzero().tolist()} == expected
    assert opposite_pairs(2, 2).tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]


def test_positive_and_opposite_index_sets_for_k4():
    b, k = 2, 4
    pos = positive_mask(batch=b, groups=k, blocks=4)
    n = 4 * k * b
    assert pos.shape == (n, n)
    # anchor (block 0, group 3, image 1) = row 7: positives are rows 7 + 8·{1,2,3}
    assert pos[7].nonzero().flatten().tolist() == [15, 23, 31]
    assert int(pos.sum()) == n * 3  # three positives each: same (image, group) in the other blocks
    assert not pos.diagonal().any()
    pairs = opposite_pairs(b, k)
    # V1 (rows 0..7) and V2 (rows 8..15): image i with each of its 3 pseudo-anomalies
    assert pairs.tolist() == [
        [0, 2], [1, 3], [0, 4], [1, 5], [0, 6], [1, 7],
        [8, 10], [9, 11], [8, 12], [9, 13], [8, 14], [9, 15],
    ]  # fmt: skip


# -- loss values ---------------------------------------------------------------------------------
def hand_loss(z: torch.Tensor, batch: int, groups: int, blocks: int, tau: float, lam: float) -> float:
    """The loss of COBRA (docs/METHODS.md) written out with Python loops."""
    zs = [[float(v) for v in row] for row in F.normalize(z, dim=1)]
    n = len(zs)
    cos = [[sum(a * b for a, b in zip(zs[i], zs[j])) for j in range(n)] for i in range(n)]

    def p(a: int, j: int) -> float:
        den = sum(math.exp(cos[a][l] / tau) for l in range(n) if l != a)
        return math.exp(cos[a][j] / tau) / den

    kb = groups * batch
    pos_terms = []
    for a in range(n):
        positives = [j for j in range(n) if j != a and j % kb == a % kb]
        pos_terms.append(-sum(math.log(p(a, j)) for j in positives))
    opp_terms = []
    for blk in range(min(blocks, 2)):
        for k in range(1, groups):
            for i in range(batch):
                x, y = blk * kb + i, blk * kb + k * batch + i
                opp_terms.append(math.log(p(x, y) + LOG_FLOOR) + math.log(p(y, x) + LOG_FLOOR))
    # one normalisation for both sums: the number of anchors (the authors' release)
    return (sum(pos_terms) + lam * sum(opp_terms)) / n


@pytest.mark.parametrize("groups,blocks", [(2, 2), (4, 4), (2, 4)])
def test_loss_matches_a_hand_computation(groups, blocks):
    batch = 3
    z = torch.randn(blocks * groups * batch, 5, generator=torch.Generator().manual_seed(groups + blocks))
    for lam in (0.0, 1.0, 0.3):
        got = cobra_loss(z.double(), batch, groups, blocks, temperature=0.5, opposite_weight=lam).item()
        assert got == pytest.approx(
            hand_loss(z.double(), batch, groups, blocks, 0.5, lam), rel=1e-9, abs=1e-9
        )


def test_opposite_weight_zero_is_plain_nt_xent_with_two_blocks():
    # CSI's two blocks: one positive per anchor, so the loss is SimCLR's NT-Xent, a
    # cross entropy whose target is the same (image, group) in the other view.
    batch, groups, blocks, tau = 4, 2, 2, 0.5
    z = torch.randn(blocks * groups * batch, 6, generator=torch.Generator().manual_seed(0)).double()
    n, kb = len(z), groups * batch
    zn = F.normalize(z, dim=1)
    logits = zn @ zn.t() / tau
    logits.fill_diagonal_(float("-inf"))
    partner = (torch.arange(n) + kb) % n
    nt_xent = F.cross_entropy(logits, partner)
    assert cobra_loss(z, batch, groups, blocks, tau, opposite_weight=0.0).item() == pytest.approx(
        nt_xent.item()
    )


def block_diagonal_loss(z: torch.Tensor, batch: int, tau: float, lam: float) -> float:
    """K = 2 groups, 4 blocks, in the form of the authors' release: −log p summed over
    the 12 diagonals of the off-diagonal blocks of the (4·2B)² matrix, minus the same
    quantity on the diagonals pairing each block's first half (the images) with its
    second half (their pseudo-anomalies) in V1 and V2, all divided by the row count."""
    zn = F.normalize(z, dim=1)
    logits = zn @ zn.t() / tau
    logits.fill_diagonal_(float("-inf"))
    loss = -logits.log_softmax(1)  # exact −log p: the positives carry no floor here
    floored = -torch.log(logits.softmax(1) + LOG_FLOOR)
    bsz, half = 2 * batch, batch
    total = 0.0
    for b1 in range(4):
        for b2 in range(4):
            if b1 != b2:
                total += loss[b1 * bsz : (b1 + 1) * bsz, b2 * bsz : (b2 + 1) * bsz].diagonal().sum()
    for blk in (0, 1):
        o = blk * bsz
        total -= lam * floored[o : o + half, o + half : o + bsz].diagonal().sum()
        total -= lam * floored[o + half : o + bsz, o : o + half].diagonal().sum()
    return float(total / len(z))


def test_loss_matches_the_release_block_diagonal_form_for_k2():
    batch = 5
    z = torch.randn(4 * 2 * batch, 7, generator=torch.Generator().manual_seed(3)).double()
    for lam in (0.0, 1.0):
        got = cobra_loss(z, batch, 2, 4, temperature=0.5, opposite_weight=lam).item()
        assert got == pytest.approx(block_diagonal_loss(z, batch, 0.5, lam), rel=1e-9)


def test_opposite_term_is_bounded_below():
    # Antipodal opposites give p ≈ 0, so each (pair, direction) contributes
    # log(0 + 1e-8): 1 image, K = 2, two blocks → 2 pairs · 2 directions over 4 anchors.
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    opp = cobra_loss(e, 1, 2, 2, 0.01, 1.0) - cobra_loss(e, 1, 2, 2, 0.01, 0.0)
    assert opp.item() == pytest.approx(2 * 2 * math.log(LOG_FLOOR) / 4, abs=1e-3)


# -- detectors -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 0)


@pytest.fixture(scope="module")
def fitted_cobra(digits):
    torch.manual_seed(0)
    model = METHODS.create("cobra", epochs=2, train_attack_steps=2, **TINY)
    return model.fit(digits, RunContext(seed=0))


def test_inter_group_attack_pulls_toward_opposite_and_intra_group_pushes_from_positive(fitted_cobra, digits):
    model = fitted_cobra
    b, k, eps = 16, 4, 16 / 255
    model.eps_train, model.train_attack_steps = eps, 5
    gen = torch.Generator().manual_seed(1)
    x = digits.train_x[:b]
    trainer = ContrastiveTrainer(model)
    v1 = trainer.expand_and_augment(x, gen)
    v2 = trainer.expand_and_augment(x, gen)
    perm = torch.tensor([1, 2, 3, 0])  # a derangement: group g is pulled toward group perm[g]
    try:
        a_p, a_n, _ = trainer.training_attacks(v1, v2, b, gen, perm=perm)
    finally:
        model.eps_train, model.train_attack_steps = "auto", 2
    model.eval()
    with torch.no_grad():
        z = lambda t: F.normalize(model.net(t)[1], dim=1)  # noqa: E731
        z1, z2 = z(v1), z(v2)
        rows = torch.arange(k * b)
        opposite = z1[perm[rows // b] * b + rows % b]  # same image, deranged group, in V1
        before_opp = (z(v2) * opposite).sum(1).mean()
        after_opp = (z(a_n) * opposite).sum(1).mean()
        before_pos = (z(v1) * z2).sum(1).mean()
        after_pos = (z(a_p) * z2).sum(1).mean()
    assert after_opp > before_opp + 0.05
    assert after_pos < before_pos - 0.05
    assert (a_p - v1).abs().max() <= eps + 1e-6 and (a_n - v2).abs().max() <= eps + 1e-6


def test_score_is_independent_of_batch_size_and_order(fitted_cobra, digits):
    x = digits.test_x[:24]
    full = fitted_cobra.score(x).detach()
    chunks = torch.cat([fitted_cobra.score(x[i : i + 5]).detach() for i in range(0, 24, 5)])
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(3))
    permuted = fitted_cobra.score(x[perm]).detach()
    assert torch.allclose(full, chunks, atol=1e-5)
    assert torch.allclose(full[perm], permuted, atol=1e-5)
    assert full.std() > 0


def test_surrogate_score_is_within_its_bound_of_the_score(fitted_cobra, digits):
    x = digits.test_x[:16]
    tau, m = 0.05, len(fitted_cobra.bank)
    z, _ = fitted_cobra.group_embeddings(x)
    bound = (z.norm(dim=2) * fitted_cobra.weight_sim).mean(1) * tau * math.log(m)
    gap = (fitted_cobra.score(x) - fitted_cobra.surrogate_score(x, tau)).detach()
    assert (gap >= -1e-5).all() and (gap <= bound.detach() + 1e-5).all()


def test_gradients_reach_the_input(fitted_cobra, digits):
    x = digits.test_x[:6].clone().requires_grad_(True)
    fitted_cobra.score(x).sum().backward()
    assert (x.grad.flatten(1).abs().amax(1) > 0).all()


def test_score_weights_normalise_training_statistics(fitted_cobra, digits):
    # w_k, v_k are 1/|mean| over the training set, so each weighted term has mean ±1
    # there (+1 for the similarity, the sign of the mean logit for the group term).
    sim, h = fitted_cobra.normality_terms(digits.train_x)
    w_sim, w_grp = (sim * fitted_cobra.weight_sim).mean(0), (h * fitted_cobra.weight_group).mean(0)
    assert torch.allclose(w_sim, torch.ones(4), atol=1e-4)
    assert torch.allclose(w_grp.abs(), torch.ones(4), atol=1e-4)
    expected = -(1 + w_grp.sign()).mean().item()
    assert fitted_cobra.score(digits.train_x).mean().item() == pytest.approx(expected, abs=1e-4)
    assert fitted_cobra.bank.shape == (len(digits.train_x), 4, 8)


def test_save_load_round_trip_gives_identical_scores(fitted_cobra, digits, tmp_path):
    path = tmp_path / "cobra.pt"
    save_detector(fitted_cobra, path)
    fresh = METHODS.create("cobra", epochs=2, train_attack_steps=2, **TINY)
    load_detector_state(fresh, path)
    x = digits.test_x[:32]
    assert torch.equal(fresh.score(x), fitted_cobra.score(x))
    info = fitted_cobra.info()
    assert info["weights"] == "random init" and info["test_views"] == 2 and info["train_attack_steps"] == 2
    assert info["eps_train"] == pytest.approx(8 / 255, abs=1e-6)


@pytest.mark.parametrize("method", ["csi", "cobra"])
def test_short_training_lowers_the_loss(method, digits):
    torch.manual_seed(0)
    extra = {"train_attack_steps": 1} if method == "cobra" else {}
    model = METHODS.create(method, epochs=4, **{**TINY, "lr": 0.1}, **extra)
    model.fit(digits, RunContext(seed=0))
    assert model.loss_history[-1] < model.loss_history[0] - 0.05


def test_test_views_are_fixed_and_one_view_is_the_unaugmented_centre_crop():
    from robustad.methods.views import apply_light_aug

    one = METHODS.create("csi", **{**TINY, "test_views": 1, "test_crop_scale": 1.0})
    one.build((1, 28, 28))
    x = torch.rand(3, 1, 28, 28)
    # S = 1 with crop area 1: the view is the image itself (no flip, jitter or crop),
    # up to the float rounding of the jitter's arithmetic with factors 1.
    assert torch.allclose(apply_light_aug(x, one.view_params.expand(3, -1)), x, atol=1e-6)
    centred = METHODS.create("csi", **{**TINY, "test_views": 1})  # default area 0.54
    centred.build((1, 28, 28))
    row = centred.view_params[0]
    assert row[1].item() == pytest.approx(math.sqrt(0.54)) and row[3:5].abs().max() == 0
    assert row[0] == 0 and torch.equal(row[5:], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))
    # S > 1: drawn once from a fixed seed, so two builds agree and the crop area is 0.54.
    a = METHODS.create("csi", **{**TINY, "test_views": 4})
    b = METHODS.create("csi", **{**TINY, "test_views": 4})
    a.build((1, 28, 28))
    b.build((1, 28, 28))
    assert torch.equal(a.view_params, b.view_params)
    assert torch.allclose(a.view_params[:, 1] * a.view_params[:, 2], torch.full((4,), 0.54))


def test_impossible_test_crop_scale_is_a_user_error():
    from robustad.errors import UserError

    with pytest.raises(UserError, match="test_crop_scale"):
        METHODS.create("csi", **{**TINY, "test_crop_scale": 1.5}).build((1, 28, 28))


def test_score_gradient_matches_finite_differences_per_term(fitted_cobra, digits):
    # In float64: the autograd gradient of the score and of each of its two terms
    # (similarity to the bank, group-head logit) matches a central finite difference at
    # pixels inside the box, and the score's gradient is −mean_k of the weighted term
    # gradients, so neither term's gradient can be dropped (e.g. by a detach).
    import copy

    det = copy.deepcopy(fitted_cobra).double().eval()
    g = torch.Generator().manual_seed(0)
    x = (0.05 + 0.9 * (0.7 * digits.test_x[:4].double() + 0.3 * torch.rand(4, 1, 8, 8, generator=g))).detach()

    def terms(t):
        sim, h = det.normality_terms(t)
        return {
            "score": det.score(t),
            "similarity": -(sim * det.weight_sim).mean(1),
            "group": -(h * det.weight_group).mean(1),
        }

    xg = x.clone().requires_grad_(True)
    values = terms(xg)
    grads = {k: torch.autograd.grad(v.sum(), xg, retain_graph=True)[0] for k, v in values.items()}
    assert torch.allclose(grads["score"], grads["similarity"] + grads["group"], atol=1e-12)
    assert grads["group"].abs().max() > 0.05 * grads["score"].abs().max()  # the term matters
    h = 1e-6
    pixels = torch.randperm(64, generator=g)[:6]
    for p in pixels.tolist():
        e = torch.zeros_like(x).flatten(1)
        e[:, p] = h
        e = e.view_as(x)
        with torch.no_grad():
            up, down = terms(x + e), terms(x - e)
        for k in values:
            fd = (up[k] - down[k]) / (2 * h)
            ad = grads[k].flatten(1)[:, p]
            assert torch.allclose(ad, fd, rtol=1e-4, atol=1e-4 * grads[k].abs().max().item()), (k, p)
