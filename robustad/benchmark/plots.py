"""Figures from the store: clean vs attacked AUROC per method, robustness curves
(AUROC vs ε), a clean-vs-robust scatter and score histograms.

Every figure is a pure function of stored results; PNG and PDF are written.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
from collections import defaultdict  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robustad.benchmark.leaderboard import (  # noqa: E402
    CONSTANT_DETECTOR_AUROC,
    WORST,
    build_table,
    current_fits,
    identities,
    per_sample_worst_case,
)
from robustad.benchmark.metrics import auroc, one_sided_scores  # noqa: E402
from robustad.benchmark.store import Store  # noqa: E402
from robustad.threat import format_eps  # noqa: E402


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
        paths += _save(fig, out / f"auroc_{_file_part(dataset)}")
    return paths


def _file_part(label: str) -> str:
    """A row or dataset label (``cobra (lambda_opp=0)``) as part of a file name."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label).strip("_")


def plot_score_histograms(store: Store, out: Path) -> list[Path]:
    """Per leaderboard row (method configuration) and dataset: scores of normal and
    anomalous test samples before and after the strongest attack (lowest AUROC), for
    the first normal class."""
    paths = []
    fits = current_fits(store)
    evals = [r for r in store.jobs(kind="eval", status="done") if r["fit_id"] in fits]
    ids = identities(fits, evals)
    key = {r["job_id"]: (ids.row[r["fit_id"]], ids.dataset[r["fit_id"]]) for r in evals}
    for method, dataset in sorted(set(key.values())):
        rows = [r for r in evals if key[r["job_id"]] == (method, dataset)]
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
        for ax, scores, title in ((axes[0], clean, "clean"), (axes[1], adv, ids.attack[strongest["job_id"]])):
            ax.hist(np.clip(scores[y == 0], lo, hi), bins, alpha=0.6, label="normal")
            ax.hist(np.clip(scores[y == 1], lo, hi), bins, alpha=0.6, label="anomalous")
            ax.set_title(f"{title}")
            ax.set_xlabel("anomaly score")
        axes[0].legend()
        fig.suptitle(
            f"{method} on {dataset}, normal class {first_class}: AUROC "
            f"{100 * strongest['metrics']['clean_auroc']:.1f} → "
            f"{100 * strongest['metrics']['adv_auroc']:.1f}",
            y=1.04,  # clear of the panel titles
        )
        paths += _save(fig, out / f"scores_{_file_part(method)}_{_file_part(dataset)}")
    return paths


def robustness_curves(store: Store, mode: str = "both") -> dict:
    """``{(dataset, norm): {attack: {method: [(ε, mean AUROC %), ...]}}}`` from stored
    per-sample scores, ε = 0 being the clean AUROC; dataset, attack and method are the
    leaderboard's configuration labels (``pgd (steps=10)``; see leaderboard), so two
    configurations that share a name are two curves. AUROC is averaged over normal
    classes and seeds; the per-sample worst case over all attacks appears as the
    attack ``"worst case"`` when more than one attack was run."""
    fits = current_fits(store)
    evals = [r for r in store.jobs(kind="eval", status="done") if r["fit_id"] in fits]
    ids = identities(fits, evals)
    runs = defaultdict(list)  # (dataset, norm, attack, method, eps) → AUROCs
    # (fit_id, norm, eps) → [(labels, attacked scores)] of each attack configuration
    same_model_and_threat: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for r in evals:
        s = store.samples(r["job_id"])
        y = s["labels"]
        attacked = one_sided_scores(s["clean"], s["adv"], y, mode)
        method, dataset = ids.row[r["fit_id"]], ids.dataset[r["fit_id"]]
        runs[(dataset, r["norm"], ids.attack[r["job_id"]], method, r["eps"])].append(100 * auroc(attacked, y))
        same_model_and_threat[(r["fit_id"], r["norm"], r["eps"])].append((y, attacked))
    for (fit_id, norm, eps), per_attack in same_model_and_threat.items():
        if len(per_attack) > 1:
            y = per_attack[0][0]
            worst = per_sample_worst_case(y, [a for _, a in per_attack])
            runs[(ids.dataset[fit_id], norm, WORST, ids.row[fit_id], eps)].append(100 * auroc(worst, y))
    clean = defaultdict(list)
    for k, f in fits.items():
        clean[(ids.dataset[k], ids.row[k])].append(100 * f["metrics"]["clean_auroc"])
    curves: dict = defaultdict(lambda: defaultdict(dict))
    for (dataset, norm, attack, method, eps), vals in runs.items():
        curve = curves[(dataset, norm)][attack].setdefault(
            method, [(0.0, float(np.mean(clean[(dataset, method)])))]
        )
        curve.append((float(eps), float(np.mean(vals))))
    for per_attack in curves.values():
        for per_method in per_attack.values():
            for method in per_method:
                per_method[method] = sorted(per_method[method])
    return curves


