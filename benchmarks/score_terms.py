"""Which term of the CSI/COBRA score carries its robustness? Attack each term alone.

The score of CSI and COBRA (docs/METHODS.md) is −mean_k (w_k · max_m ⟨f_k(x), a_{m,k}⟩ + v_k · H(x)[k]): a
contrastive *similarity* term and a *group-head* (rotation-classifier) term. For every
CSI/COBRA model in a results store this prints the clean and PGD AUROC of each term
used alone as the anomaly score (the attack optimises that term), next to the full
score's, so one can see which term an attack breaks and which one holds.

With ``--check-attacks`` it also attacks the full score with adaptive APGD-50 (the
log-sum-exp surrogate of the max over the bank) and the black-box Square-1000, to
check that PGD is not held back by the score's shape (gradient masking).

    python benchmarks/score_terms.py results/fmnist/bench.sqlite [--steps 20] [--subset 1000]
        [--classes 0] [--check-attacks]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from attack_common import balanced_subset, print_table

import robustad as ra
from robustad.benchmark.leaderboard import current_fits
from robustad.benchmark.store import Store
from robustad.methods.base import Detector, load_detector_state


class ScoreTerm(Detector):
    """One term of a ShiftedContrastiveDetector's score (or all of it), as a detector."""

    def __init__(self, detector, term: str):
        super().__init__()
        self.detector, self.term = detector, term

    def score(self, x: torch.Tensor) -> torch.Tensor:
        d = self.detector
        sim, h = d.normality_terms(x)
        sim, h = sim * d.weight_sim, h * d.weight_group
        # "full" is the detector's own score formula, on the same terms
        return -{"similarity": sim, "group head": h, "full": sim + h}[self.term].mean(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--subset", type=int, default=1000, help="balanced test images per model")
    ap.add_argument("--classes", default=None, help="comma-separated normal classes (default: all)")
    ap.add_argument("--check-attacks", action="store_true", help="also adaptive APGD-50 and Square-1000")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threat = ra.ThreatModel("Linf", 8 / 255)
    rows = []
    with Store(args.store) as store:
        fits = [f for f in current_fits(store).values() if f["method"] in ("csi", "cobra")]
    if args.classes is not None:
        fits = [f for f in fits if f["normal_class"] in {int(c) for c in args.classes.split(",")}]
    extra = [
        ("apgd-50 adaptive", "apgd", {"steps": 50, "adaptive": True}),
        ("square-1000", "square", {"queries": 1000}),
    ]
    for f in sorted(fits, key=lambda f: (f["method"], f["normal_class"])):
        cfg = f["config"]
        det = ra.create_method(cfg["method"], **cfg["params"])
        load_detector_state(det, Path(args.store).parent / "checkpoints" / f"{f['job_id']}.pt")
        data = ra.load_dataset(cfg["dataset"], cfg["normal_class"], **cfg.get("data_params", {}))
        x, y = balanced_subset(data, args.subset)
        for term in ("full", "similarity", "group head"):
            model = ScoreTerm(det, term).eval()
            clean = 100 * ra.auroc(model.score_batched(x), y)
            x_adv = ra.create_attack("pgd", steps=args.steps).perturb(model, x, y, threat)
            adv = 100 * ra.auroc(model.score_batched(x_adv), y)
            head = [cfg["method"], cfg["normal_class"], term]
            rows.append([*head, f"pgd-{args.steps}", round(clean, 1), round(adv, 1)])
            print(*rows[-1], flush=True)
            for label, name, params in extra if args.check_attacks and term == "full" else []:
                x_adv = ra.create_attack(name, **params).perturb(det, x, y, threat)
                adv = 100 * ra.auroc(det.score_batched(x_adv), y)
                rows.append([*head, label, round(clean, 1), round(adv, 1)])
                print(*rows[-1], flush=True)
    print(f"L∞ ε = 8/255, {args.subset} balanced test images per model")
    print_table(["method", "class", "score term", "attack", "clean AUROC %", "attacked AUROC %"], rows)


if __name__ == "__main__":
    main()
