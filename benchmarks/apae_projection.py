"""How much APAE's approximate projection changes its score: a fitted model scored with K
inner steps of latent gradient descent for several K (K = 0 is the plain autoencoder).

    python benchmarks/apae_projection.py --out results/fmnist [--steps 0,5,50]
    python benchmarks/apae_projection.py --out results/fmnist --steps 0,5,50,200 \
        --attack-steps 100 --images 100


Reads the ``apae`` fit of the store in ``--out`` (its parameters and test protocol) and
its checkpoint from ``--out/checkpoints`` (checkpoints are not committed: run where
``bench run`` wrote them), scores the same test images with each K, and prints the
clean AUROC per K and how closely the scores of one K follow another's (Pearson
correlation, median relative change). With ``--attack-steps N`` it also attacks each K's
score with PGD-N (one restart, L∞ 8/255, both classes attacked, the gradient unrolled
through all K inner steps as in ``bench run``) on a seeded balanced subset of
``--images`` test images (an unrolled step costs about K times a plain one, so large K
needs a small subset), and prints the attacked AUROC per K. Used in results/README.md ("fmnist/") to read
APAE's attacked AUROC: with few inner steps the score is nearly the plain
reconstruction error.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from robustad.benchmark.metrics import auroc
from robustad.benchmark.runner import attack_test_set, load_detector_state
from robustad.benchmark.store import Store
from robustad.datasets import load_dataset
from robustad.registry import METHODS
from robustad.threat import ThreatModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a bench run folder with an apae fit and its checkpoint")
    parser.add_argument("--steps", default="0,5,50", help="inner step counts K to score with")
    parser.add_argument("--attack-steps", type=int, default=0, help="PGD steps per K (0: clean scores only)")
    parser.add_argument("--images", type=int, default=None, help="test subset size (default: the fit's)")
    args = parser.parse_args()
    out = Path(args.out)
    with Store(out / "bench.sqlite") as store:
        fits = [r for r in store.jobs(kind="fit", status="done") if r["method"] == "apae"]
    if not fits:
        raise SystemExit(f"no finished apae fit in {out / 'bench.sqlite'}")
    fit = fits[0]
    ckpt = out / "checkpoints" / f"{fit['job_id']}.pt"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} is missing: run this where bench run wrote the checkpoints")
    data_params = dict(fit["config"].get("data_params", {}))
    if args.images:
        data_params["test_subset"] = args.images
    data = load_dataset(fit["dataset"], fit["normal_class"], None, **data_params)
    params = fit["config"]["params"]
    print(f"{fit['job_id']}: apae fitted with K = {params['inner_steps']}, "
          f"{fit['dataset']} class {fit['normal_class']}, {len(data.test_y)} test images")  # fmt: skip
    scores = {}
    for k in (int(s) for s in args.steps.split(",")):
        det = load_detector_state(METHODS.create("apae", **{**params, "inner_steps": k}), ckpt).eval()
        scores[k] = det.score_batched(data.test_x).detach().numpy()
        line = f"K = {k:4d}: clean AUROC {100 * auroc(torch.from_numpy(scores[k]), data.test_y):.2f}"
        if args.attack_steps:
            start = time.perf_counter()
            threat = ThreatModel("Linf", 8 / 255, "both")
            pgd = {"steps": args.attack_steps, "restarts": 1}
            adv, _ = attack_test_set(det, "pgd", pgd, threat, data, seed=0, batch_size=50, device="cpu")
            line += (f", PGD-{args.attack_steps} AUROC {100 * auroc(torch.from_numpy(adv), data.test_y):.2f}"
                     f" ({time.perf_counter() - start:.0f} s)")  # fmt: skip
        print(line, flush=True)
    ks = sorted(scores)
    for a, b in zip(ks, ks[1:]):
        corr = np.corrcoef(scores[a], scores[b])[0, 1]
        change = np.median(np.abs(scores[b] - scores[a]) / np.abs(scores[a]))
        print(f"K = {a} → {b}: correlation {corr:.4f}, median relative change {change:.3f}")


if __name__ == "__main__":
    main()
