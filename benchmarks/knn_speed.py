"""Cost of one attack step through the exact k-NN score: dense backward vs selected rows.

``knn.knn_distances`` with autograd on searches under ``no_grad`` and recomputes only
the k selected squared distances with autograd. The reference here is the former
way: the top-k of the dense (queries × bank) squared-distance matrix built with
autograd, so the backward pass multiplies a dense (queries × bank) gradient by the
bank, as costly as the search. Both give the same values (checked exactly) and the
same input gradient (checked to round-off); this script prints the median time of a
forward + backward pass of each, and of the search alone.

Default sizes are the fmnist preset's PatchCore (ResNet-18 at 28 px: a 4×4 layer2
grid, so 500 images × 16 = 8,000 patches of 1,024 values; coreset 10 % of 6,000 × 16
= 9,600 bank rows; k = 1). Time it on an idle machine: on a loaded one it measures
the load.

    python benchmarks/knn_speed.py                      # the fmnist preset's sizes
    python benchmarks/knn_speed.py --queries 512 --bank 1000 --dim 512 --k 2  # ZARND-like
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robustad.methods import knn


def dense_reference(queries, bank, k):
    """The former way: top-k of the dense matrix built with autograd."""
    d2, index = torch.topk(knn.squared_distances(queries, bank), k, dim=1, largest=False)
    return d2, index


def step(fn, queries, bank, k, grad=True):
    q = queries.clone().requires_grad_(grad)
    start = time.perf_counter()
    d2, index = fn(q, bank, k)
    if grad:
        (g,) = torch.autograd.grad(d2.sum(), q)
    else:
        g = None
    return time.perf_counter() - start, d2.detach(), index, g


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=8000)
    parser.add_argument("--bank", type=int, default=9600)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    queries, bank = torch.randn(args.queries, args.dim), torch.randn(args.bank, args.dim)
    selected = lambda q, b, k: knn.knn_distances(q, b, k, squared=True)  # noqa: E731
    ways = {
        "dense backward (former)": (dense_reference, True),
        "selected rows (knn_distances)": (selected, True),
        "search only, no autograd": (selected, False),
    }
    times = {name: [] for name in ways}
    results = {}
    for _ in range(args.repeats):
        for name, (fn, grad) in ways.items():
            dt, d2, index, g = step(fn, queries, bank, args.k, grad)
            times[name].append(dt)
            results[name] = (d2, index, g)
    ref, new = results["dense backward (former)"], results["selected rows (knn_distances)"]
    assert torch.equal(ref[0], new[0]) and torch.equal(ref[1], new[1]), "values or neighbours differ"
    gap = float((ref[2] - new[2]).abs().max() / ref[2].abs().max())
    print(f"{args.queries} queries × {args.bank} bank rows × {args.dim} dims, k = {args.k}, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}")  # fmt: skip
    base = statistics.median(times["dense backward (former)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:32s} {med:7.3f} s  ({base / med:.2f}× the former)")
    print(f"  same values and neighbours; largest input-gradient difference {gap:.1e} (relative)")


if __name__ == "__main__":
    main()
