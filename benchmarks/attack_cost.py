"""Attack benchmark 1: the cost of an attack step against its floor.

PGD with 50 steps on a trained Deep SVDD (digits, quick preset), timed, divided by
50 × the time of one forward+backward pass of ``score`` on the same batch
(``objective_and_grad``). The target (docs/THREAT_MODEL.md, "Cost") is ≤ 1.15. APGD-50 for comparison.
Runs are interleaved, after a warm-up; the headline is the ratio of the minimum
process CPU times over ``--repeats`` runs (one thread), wall-time ratios beside it.

    nice -n 10 python benchmarks/attack_cost.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from attack_common import print_table, timed, trained_deepsvdd

import robustad as ra
from robustad.attacks.base import objective_and_grad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    det, data = trained_deepsvdd("digits", 0)
    x, y = data.test_x, data.test_y
    threat = ra.ThreatModel("Linf", 8 / 255)

    # The floor is measured on a random point of the ε-ball, the kind of batch the
    # attack evaluates: clean digits are mostly exact zeros and run ~15% faster
    # through the network than perturbed images (measured), which would bias the ratio.
    x_ball = threat.random_start(x, torch.Generator().manual_seed(0))

    def floor_once(batch=x_ball):
        for _ in range(args.steps):
            objective_and_grad(det.score, batch, y)

    attacks = {name: ra.create_attack(name, steps=args.steps) for name in ("pgd", "apgd")}
    floor_once()  # warm-up (allocator, kernels)
    wall: dict[str, list[float]] = {"floor": [], "floor (clean x)": [], **{n: [] for n in attacks}}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    # Interleaved, minimum over repeats: on a shared machine other processes only add
    # time. Process CPU time (one thread) is the less disturbed measure; wall time too.
    jobs = {"floor": floor_once, "floor (clean x)": lambda: floor_once(x)}
    jobs.update({n: (lambda a=a: a.perturb(det, x, y, threat)) for n, a in attacks.items()})
    for _ in range(args.repeats):
        for name, job in jobs.items():
            c0 = time.process_time()
            wall[name].append(timed(job)[1])
            cpu[name].append(time.process_time() - c0)
    rows = [[f"{n}-{args.steps}", len(x), min(cpu[n]), min(cpu["floor"]), min(cpu[n]) / min(cpu["floor"]),
             min(wall[n]) / min(wall["floor"]),
             statistics.median(wall[n]) / statistics.median(wall["floor"]),
             min(cpu[n]) / min(cpu["floor (clean x)"])] for n in attacks]  # fmt: skip
    print(f"Deep SVDD on digits class 0, {len(x)} test images, {torch.get_num_threads()} thread(s)")
    print_table(["attack", "batch", "attack CPU s", f"{args.steps}×(fwd+bwd) CPU s", "ratio CPU",
                 "ratio wall (min)", "ratio wall (median)", "ratio CPU vs clean-x floor"], rows)  # fmt: skip


if __name__ == "__main__":
    main()
