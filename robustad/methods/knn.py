"""Nearest neighbours in a memory bank, differentiable w.r.t. the queries.

One module for every bank-based score (PatchCore, ZARND, MSAD): exact distances,
computed out of place and chunked over the bank, so that the score is the one the
attack differentiates; a smooth surrogate (soft-min over the bank, soft-max over
patches) for the adaptive attacks; and the seeded greedy k-center coresets that
PatchCore subsamples its bank with.

Why out of place and with a floor before the square root: anomalib's
``euclidean_dist`` ends in an in-place ``sqrt_`` that breaks autograd, and even out
of place d/dx √0 is infinite (a query equal to a bank entry, e.g. a training image).
``sqrt(max(d², 1e-12))`` has a finite gradient everywhere and changes distances
by at most 1e-6.

Banks too large for a dense distance matrix (PatchCore at 224 px: millions of
patches) may find the neighbours with faiss (``faiss-cpu``, optional): the
*indices* come from an exact ``IndexFlatL2`` search, the distances to those
neighbours are recomputed here in torch so gradients still flow, and the result
equals :func:`knn_distances` (tested when faiss is installed).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: floor under squared distances before the square root (a finite gradient at 0)
SQRT_FLOOR = 1e-12


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """(n, m) squared Euclidean distances, ‖a‖² + ‖b‖² − 2a·b, out of place.

    The floor at 0 only removes round-off below zero: there a and b coincide and the
    true gradient, 2(a − b), is zero as well.
    """
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min(0.0)


def knn_distances(
    queries: Tensor, bank: Tensor, k: int = 1, squared: bool = False, chunk: int = 16384
) -> tuple[Tensor, Tensor]:
    """Distances to the ``k`` nearest bank rows, ascending, and their indices.

    Exact (no approximate index); the bank is processed in chunks of ``chunk`` rows
    with a running top-k, so memory is O(n · (chunk + k)). Gradients flow to the
    queries (and the bank) through the selected distances.

    With autograd on, the search runs under ``no_grad`` and only the ``k`` selected
    squared distances are recomputed with autograd (values unchanged): the gradient
    of a top-k reaches only the selected entries anyway, and backpropagating through
    the dense (n, bank) matrix cost as much as the search itself (about 2× faster
    PatchCore attacks, ``benchmarks/knn_speed.py``).
    """
    if k > len(bank):
        raise ValueError(f"k = {k} neighbours requested from a bank of {len(bank)} rows")
    with torch.no_grad():
        d2, index = _nearest_squared(queries, bank, k, chunk)
    if torch.is_grad_enabled() and (queries.requires_grad or bank.requires_grad):
        selected = distances_to(queries, bank, index, squared=True)
        d2 = d2 + (selected - selected.detach())  # the search's values, the selection's gradient
    return (d2 if squared else d2.clamp_min(SQRT_FLOOR).sqrt()), index


def _nearest_squared(queries: Tensor, bank: Tensor, k: int, chunk: int) -> tuple[Tensor, Tensor]:
    """The exact search: squared distances to the k nearest rows, by chunks of the bank."""
    best_d: Tensor | None = None
    best_i: Tensor | None = None
    for start in range(0, len(bank), chunk):
        d2 = squared_distances(queries, bank[start : start + chunk])
        kk = min(k, d2.shape[1])
        d, i = torch.topk(d2, kk, dim=1, largest=False)
        i = i + start
        if best_d is not None:
            d, j = torch.topk(torch.cat([best_d, d], 1), k, dim=1, largest=False)
            i = torch.gather(torch.cat([best_i, i], 1), 1, j)
        best_d, best_i = d, i
    assert best_d is not None and best_i is not None
    return best_d, best_i


def distances_to(queries: Tensor, bank: Tensor, index: Tensor, squared: bool = False) -> Tensor:
    """Distances from each query to given bank rows (``index``: (n, k)), differentiable.

    Used after a neighbour search that returns indices only (faiss, or a stored
    neighbour list), so that gradients still reach the queries."""
    diff = queries[:, None, :] - bank[index]
    d2 = (diff * diff).sum(-1)
    return d2 if squared else d2.clamp_min(SQRT_FLOOR).sqrt()


def faiss_knn_distances(
    queries: Tensor, bank: Tensor, k: int = 1, squared: bool = False
) -> tuple[Tensor, Tensor]:
    """:func:`knn_distances` with the neighbour search done by faiss (exact flat index).

    Needs ``faiss-cpu`` (``pip install robustad[faiss]``); raises ImportError otherwise.
    """
    import faiss  # noqa: PLC0415  (optional dependency)

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank.detach().float().cpu().contiguous().numpy())
    _, idx = index.search(queries.detach().float().cpu().contiguous().numpy(), k)
    idx = torch.from_numpy(idx).to(queries.device)
    d = distances_to(queries, bank, idx, squared)
    order = d.argsort(dim=1)  # faiss ranks by float32 distances; re-rank in torch's precision
    return torch.gather(d, 1, order), torch.gather(idx, 1, order)


def soft_min(values: Tensor, temperature: float, dim: int = -1) -> Tensor:
    """−τ · logsumexp(−v/τ): a smooth minimum, ≤ min(v), → min(v) as τ → 0."""
    return -temperature * torch.logsumexp(-values / temperature, dim=dim)


def soft_max(values: Tensor, temperature: float, dim: int = -1) -> Tensor:
    """τ · logsumexp(v/τ): a smooth maximum, ≥ max(v), → max(v) as τ → 0."""
    return temperature * torch.logsumexp(values / temperature, dim=dim)


def soft_knn_distance(
    queries: Tensor, bank: Tensor, temperature: float, squared: bool = False, chunk: int = 16384
) -> Tensor:
    """The smooth surrogate of the nearest distance: soft-min over the whole bank.

    Every bank row contributes a gradient (weighted by its softmax weight), so the
    attack's direction does not jump when the nearest neighbour changes."""
    parts = []
    for start in range(0, len(bank), chunk):
        d2 = squared_distances(queries, bank[start : start + chunk])
        parts.append(d2 if squared else d2.clamp_min(SQRT_FLOOR).sqrt())
    return soft_min(torch.cat(parts, 1), temperature, dim=1)


