"""What the numbers-you-can-trust fixes change: the same grid run by the code before
and after them, side by side.

Reads two stores filled by ``bench run`` with the study config
(``results/fixes/study.yaml``: the fmnist preset's Deep SVDD, CSI and COBRA on
Fashion-MNIST class 0, PGD-100 at ε ∈ {2, 4, 8, 16, 32}/255 and ``aa`` at 8/255 on a
balanced 400-image test subset), one by a checkout of the code before the fixes and
one after, and prints a Markdown report: clean and attacked AUROC per ε, ``aa``,
the per-sample worst case at 8/255, the reliability flags and gradient statistics,
what each ``aa`` member adds, and the wall time of each attack. Also draws the
robustness curves (AUROC against ε, before dashed, after solid).

    python benchmarks/fix_study.py results/fixes/before/bench.sqlite results/fixes/after/bench.sqlite \\
        --plot results/fixes/robustness_curves.png

``--box-check OUT`` measures instead the per-pixel gradient statistics of
``attacks/base.gradient_diagnostics`` (this checkout's file) on every model saved in
``OUT/checkpoints``, scored by whatever ``robustad`` is importable: run it with
``PYTHONPATH`` at a checkout of the old code to see what the box-masking check
would have said about the old score.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from robustad.benchmark.leaderboard import per_sample_worst_case_auroc
from robustad.benchmark.store import Store
from robustad.threat import format_eps

METHODS = ("deepsvdd", "csi", "cobra")
EPS_8 = 8 / 255


def collect(store: Store) -> dict:
    """Per method: clean AUROC, {ε: pgd AUROC}, aa row, the worst case at 8/255, timings."""
    fits = {f["job_id"]: f for f in store.jobs(kind="fit", status="done")}
    out: dict[str, dict] = defaultdict(lambda: {"pgd": {}, "pgd_s": {}})
    for f in fits.values():
        out[f["method"]].update(clean=100 * f["metrics"]["clean_auroc"], fit_s=f["duration"])
    at_8 = defaultdict(list)
    for e in store.jobs(kind="eval", status="done"):
        m = fits[e["fit_id"]]["method"]
        if e["attack"] == "pgd":
            out[m]["pgd"][e["eps"]] = 100 * e["metrics"]["adv_auroc"]
            out[m]["pgd_s"][e["eps"]] = e["duration"]
        elif e["attack"] == "aa":
            out[m].update(aa=100 * e["metrics"]["adv_auroc"], aa_s=e["duration"], aa_info=e.get("info") or {})
        if abs(e["eps"] - EPS_8) < 1e-9:
            at_8[m].append(e)
            if e["attack"] == "pgd":
                out[m]["pgd8_info"] = e.get("info") or {}
    for m, rows in at_8.items():
        if len(rows) == 2:
            out[m]["worst"] = 100 * per_sample_worst_case_auroc(store, rows, "both")
    return out


def report(before: dict, after: dict) -> str:
    eps = sorted({e for r in (before, after) for m in r.values() for e in m["pgd"]})
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    heads = ["clean"] + [f"pgd {format_eps(e)}" for e in eps] + ["aa 8/255", "worst 8/255"]
    lines = ["| method | code | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
    for m in METHODS:
        for name, res in (("before", before), ("after", after)):
            r = res.get(m)
            if not r:
                continue
            cells = [r.get("clean")] + [r["pgd"].get(e) for e in eps] + [r.get("aa"), r.get("worst")]
            lines.append(f"| {m} | {name} | " + " | ".join(fmt(c) for c in cells) + " |")

    lines += ["", "| method | code | flags (pgd 8/255; aa) | zero-grad pixels | box-masked pixels |",
              "|---|---|---|---:|---:|"]  # fmt: skip
    for m in METHODS:
        for name, res in (("before", before), ("after", after)):
            r = res.get(m)
            if not r:
                continue
            p, a = r.get("pgd8_info", {}), r.get("aa_info", {})
            flags = f"{', '.join(p.get('flags', [])) or '–'}; {', '.join(a.get('flags', [])) or '–'}"
            zp, bm = p.get("zero_grad_pixel_frac"), p.get("box_masked_frac")
            pct = lambda v: "not measured" if v is None else f"{100 * v:.1f}%"  # noqa: E731
            lines.append(f"| {m} | {name} | {flags} | {pct(zp)} | {pct(bm)} |")

    lines += ["", "| method | code | aa member AUROC (sole-best fraction of samples) |", "|---|---|---|"]
    for m in METHODS:
        for name, res in (("before", before), ("after", after)):
            info = (res.get(m) or {}).get("aa_info", {})
            members = info.get("member_auroc", {})
            wins = info.get("member_sole_best_frac", {})
            txt = ", ".join(
                f"{k} {100 * v:.1f}" + (f" ({100 * wins[k]:.1f}%)" if k in wins else "")
                for k, v in members.items()
            )
            lines.append(f"| {m} | {name} | {txt or '–'} |")

    lines += ["", "| method | code | fit (s) | pgd-100, each ε (s) | aa (s) |", "|---|---|---:|---:|---:|"]
    for m in METHODS:
        for name, res in (("before", before), ("after", after)):
            r = res.get(m)
            if not r:
                continue
            pgd_s = r["pgd_s"].get(EPS_8)
            lines.append(f"| {m} | {name} | {fmt(r.get('fit_s'))} | {fmt(pgd_s)} | {fmt(r.get('aa_s'))} |")
    return "\n".join(lines)


def plot(before: dict, after: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, m in enumerate(METHODS):
        colour = f"C{i}"
        for res, style, name in ((before, "--", "before"), (after, "-", "after")):
            r = res.get(m)
            if not r or not r["pgd"]:
                continue
            eps = sorted(r["pgd"])
            ax.plot([0] + [e * 255 for e in eps], [r["clean"]] + [r["pgd"][e] for e in eps], style,
                    color=colour, marker="o", ms=3, label=f"{m} ({name})")  # fmt: skip
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("ε (/255), L∞, PGD-100")
    ax.set_ylabel("AUROC (%)")
    ax.set_title("Fashion-MNIST class 0: before and after the fixes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def box_check(out: str) -> str:
    """Gradient statistics of each saved model of a study store, as a Markdown table."""
    import importlib.util
    from pathlib import Path

    import robustad
    from robustad.datasets import load_dataset
    from robustad.methods.base import load_detector_state
    from robustad.registry import METHODS

    # This checkout's diagnostic, whatever robustad version scores the model.
    path = Path(__file__).resolve().parent.parent / "robustad" / "attacks" / "base.py"
    spec = importlib.util.spec_from_file_location("fix_study_base", path)
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)

    lines = [f"scored by robustad at {Path(robustad.__file__).parent}", ""]
    lines += ["| method | zero-grad samples | zero-grad pixels | box-masked pixels |", "|---|---:|---:|---:|"]
    with Store(Path(out) / "bench.sqlite") as store:
        for fit in store.jobs(kind="fit", status="done"):
            det = METHODS.create(fit["method"], **fit["config"]["params"])
            load_detector_state(det, Path(out) / "checkpoints" / f"{fit['job_id']}.pt")
            det.eval()
            data = load_dataset(fit["dataset"], fit["normal_class"], **fit["config"].get("data_params", {}))
            stats = defaultdict(float)
            for i in range(0, len(data.test_x), 100):
                x, y = data.test_x[i : i + 100], data.test_y[i : i + 100]
                for k, v in base.gradient_diagnostics(det.score, x, y).items():
                    stats[k] += v * len(x) / len(data.test_x)
            keys = ("zero_grad_frac", "zero_grad_pixel_frac", "box_masked_frac")
            pct = [f"{100 * stats[k]:.1f}%" for k in keys]
            lines.append(f"| {fit['method']} | " + " | ".join(pct) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", nargs="?")
    ap.add_argument("after", nargs="?")
    ap.add_argument("--plot", help="write the robustness curves to this PNG")
    ap.add_argument("--box-check", metavar="OUT", help="gradient statistics of the models saved in OUT")
    args = ap.parse_args()
    if args.box_check:
        print(box_check(args.box_check))
        return
    with Store(args.before) as b, Store(args.after) as a:
        before, after = collect(b), collect(a)
    print(report(before, after))
    if args.plot:
        plot(before, after, args.plot)


if __name__ == "__main__":
    main()
