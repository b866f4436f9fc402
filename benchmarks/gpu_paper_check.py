"""The ``paper`` preset on one GPU, within about 8 minutes: what fits, and what the full protocol costs.

On Fashion-MNIST class 0 (all 6,000 training images), with the ``paper`` preset's
CSI and COBRA (ResNet-18, S = 10 test views, K = 4 rotations, batch 64, bf16 autocast
and channels-last training on CUDA; score and attacks in float32):

1. CSI for as many epochs as fit in ``--train-seconds``: after each epoch the seconds
   per epoch are measured (the first epoch, with its warm-up costs, counts only until
   a second one is timed), and training stops when the next epoch would not fit. The
   preset's warm-up and cosine schedule are rescaled to the epochs that fit, so the
   model is annealed, not cut off mid-schedule. Then the bank and weights, and the
   clean AUROC on ``--test-subset`` (2,000) balanced test images.
2. COBRA for two epochs of its preset schedule (10-step training attacks), timed
   (one only if a second would take it past ``--cobra-seconds``), and its clean AUROC.
3. PGD-``--pgd-steps`` (100) on CSI over the same test images (L∞ ε = 8/255, both
   sides attacked, as the runner does); fewer images if the rest of the time budget
   (``--budget-seconds``, measured from the start) would not hold them, which is
   printed. Then the same on COBRA if time is left.
4. The extrapolated wall time of the full paper protocol (the preset's 100 epochs,
   PGD-1000 and aa with APGD 100 × 5 restarts per member and Square 5,000 queries on
   all 10,000 test images) for one class and for all ten, from the measured seconds
   per epoch and per image per attack step. DeepSVDD is not included (a small network).

    python benchmarks/gpu_paper_check.py [--train-seconds 120] [--json OUT.json]
    OMP_NUM_THREADS=1 python benchmarks/gpu_paper_check.py --tiny   # CPU: checks the script runs

``--tiny``: a few training and test images, one test view, two short epochs per
method, two PGD steps; the figures then say nothing about the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robustad.benchmark.metrics import at_least_clean, attack_metrics, auroc
from robustad.benchmark.runner import (
    attack_test_set,
    dataset_eps,
    load_config_dataset,
    resolve_device,
    seed_everything,
)
from robustad.config import resolve
from robustad.datasets import test_subset_of
from robustad.methods.base import RunContext
from robustad.registry import METHODS
from robustad.threat import ThreatModel

START = time.perf_counter()
#: the paper protocol's test set (Fashion-MNIST test split) and attack budgets, read
#: from the preset where it states them
FULL_TEST = 10_000


def now() -> float:
    return time.perf_counter() - START


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def say(msg: str) -> None:
    print(f"[{now():7.1f} s] {msg}", flush=True)


class EpochBudget:
    """``epoch_plan`` of a detector: the total epochs that fit in ``seconds`` of training.

    Seconds per epoch: the mean of the epochs after the first once there is one (the
    first carries cuDNN autotuning and allocator warm-up), the first epoch's until then.
    Stops (returns the epochs done) when the next epoch would not fit.
    """

    def __init__(self, seconds: float, cap: int):
        self.seconds, self.cap, self.times = seconds, cap, []

    def per_epoch(self) -> float:
        return float(np.mean(self.times[1:])) if len(self.times) > 1 else self.times[0]

    def __call__(self, done: int, seconds: float) -> int:
        self.times.append(seconds)
        elapsed, per = sum(self.times), self.per_epoch()
        if elapsed + per > self.seconds:
            return done
        return min(self.cap, done + int((self.seconds - elapsed) // per))


class EpochTimes:
    """``epoch_plan`` that records the seconds of each epoch and keeps ``epochs`` in all,
    or stops early when the next epoch would take the training past ``seconds``."""

    def __init__(self, epochs: int, seconds: float = math.inf):
        self.epochs, self.seconds, self.times = epochs, seconds, []

    def __call__(self, done: int, seconds: float) -> int:
        self.times.append(seconds)
        per = float(np.mean(self.times[1:])) if len(self.times) > 1 else self.times[0]
        return done if sum(self.times) + per > self.seconds else self.epochs


def timed_fit(name: str, params: dict, plan, data, device: str, seed: int):
    """Fit with ``plan`` as the epoch plan; returns the detector, fit seconds, score-statistics seconds."""
    seed_everything(seed)
    det = METHODS.create(name, **params)
    det.epoch_plan = plan
    last_epoch_end = []

    def progress(step, total, logs):  # the end of each epoch, after its loss is read (a sync)
        last_epoch_end.append(time.perf_counter())
        say(f"{name} epoch {step}/{total} loss {logs['loss']:.4f}")

    sync(device)
    t0 = time.perf_counter()
    det.fit(data, RunContext(device=device, seed=seed, progress=progress))
    sync(device)
    t1 = time.perf_counter()
    if len(plan.times) < len(det.loss_history):  # the last epoch, when no plan call followed it
        plan.times.append(last_epoch_end[-1] - (last_epoch_end[-2] if len(last_epoch_end) > 1 else t0))
    return det, t1 - t0, t1 - last_epoch_end[-1]


def clean_scores(det, data, batch: int, device: str) -> tuple[np.ndarray, float]:
    sync(device)
    t0 = time.perf_counter()
    s = det.score_batched(data.test_x, batch).numpy().astype(np.float64)
    sync(device)
    return s, time.perf_counter() - t0


def grad_step_seconds(det, data, batch: int, device: str) -> float:
    """Seconds of one forward and backward pass of the score per image (after a warm-up pass)."""
    x = data.test_x[:batch].to(device)
    for _ in range(2):
        sync(device)
        t0 = time.perf_counter()
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(det.score(xr).sum(), xr)
        sync(device)
    return (time.perf_counter() - t0) / len(x)


def attack(det, data, clean: np.ndarray, steps: int, eps: float, batch: int, device: str, seed: int):
    """PGD as the runner runs it (per-sample random starts, best iterate, at least the clean point)."""
    params = {"steps": steps, "restarts": 1}
    sync(device)
    t0 = time.perf_counter()
    adv, _ = attack_test_set(det, "pgd", params, ThreatModel("Linf", eps), data, seed, batch, device)
    sync(device)
    seconds = time.perf_counter() - t0
    labels = data.test_y.numpy()
    m = attack_metrics(clean, at_least_clean(clean, adv, labels), labels)
    return m["adv_auroc"], seconds


def subset_with_clean(det, data, clean: np.ndarray, n: int, batch: int, seed: int = 1):
    """A balanced ``n``-image subset of ``data`` and the clean scores of its images."""
    if n >= len(data.test_y):
        return data, clean
    sub = test_subset_of(data, n, seed)
    return sub, det.score_batched(sub.test_x, batch).numpy().astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normal-class", type=int, default=0)
    ap.add_argument("--train-seconds", type=float, default=120.0, help="CSI's training time budget")
    ap.add_argument("--budget-seconds", type=float, default=420.0, help="the whole run's, from the start")
    ap.add_argument("--test-subset", type=int, default=2000)
    ap.add_argument("--pgd-steps", type=int, default=100)
    ap.add_argument("--cobra-epochs", type=int, default=2)
    ap.add_argument("--cobra-seconds", type=float, default=150.0, help="COBRA stops before passing these")
    ap.add_argument("--eval-batch", type=int, default=128, help="images per attack batch (× 40 views)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--tiny", action="store_true", help="a few images, short epochs, 2 PGD steps (CPU check)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    overrides: dict = {
        "classes": [args.normal_class],
        "device": device,
        "data_root": args.data_root,
        "dataset_params": {"fmnist": {"test_subset": args.test_subset}},
    }
    csi_cap = None
    if args.tiny:
        small = {"max_train": 4, "test_views": 1}
        overrides["method_params"] = {"csi": small, "cobra": {**small, "train_attack_steps": 1}}
        overrides["dataset_params"]["fmnist"]["test_subset"] = args.test_subset = 8
        args.pgd_steps, csi_cap = 2, 2
    cfg = resolve("paper", overrides=overrides)
    preset = resolve("paper")  # the unreduced protocol, for the extrapolation
    csi_p, cobra_p = cfg["method_params"]["csi"], cfg["method_params"]["cobra"]
    (eps,) = dataset_eps(cfg, "fmnist")
    say(
        f"device {device} ({torch.cuda.get_device_name(device) if device.startswith('cuda') else 'no GPU'}), "
        f"torch {torch.__version__}, cudnn.benchmark {torch.backends.cudnn.benchmark}, "
        f"conv TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 {torch.backends.cuda.matmul.allow_tf32}"
        + ("  [--tiny: figures say nothing about the GPU]" if args.tiny else "")
    )
    data = load_config_dataset(cfg, "fmnist", args.normal_class)
    n_train = min(len(data.train_x), csi_p.get("max_train") or len(data.train_x))
    say(f"fmnist class {args.normal_class}: {n_train} training images, {len(data.test_y)} test images "
        f"({int((data.test_y == 0).sum())} normal); eps {eps:.5f}")  # fmt: skip
    out: dict = {"device": device, "tiny": args.tiny, "normal_class": args.normal_class}

    # 1. CSI within the training budget
    budget = EpochBudget(args.train_seconds, csi_cap or csi_p["epochs"])
    csi, csi_fit_s, csi_stats_s = timed_fit("csi", csi_p, budget, data, device, args.seed)
    csi_epochs = len(csi.loss_history)
    csi_epoch_s = budget.per_epoch() if len(budget.times) > 1 else budget.times[0]
    csi_clean, csi_clean_s = clean_scores(csi, data, args.eval_batch, device)
    labels = data.test_y.numpy()
    out["csi"] = {
        "epochs": csi_epochs, "fit_s": csi_fit_s, "epoch_s": csi_epoch_s, "first_epoch_s": budget.times[0],
        "stats_s": csi_stats_s, "clean_auroc": auroc(csi_clean, labels), "clean_score_s": csi_clean_s,
        "training_speedups": csi.info().get("training_speedups"),
    }  # fmt: skip
    say(f"CSI: {csi_epochs} epochs in {csi_fit_s:.1f} s ({csi_epoch_s:.2f} s/epoch after the first, "
        f"first {budget.times[0]:.2f} s; bank and weights {csi_stats_s:.1f} s); "
        f"clean AUROC {100 * out['csi']['clean_auroc']:.1f} ({csi_clean_s:.1f} s to score)")  # fmt: skip

    # 2. COBRA, two epochs of the preset's schedule
    times = EpochTimes(args.cobra_epochs, args.cobra_seconds)
    cobra, cobra_fit_s, cobra_stats_s = timed_fit("cobra", cobra_p, times, data, device, args.seed)
    cobra_epoch_s = float(np.mean(times.times[1:])) if len(times.times) > 1 else times.times[0]
    cobra_clean, _ = clean_scores(cobra, data, args.eval_batch, device)
    out["cobra"] = {
        "epochs": len(cobra.loss_history), "fit_s": cobra_fit_s, "epoch_s": cobra_epoch_s,
        "first_epoch_s": times.times[0], "stats_s": cobra_stats_s, "clean_auroc": auroc(cobra_clean, labels),
    }  # fmt: skip
    say(f"COBRA: {len(cobra.loss_history)} epochs in {cobra_fit_s:.1f} s ({cobra_epoch_s:.2f} s/epoch after "
        f"the first, first {times.times[0]:.2f} s); clean AUROC {100 * out['cobra']['clean_auroc']:.1f} "
        f"({len(cobra.loss_history)} of {cobra_p['epochs']} epochs: not a trained COBRA)")  # fmt: skip

    # 3. PGD on CSI, then on COBRA, on as many test images as the budget holds
    per_image_step = grad_step_seconds(csi, data, min(args.eval_batch, len(data.test_y)), device)
    say(f"one forward+backward of the score: {1e3 * per_image_step:.2f} ms per image (probe)")
    for name, det, clean in (("csi", csi, csi_clean), ("cobra", cobra, cobra_clean)):
        left = args.budget_seconds - now()
        fits = int(left / (1.15 * per_image_step * (args.pgd_steps + 1)))
        n = min(len(data.test_y), fits - fits % 2)
        if n < min(100, len(data.test_y)):
            say(f"PGD-{args.pgd_steps} on {name}: skipped, {left:.0f} s of the budget left")
            out[name]["pgd"] = None
            continue
        sub, sub_clean = subset_with_clean(det, data, clean, n, args.eval_batch)
        adv_auroc, pgd_s = attack(det, sub, sub_clean, args.pgd_steps, eps, args.eval_batch, device,
                                  args.seed)  # fmt: skip
        per_image_step = pgd_s / (n * (args.pgd_steps + 1))  # measured: replaces the probe
        out[name]["pgd"] = {"steps": args.pgd_steps, "images": n, "seconds": pgd_s,
                            "clean_auroc": auroc(sub_clean, sub.test_y.numpy()), "adv_auroc": adv_auroc,
                            "s_per_image_step": per_image_step}  # fmt: skip
        note = "" if n == len(data.test_y) else f" (of {len(data.test_y)}: the budget held no more)"
        clean_there = 100 * out[name]["pgd"]["clean_auroc"]
        say(
            f"PGD-{args.pgd_steps} on {name}, {n} images{note}: clean {clean_there:.1f} -> attacked "
            f"{100 * adv_auroc:.1f} AUROC in {pgd_s:.1f} s ({1e3 * per_image_step:.2f} ms per image per step)"
        )

    # 4. The full paper protocol, extrapolated
    pp, ap_ = preset["method_params"], preset["attack_params"]
    fwd_per_image = csi_clean_s / len(data.test_y)  # no-grad score of one image, S·K views
    pgd_steps_full = ap_["pgd"]["steps"] * ap_["pgd"].get("restarts", 1)
    aa = ap_["aa"]
    aa_grad_steps = 3 * aa["apgd_steps"] * aa["apgd_restarts"]  # apgd-ad, apgd-ce, apgd-surrogate
    attacks_s = FULL_TEST * ((pgd_steps_full + 1 + aa_grad_steps) * per_image_step
                             + aa["square_queries"] * fwd_per_image)  # fmt: skip
    if args.tiny:  # the tiny run scores one test view; the protocol has S of them
        attacks_s *= pp["csi"]["test_views"] / csi_p["test_views"]
        scale_train = len(data.train_x) / n_train
    else:
        scale_train = 1.0
    fit_csi = pp["csi"]["epochs"] * csi_epoch_s * scale_train + csi_stats_s
    fit_cobra = pp["cobra"]["epochs"] * cobra_epoch_s * scale_train + cobra_stats_s
    one_class = fit_csi + fit_cobra + 2 * attacks_s
    out["paper_protocol"] = {
        "csi_fit_s": fit_csi, "cobra_fit_s": fit_cobra, "attacks_per_model_s": attacks_s,
        "one_class_s": one_class, "ten_classes_s": 10 * one_class,
        "assumptions": (
            f"{pp['csi']['epochs']} epochs at the measured s/epoch (+ bank and weights); attacks on "
            f"{FULL_TEST} test images: PGD-{pgd_steps_full} + aa ({aa_grad_steps} APGD gradient steps, "
            f"{aa['square_queries']} Square queries at the no-grad scoring cost) at the measured cost per "
            "image per step; CSI and COBRA, DeepSVDD left out; one process, one GPU"
        ),
    }  # fmt: skip

    def hours(s: float) -> str:
        return f"{s:,.0f} s ({s / 3600:.1f} h)"

    print()
    tiny = " (--tiny)" if args.tiny else ""
    print(f"== paper preset on {device}{tiny}, fmnist class {args.normal_class} ==")
    for name in ("csi", "cobra"):
        r = out[name]
        pgd = r["pgd"]
        attacked = "not attacked"
        if pgd:
            attacked = (
                f"PGD-{pgd['steps']} {100 * pgd['adv_auroc']:.1f} on {pgd['images']} images "
                f"(clean there {100 * pgd['clean_auroc']:.1f})"
            )
        print(
            f"{name:6s} {r['epochs']:3d} epochs, {r['epoch_s']:.2f} s/epoch "
            f"(first {r['first_epoch_s']:.2f} s), clean AUROC {100 * r['clean_auroc']:.1f}, {attacked}"
        )
    p = out["paper_protocol"]
    print(
        f"full paper protocol, extrapolated: CSI fit {hours(p['csi_fit_s'])}, "
        f"COBRA fit {hours(p['cobra_fit_s'])}, attacks {hours(p['attacks_per_model_s'])} per model"
    )
    print(f"  one class {hours(p['one_class_s'])}; all ten classes {hours(p['ten_classes_s'])}")
    print(f"  ({p['assumptions']})")
    print(f"wall time of this check: {now():.0f} s")
    out["wall_s"] = now()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if not all(math.isfinite(out[m]["clean_auroc"]) for m in ("csi", "cobra")):
        sys.exit(1)


if __name__ == "__main__":
    main()