# -- coresets -------------------------------------------------------------------------
def _farthest_point_loop(
    features: Tensor, first_distances: Tensor, n_select: int, start: list[int]
) -> Tensor:
    """Greedy k-center: repeatedly take the point farthest from the selection so far."""
    selected = list(start)
    dist = first_distances.clone()
    for _ in range(n_select - len(start)):
        i = int(torch.argmax(dist))
        selected.append(i)
        d = (features - features[i]).pow(2).sum(1).sqrt()
        dist = torch.minimum(dist, d)
    return torch.tensor(selected, dtype=torch.long)


@torch.no_grad()
def approximate_greedy_coreset(
    features: Tensor, n_select: int, generator: torch.Generator, proj_dim: int = 128, n_starts: int = 10
) -> Tensor:
    """The PatchCore authors' coreset: indices of ``n_select`` rows of ``features``.

    Rows are projected by a random bias-free linear map to ``proj_dim`` dimensions
    (uniform(−1/√D, 1/√D), PyTorch's Linear initialisation, drawn from ``generator``).
    Each point's initial distance is its mean distance to ``n_starts`` random starting
    points, which are not selected unless the loop picks them; then the farthest
    point is selected ``n_select`` times.
    """
    n, dim = features.shape
    n_select = max(1, min(int(n_select), n))
    bound = 1.0 / math.sqrt(dim)
    if proj_dim and proj_dim < dim:
        w = (torch.rand(dim, proj_dim, generator=generator, dtype=features.dtype) * 2 - 1) * bound
        z = features @ w.to(features.device)
    else:
        z = features
    starts = torch.randperm(n, generator=generator)[: min(n_starts, n)]
    first = torch.cdist(z, z[starts]).mean(1)
    return _farthest_point_loop(z, first, n_select, [])


def jl_dimension(n: int, eps: float = 0.9) -> int:
    """Johnson–Lindenstrauss target dimension (scikit-learn's formula, as anomalib uses)."""
    return int(4 * math.log(max(n, 2)) / (eps**2 / 2 - eps**3 / 3))


@torch.no_grad()
def kcenter_greedy_coreset(features: Tensor, n_select: int, generator: torch.Generator) -> Tensor:
    """anomalib's k-center-greedy coreset: indices of ``n_select`` rows of ``features``.

    A sparse random projection to the Johnson–Lindenstrauss dimension (density
    1/√D, entries ±√(1/density)/√d), then one uniformly random first index, which is
    selected, and ``n_select − 1`` farthest-point steps. Every draw is seeded.
    """
    n, dim = features.shape
    n_select = max(1, min(int(n_select), n))
    d = jl_dimension(n)
    if d < dim:
        density = 1.0 / math.sqrt(dim)
        keep = torch.rand(dim, d, generator=generator) < density
        sign = torch.where(torch.rand(dim, d, generator=generator) < 0.5, -1.0, 1.0)
        w = (keep * sign * math.sqrt(1.0 / density) / math.sqrt(d)).to(features)
        z = features @ w
    else:
        z = features
    first = int(torch.randint(n, (1,), generator=generator))
    dist = (z - z[first]).pow(2).sum(1).sqrt()
    return _farthest_point_loop(z, dist, n_select, [first])