def plot_robustness_curves(store: Store, out: Path, mode: str = "both") -> list[Path]:
    """AUROC vs ε, one panel per attack, one line per method, for each dataset and
    norm with at least two budgets (ε = 0 is the clean AUROC); the dashed line is
    the constant detector."""
    paths = []
    for (dataset, norm), per_attack in sorted(robustness_curves(store, mode).items()):
        n_eps = {e for per_method in per_attack.values() for c in per_method.values() for e, _ in c if e > 0}
        if len(n_eps) < 2:
            continue  # one budget: the bar chart already shows it
        attacks = sorted(per_attack, key=lambda a: (a == WORST, a))
        fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 3.2), squeeze=False,
                                 sharey=True)  # fmt: skip
        for ax, attack in zip(axes[0], attacks):
            for method, curve in sorted(per_attack[attack].items()):
                e, a = zip(*curve)
                ax.plot(e, a, marker="o", ms=3, label=method)
            ax.axhline(CONSTANT_DETECTOR_AUROC, color="k", ls="--", lw=1)
            ax.set_title(attack)
            ax.set_xlabel(f"ε ({norm})")
            ticks = sorted(n_eps)
            ax.set_xticks([0.0, *ticks], ["0", *[format_eps(t) for t in ticks]], rotation=45, fontsize=7)
            ax.set_ylim(0, 100)
        axes[0][0].set_ylabel("AUROC (%)")
        axes[0][-1].legend(fontsize=7, loc="lower left")
        fig.suptitle(f"{dataset}: robustness curves (mode '{mode}'; dashed: constant detector)", y=1.04)
        paths += _save(fig, out / f"curves_{_file_part(dataset)}_{norm}")
    return paths


def plot_clean_vs_robust(store: Store, out: Path, mode: str = "both") -> list[Path]:
    """One point per method and dataset: clean AUROC against robust AUROC (the
    per-sample worst case over attacks, or the strongest single attack), with the
    diagonal (no loss) and the constant detector's 50%."""
    table = build_table(store, mode)
    points = []  # (label, clean, robust, threat label)
    for dataset in dict.fromkeys(d for d, _ in table.columns):
        cols = [c for d, c in table.columns if d == dataset and c != "clean"]
        worst_cols = [c for c in cols if c.startswith(WORST)]
        for m in table.methods:
            clean = table.cells.get((m, dataset, "clean"))
            if clean is None:
                continue
            for col in worst_cols or cols[:0]:
                if (m, dataset, col) in table.cells:
                    points.append((f"{m}/{dataset}", clean[0], table.cells[(m, dataset, col)][0], col))
            if not worst_cols:
                vals = [(table.cells[(m, dataset, c)][0], c) for c in cols if (m, dataset, c) in table.cells]
                if vals:
                    robust, col = min(vals)
                    points.append((f"{m}/{dataset}", clean[0], robust, col))
    if not points:
        return []
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    markers = dict(zip(sorted({p[3] for p in points}), "os^Dv<>ph*"))
    for col, marker in markers.items():
        pts = [p for p in points if p[3] == col]
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], marker=marker, label=col)
    for label, clean, robust, _ in points:
        ax.annotate(label, (clean, robust), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.plot([0, 100], [0, 100], color="grey", lw=1, label="no loss (robust = clean)")
    ax.axhline(CONSTANT_DETECTOR_AUROC, color="k", ls="--", lw=1, label="constant detector")
    ax.set_xlim(min(40.0, min(p[1] for p in points) - 5), 101)
    ax.set_ylim(0, 101)
    ax.set_xlabel("clean AUROC (%)")
    ax.set_ylabel("robust AUROC (%)")
    ax.set_title(f"clean vs robust (mode '{mode}')")
    ax.legend(fontsize=6, loc="upper left")
    return _save(fig, out / "clean_vs_robust")


def write_plots(store: Store, out: str | Path, mode: str = "both") -> list[Path]:
    out = Path(out) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    return (
        plot_clean_vs_attacked(store, out, mode)
        + plot_robustness_curves(store, out, mode)
        + plot_clean_vs_robust(store, out, mode)
        + plot_score_histograms(store, out)
    )
