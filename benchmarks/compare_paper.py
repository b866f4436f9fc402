"""Our Fashion-MNIST numbers next to the COBRA paper's, as a Markdown table.

Every number of ours is read from the results store (``bench.sqlite``); the
paper's numbers are constants quoted from ../shared/specs/COBRA.md (AUROC %,
clean / PGD-1000, Fashion-MNIST, mean over the ten normal classes). Also prints
the per-class AUROCs, the recorded training settings and the wall time per class
and method (the store's ``duration`` column: fit = training + bank + clean
scores; eval = one attack on the whole test set).

    python benchmarks/compare_paper.py results/fmnist/bench.sqlite [--attack pgd]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from robustad.benchmark.leaderboard import build_table
from robustad.benchmark.metrics import auroc, one_sided_scores
from robustad.benchmark.store import Store

#: COBRA.md, "Published numbers", Fashion-MNIST row: (clean, PGD-1000) AUROC %
PAPER_FMNIST = {"deepsvdd": (94.5, 7.9), "csi": (92.7, 5.8), "cobra": (93.1, 89.6)}
SETTINGS = (
    "encoder", "epochs", "eps_train", "train_attack_steps", "opposite_weight", "test_views",
    "train_images_used",
)  # fmt: skip


def comparison(store: Store, dataset: str = "fmnist", attack: str = "pgd") -> str:
    """The Markdown report: summary table, per-class table, settings and wall times."""
    table = build_table(store)
    fits = [f for f in store.jobs(kind="fit", status="done") if f["dataset"] == dataset]
    evals = [e for e in store.jobs(kind="eval", status="done") if e["dataset"] == dataset]
    methods = [m for m in PAPER_FMNIST if any(f["method"] == m for f in fits)]
    methods += sorted({f["method"] for f in fits} - set(methods))
    classes = sorted({f["normal_class"] for f in fits})
    attack_steps = {e["config"]["params"].get("steps") for e in evals if e["attack"] == attack}

    lines = [
        f"| method | ours clean | ours {attack}"
        + (f"-{attack_steps.pop()}" if len(attack_steps) == 1 else "")
        + " | paper clean | paper PGD-1000 |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in methods:
        clean = table.cells.get((m, dataset, "clean"))
        adv = table.cells.get((m, dataset, attack))
        paper = PAPER_FMNIST.get(m, (None, None))
        cells = [f"{c[0]:.1f}" if c else "–" for c in (clean, adv)]
        cells += [f"{p:.1f}" if p is not None else "–" for p in paper]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Ours: mean over normal classes {', '.join(map(str, classes))} (the paper: all ten); "
        "AUROC in %, both normal and anomalous test samples attacked, L∞ ε = 8/255."
    )

    # Per-class AUROC and wall time, straight from the store.
    per_class: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    for f in fits:
        key = (f["method"], f["normal_class"])
        per_class[key]["clean"] = f"{100 * f['metrics']['clean_auroc']:.1f}"
        per_class[key]["fit_s"] = f"{f['duration']:.0f}"
    for e in evals:
        if e["attack"] != attack:
            continue
        s = store.samples(e["job_id"])
        value = 100 * auroc(one_sided_scores(s["clean"], s["adv"], s["labels"], "both"), s["labels"])
        key = (e["method"], e["normal_class"])
        per_class[key]["adv"] = f"{value:.1f}"
        per_class[key]["eval_s"] = f"{e['duration']:.0f}"
    lines += [
        "",
        f"| method | class | clean | {attack} | fit wall time (s) | {attack} wall time (s) | total (min) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        for c in classes:
            row = per_class.get((m, c), {})
            total = sum(float(row[k]) for k in ("fit_s", "eval_s") if k in row) / 60
            lines.append(
                f"| {m} | {c} | {row.get('clean', '–')} | {row.get('adv', '–')} | "
                f"{row.get('fit_s', '–')} | {row.get('eval_s', '–')} | {total:.1f} |"
            )

    lines += ["", "| method | " + " | ".join(SETTINGS) + " |", "|---|" + "---|" * len(SETTINGS)]
    for m in methods:
        info = next((f["info"] for f in fits if f["method"] == m), {}) or {}
        params = next((f["config"]["params"] for f in fits if f["method"] == m), {})
        values = [str(info.get(k, params.get(k, "–"))) for k in SETTINGS]
        if m == "deepsvdd":
            values = [
                f"LeNet-style conv (width {params.get('width')}, depth {params.get('depth')})",
                str(params.get("epochs")),
                "–",
                "–",
                "–",
                "1",
                str(info.get("train_size", "–")),
            ]
        lines.append(f"| {m} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="path of bench.sqlite")
    ap.add_argument("--dataset", default="fmnist")
    ap.add_argument("--attack", default="pgd")
    args = ap.parse_args(argv)
    with Store(args.store) as store:
        print(comparison(store, args.dataset, args.attack), end="")


if __name__ == "__main__":
    main()
