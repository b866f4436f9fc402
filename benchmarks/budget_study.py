"""CSI and COBRA robustness against training budget (Fashion-MNIST class 0).

Reads the stores filled by the budget runs (``results/budget/b*.yaml``: one encoder
and schedule per budget, shared by both methods) and prints, per method and
budget: the encoder, epochs, training images, training image passes (epochs ×
images), the fit's wall time, clean AUROC, PGD-100 AUROC per ε, ``aa`` at 8/255 and
the per-sample worst case at 8/255. With ``--plot`` it draws clean and worst-case
AUROC against image passes and against wall time, one line per method.

    python benchmarks/budget_study.py results/budget/csi/bench.sqlite results/budget/cobra/bench.sqlite \\
        --plot results/budget/budget_curves.png
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from robustad.benchmark.leaderboard import current_fits, per_sample_worst_case_auroc
from robustad.benchmark.store import Store
from robustad.threat import format_eps

EPS_8 = 8 / 255


def collect(stores: list[Store]) -> list[dict]:
    """One record per fitted model (method × budget) with its attacked AUROCs."""
    records = []
    for store in stores:
        evals = defaultdict(list)
        for e in store.jobs(kind="eval", status="done"):
            evals[e["fit_id"]].append(e)
        for fit in current_fits(store).values():
            p, info = fit["config"]["params"], fit.get("info") or {}
            images = int(info.get("train_images_used") or fit.get("info", {}).get("train_size", 0))
            rec = {
                "method": fit["method"],
                "encoder": f"{p['stem']} stem, width {p['width']}, blocks {'-'.join(map(str, p['blocks']))}",
                "epochs": p["epochs"],
                "images": images,
                "passes": p["epochs"] * images,
                "fit_s": fit["duration"],
                "clean": 100 * fit["metrics"]["clean_auroc"],
                "pgd": {},
            }
            at_8 = []
            for e in evals[fit["job_id"]]:
                if e["attack"] == "pgd":
                    rec["pgd"][e["eps"]] = 100 * e["metrics"]["adv_auroc"]
                elif e["attack"] == "aa":
                    rec["aa"] = 100 * e["metrics"]["adv_auroc"]
                if abs(e["eps"] - EPS_8) < 1e-9:
                    at_8.append(e)
            if at_8:
                rec["worst"] = 100 * per_sample_worst_case_auroc(store, at_8, "both")
                rec["worst_of"] = "+".join(sorted(e["attack"] for e in at_8))
            records.append(rec)
    # within a method: the ImageNet-stem budgets, then the (costlier per image) CIFAR-stem ones
    return sorted(records, key=lambda r: (r["method"], "cifar" in r["encoder"], r["passes"], r["fit_s"]))


def table(records: list[dict]) -> str:
    eps = sorted({e for r in records for e in r["pgd"]})
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    heads = ["encoder", "epochs", "images", "image passes", "fit (min)", "clean"]
    heads += [f"pgd-100 {format_eps(e)}" for e in eps] + ["aa 8/255", "worst 8/255"]
    lines = ["| method | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * (len(heads) - 1)]
    for r in records:
        cells = [r["encoder"], str(r["epochs"]), str(r["images"]), f"{r['passes']:,}"]
        cells += [f"{r['fit_s'] / 60:.1f}", fmt(r["clean"])] + [fmt(r["pgd"].get(e)) for e in eps]
        cells += [fmt(r.get("aa")), fmt(r.get("worst"))]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, xlabel in ((axes[0], "passes", "training image passes (epochs × images)"),
                            (axes[1], "fit_s", "fit wall time (s)")):  # fmt: skip
        for i, method in enumerate(sorted({r["method"] for r in records})):
            # one line per method and encoder: a budget ladder is more epochs / images
            for encoder, marker in zip(sorted({r["encoder"] for r in records}, reverse=True), "os^v"):
                rs = sorted((r for r in records if r["method"] == method and r["encoder"] == encoder),
                            key=lambda r: r[key])  # fmt: skip
                if not rs:
                    continue
                stem = encoder.split(",")[0]
                xs = [r[key] for r in rs]
                ax.plot(xs, [r["clean"] for r in rs], "--", color=f"C{i}", marker=marker, mfc="none",
                        label=f"{method} clean ({stem})")  # fmt: skip
                worst = [(r[key], r["worst"]) for r in rs if "worst" in r]
                if worst:
                    ax.plot(*zip(*worst), "-", color=f"C{i}", marker=marker,
                            label=f"{method} worst 8/255 ({stem})")  # fmt: skip
        ax.axhline(50, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded minor labels
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("AUROC (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Fashion-MNIST class 0: robustness against training budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--plot", help="write the curves to this PNG")
    args = ap.parse_args()
    stores = [Store(s) for s in args.stores]
    try:
        records = collect(stores)
    finally:
        for s in stores:
            s.close()
    print(table(records))
    if args.plot:
        plot(records, args.plot)


if __name__ == "__main__":
    main()
