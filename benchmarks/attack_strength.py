"""Attack benchmark 3: PGD with 10, 100 and 1000 steps against ``aa`` on Deep SVDD.

Deep SVDD with the quick preset's parameters, L∞ ε = 8/255, attacks with the
budgets of ``--preset`` (``aa``: its ``attack_params``), PGD at 10/100/1000 steps.
Digits uses the full test set; Fashion-MNIST a balanced test subset
(``--fmnist-subset``, default 200) and ``--fmnist-epochs`` (default 5) of training
to fit a 2-core CPU. Prints AUROC (%) and wall time per attack.

    nice -n 10 python benchmarks/attack_strength.py [--datasets digits,fmnist] [--classes 0]
"""

from __future__ import annotations

import argparse

import torch
from attack_common import balanced_subset, print_table, timed, trained_deepsvdd

import robustad as ra
from robustad.config import resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="digits,fmnist")
    ap.add_argument("--classes", default="0")
    ap.add_argument("--steps", default="10,100,1000", help="PGD step counts")
    ap.add_argument("--preset", default="quick", help="budgets of aa (and apgd) from this preset")
    ap.add_argument("--fmnist-subset", type=int, default=200)
    ap.add_argument("--fmnist-epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = resolve(args.preset)["attack_params"]
    threat = ra.ThreatModel("Linf", 8 / 255)
    attacks = [(f"pgd-{k}", "pgd", {"steps": int(k)}) for k in args.steps.split(",")]
    attacks += [(f"apgd ({args.preset})", "apgd", params.get("apgd", {})),
                (f"aa ({args.preset})", "aa", params.get("aa", {}))]  # fmt: skip
    rows = []
    for dataset in args.datasets.split(","):
        fm = dataset == "fmnist"
        for c in [int(c) for c in args.classes.split(",")]:
            det, data = trained_deepsvdd(dataset, c, epochs=args.fmnist_epochs if fm else None)
            x, y = balanced_subset(data, args.fmnist_subset if fm else None)
            rows.append([f"{dataset}/{c}", len(x), "clean", 100 * ra.auroc(det.score_batched(x), y), 0.0])
            for label, name, p in attacks:
                x_adv, t = timed(ra.create_attack(name, **p).perturb, det, x, y, threat)
                rows.append([f"{dataset}/{c}", len(x), label, 100 * ra.auroc(det.score_batched(x_adv), y), t])
                print(*rows[-1], flush=True)
    print(f"Deep SVDD (quick preset), L∞ ε=8/255, {torch.get_num_threads()} thread(s); "
          f"aa = {params.get('aa')}, apgd = {params.get('apgd')}")  # fmt: skip
    print_table(["model", "n", "attack", "AUROC %", "seconds"], rows)


if __name__ == "__main__":
    main()
