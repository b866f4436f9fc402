"""Figures from the store: clean vs attacked AUROC per method, and score histograms.

Every figure is a pure function of stored results; PNG and PDF are written.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robustad.benchmark.leaderboard import CONSTANT_DETECTOR_AUROC, build_table  # noqa: E402
from robustad.benchmark.store import Store  # noqa: E402


def _save(fig, path: Path) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        p = path.with_suffix(f".{ext}")
        fig.savefig(p, dpi=120, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def plot_clean_vs_attacked(store: Store, out: Path, mode: str = "both") -> list[Path]:
    """Grouped bars per dataset: each method's clean AUROC and AUROC under each attack."""
    table = build_table(store, mode)
    paths = []
    for dataset in dict.fromkeys(d for d, _ in table.columns):
        cols = [c for d, c in table.columns if d == dataset]
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(table.methods) * len(cols) / 2, 3.6))
        width = 0.8 / len(cols)
        x = np.arange(len(table.methods))
        for j, col in enumerate(cols):
            vals = [table.cells.get((m, dataset, col), (np.nan, None))[0] for m in table.methods]
            errs = [table.cells.get((m, dataset, col), (0, None))[1] or 0 for m in table.methods]
            ax.bar(x + (j - (len(cols) - 1) / 2) * width, vals, width, yerr=errs, label=col)
        ax.axhline(CONSTANT_DETECTOR_AUROC, color="k", ls="--", lw=1, label="constant detector")
        ax.set_xticks(x, table.methods)
        ax.set_ylim(0, 100)
        ax.set_ylabel("AUROC (%)")
        ax.set_title(f"{dataset}: clean vs attacked (mode '{mode}')")
        ax.legend(fontsize=7, ncol=2, loc="lower right")
        paths += _save(fig, out / f"auroc_{dataset}")
    return paths


def plot_score_histograms(store: Store, out: Path) -> list[Path]:
    """Per method and dataset: scores of normal and anomalous test samples before and
    after the strongest attack (lowest AUROC), for the first normal class."""
    paths = []
    evals = store.jobs(kind="eval", status="done")
    for method, dataset in sorted({(r["method"], r["dataset"]) for r in evals}):
        rows = [r for r in evals if r["method"] == method and r["dataset"] == dataset]
        first_class = min(r["normal_class"] for r in rows)
        rows = [r for r in rows if r["normal_class"] == first_class and r["attack"] != "none"]
        if not rows:
            continue
        strongest = min(rows, key=lambda r: r["metrics"]["adv_auroc"])
        s = store.samples(strongest["job_id"])
        y, clean, adv = s["labels"], s["clean"], s["adv"]
        lo, hi = np.percentile(np.r_[clean, adv], [0.5, 99.5])
        bins = np.linspace(lo, hi, 40)
        fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharex=True, sharey=True)
        for ax, scores, title in ((axes[0], clean, "clean"), (axes[1], adv, strongest["attack"])):
            ax.hist(np.clip(scores[y == 0], lo, hi), bins, alpha=0.6, label="normal")
            ax.hist(np.clip(scores[y == 1], lo, hi), bins, alpha=0.6, label="anomalous")
            ax.set_title(f"{title}")
            ax.set_xlabel("anomaly score")
        axes[0].legend()
        fig.suptitle(
            f"{method} on {dataset}, normal class {first_class}: AUROC "
            f"{100 * strongest['metrics']['clean_auroc']:.1f} → "
            f"{100 * strongest['metrics']['adv_auroc']:.1f}"
        )
        paths += _save(fig, out / f"scores_{method}_{dataset}")
    return paths


def write_plots(store: Store, out: str | Path, mode: str = "both") -> list[Path]:
    out = Path(out) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    return plot_clean_vs_attacked(store, out, mode) + plot_score_histograms(store, out)
