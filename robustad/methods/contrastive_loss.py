"""The contrastive loss of CSI and COBRA and its index sets.

L_COBRA (:func:`cobra_loss`: multi-positive NT-Xent plus the opposite-pair term;
CSI's NT-Xent at ``opposite_weight=0``), the per-anchor NT-Xent the training attacks
ascend (:func:`anchored_nt_xent`), and the index helpers of the block layout
(:func:`positive_mask`, :func:`opposite_pairs`, :func:`group_derangement`). Separate
from the model (:mod:`robustad.methods.contrastive`) and the training loop
(:mod:`robustad.methods.contrastive_training`) so the loss can be read, tested and
reused (MSAD's ``log_softmax_offdiag`` in ``feature_knn.py``) on its own.

Layout: a *block* is one view of a batch of B images expanded to its K groups,
group-major (row ``k·B + i`` is image i in group k); several blocks are
concatenated, block b at rows ``b·K·B ...``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

#: added inside the logs of the opposite-pair term, as the public release does, so a
#: term is bounded below by log(1e-8) ≈ -18.4 and cannot dominate the loss
LOG_FLOOR = 1e-8


def positive_mask(batch: int, groups: int, blocks: int) -> Tensor:
    """(N,N) bool, N = blocks·K·B: j is a positive of a when both are the same image in
    the same group, in different blocks (views)."""
    n = blocks * groups * batch
    idx = torch.arange(n)
    within = idx % (groups * batch)  # (group, image) identity inside a block
    block = idx // (groups * batch)
    return (within[:, None] == within[None, :]) & (block[:, None] != block[None, :])


def opposite_pairs(batch: int, groups: int, blocks: tuple[int, ...] = (0, 1)) -> Tensor:
    """(P,2) index pairs (x_i, Υ_k x_i) for i < B, k ≥ 1, inside each of ``blocks``."""
    pairs = []
    for b in blocks:
        off = b * groups * batch
        for k in range(1, groups):
            for i in range(batch):
                pairs.append((off + i, off + k * batch + i))
    return torch.tensor(pairs, dtype=torch.long).view(-1, 2)


def log_softmax_offdiag(z: Tensor, temperature: float) -> Tensor:
    """log p(a → j) = s_aj/τ − log Σ_{l≠a} exp(s_al/τ) for L2-normalised rows of z; (N,N).

    The diagonal (a sample against itself) is excluded from every denominator and
    set to -inf.
    """
    z = F.normalize(z, dim=1)
    sim = z @ z.t() / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    return sim - torch.logsumexp(sim, dim=1, keepdim=True)


def cobra_loss(
    z: Tensor, batch: int, groups: int, blocks: int, temperature: float = 0.5, opposite_weight: float = 1.0
) -> Tensor:
    """L_COBRA: multi-positive NT-Xent plus the opposite-pair term, over N = blocks·K·B anchors.

    ``z``: (N, D) projections in the block layout (not necessarily normalised).

        L = (1/N) [ Σ_a Σ_{p∈P(a)} −log p(a → p)
                    + λ Σ_{(i,k,block)} (log(p(x_i → Υ_k x_i) + 1e-8) + log(p(Υ_k x_i → x_i) + 1e-8)) ]

    P(a) = :func:`positive_mask` (the same image and group in the other blocks), every
    other sample in the denominator. The opposite pairs are those of
    :func:`opposite_pairs`: inside blocks 0 and 1 (V1, V2), image i with each of its
    pseudo-anomalies k ≥ 1. λ = ``opposite_weight``; 0 is plain multi-positive NT-Xent
    (the public release). Returns a scalar.

    Normalisation (the method's description leaves it open; docs/METHODS.md): that of the authors' release
    (``training/contrastive_loss.py``), where the 12 positive diagonals of the 4-block
    similarity matrix and the opposite pairs are summed together and divided by the
    number of anchors once. So each anchor sums over its positives (three in COBRA's
    four blocks, one in CSI's two: CSI's loss is the usual NT-Xent either way), and the
    opposite term weighs (K−1)/(2K) of a per-pair mean (3/8 at K = 4). The pairs are
    those of docs/METHODS.md (image i with each Υ_k x_i); the release's switched-off code pairs the
    two halves of each block, the same set at K = 2. An earlier
    version averaged over positives and over pairs, which at K = 4 and four blocks made
    λ = 1 eight times stronger relative to the positives than the release (3 · 8/3),
    and collapsed training on one Fashion-MNIST class (results/README.md).
    """
    logp = log_softmax_offdiag(z, temperature)
    n = len(z)
    pos = _loss_index(batch, groups, blocks, z.device, "positive_mask")
    pos_sum = -logp.masked_fill(~pos, 0.0).sum()
    if opposite_weight == 0 or groups < 2:
        return pos_sum / n
    pairs = _loss_index(batch, groups, blocks, z.device, "opposite_pairs")
    p = logp.exp()
    a, o = pairs[:, 0], pairs[:, 1]
    opp_sum = (torch.log(p[a, o] + LOG_FLOOR) + torch.log(p[o, a] + LOG_FLOOR)).sum()
    return (pos_sum + opposite_weight * opp_sum) / n


@functools.lru_cache(maxsize=32)
def _loss_index(batch: int, groups: int, blocks: int, device: torch.device, which: str) -> Tensor:
    """:func:`positive_mask` or :func:`opposite_pairs` of a layout, made once per device.

    The same tensors as building them at every step (they depend on the layout only),
    without a host-to-device copy and a Python loop per training step on a GPU.
    Callers must not modify them in place.
    """
    if which == "positive_mask":
        return positive_mask(batch, groups, blocks).to(device)
    return opposite_pairs(batch, groups, tuple(range(min(blocks, 2)))).to(device)


def anchored_nt_xent(z_anchor: Tensor, z_other: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Per-anchor NT-Xent against a fixed set: −log softmax_j(⟨a, o_j⟩/τ)[target]; (N,).

    Each anchor's loss depends on that anchor alone, so a per-sample attack on the
    anchors is well defined (the training attacks A_P and A_N).
    """
    sim = F.normalize(z_anchor, dim=1) @ F.normalize(z_other, dim=1).t() / temperature
    return F.cross_entropy(sim, target, reduction="none")


def group_derangement(groups: int, generator: torch.Generator) -> Tensor:
    """A random permutation of 0..K-1 with no fixed point (for K = 2, the swap)."""
    while True:
        perm = torch.randperm(groups, generator=generator)
        if not (perm == torch.arange(groups)).any():
            return perm
