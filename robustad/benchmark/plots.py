"""Figures from the store: clean vs attacked AUROC per method, robustness curves
(AUROC vs ε), a clean-vs-robust scatter and score histograms.

Every figure is a pure function of stored results; PNG and PDF are written.

Readability rules every figure keeps: series run in the leaderboard's column order
(attack, then ε numerically); no colour is used twice in one chart (an attack is a
colour family and its ε a shade of it, darker for a larger budget; the clean AUROC is
dark grey); legends sit outside the axes, so they never cover data; every panel names
its attack and its threat (norm and ε); scatter labels are placed where they overlap
no other label and no point.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
from collections import defaultdict  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from robustad.benchmark.frame import results_frame  # noqa: E402
from robustad.benchmark.leaderboard import (  # noqa: E402
    ATTACK_ORDER,
    CONSTANT_DETECTOR_AUROC,
    WORST,
    Table,
    build_table,
    current_fits,
    identities,
    per_sample_worst_case,
)
from robustad.benchmark.metrics import auroc, one_sided_scores  # noqa: E402
from robustad.benchmark.store import Store  # noqa: E402
from robustad.threat import format_eps  # noqa: E402

#: colour families of the attacks in a chart, in the order the attacks first appear
#: (sequential colormaps: a shade per ε); clean is CLEAN_COLOR
FAMILIES = ("Blues", "Oranges", "Greens", "Purples", "Reds", "YlOrBr", "PuRd", "GnBu", "YlGn", "RdPu",
            "BuPu", "OrRd")  # fmt: skip
CLEAN_COLOR = "#404040"


def _hex(color) -> str:
    return matplotlib.colors.to_hex(color, keep_alpha=False)


def series_colors(series: list[tuple[str, float]]) -> list[str]:
    """A colour for each ``(family, ε)`` series of one chart, no colour twice: one
    colormap per family (an attack configuration, or ``"clean"`` → dark grey), shaded by
    the rank of ε within the family (light = small budget). Beyond :data:`FAMILIES`, and
    wherever two shades would coincide, a colour of its own is drawn from the hue circle."""
    families = list(dict.fromkeys(f for f, _ in series if f != "clean"))
    budgets = {f: sorted({round(e, 10) for g, e in series if g == f}) for f in families}
    colors: list[str] = []
    for family, eps in series:
        if family == "clean":
            color = CLEAN_COLOR
        elif families.index(family) < len(FAMILIES):
            levels = budgets[family]
            rank = levels.index(round(eps, 10))
            shade = 0.65 if len(levels) == 1 else 0.35 + 0.6 * rank / (len(levels) - 1)
            color = _hex(matplotlib.colormaps[FAMILIES[families.index(family)]](shade))
        else:
            color = ""
        colors.append(color)
    return _distinct(colors)


def _distinct(colors: list[str]) -> list[str]:
    """``colors`` with every empty or repeated entry replaced by an unused hue."""
    seen: set[str] = set()
    out = []
    k = 0
    for c in colors:
        while not c or c in seen:
            c = _hex(matplotlib.colors.hsv_to_rgb(((0.13 + 0.381966 * k) % 1.0, 0.75, 0.45 + 0.1 * (k % 4))))
            k += 1
        seen.add(c)
        out.append(c)
    return out


def method_colors(methods: list[str]) -> dict[str, str]:
    """One colour per method (row label), no colour twice: tab10, tab20 beyond ten rows,
    then colours from the hue circle."""
    cmap = "tab10" if len(methods) <= 10 else "tab20"
    base = [_hex(c) for c in matplotlib.colormaps[cmap].colors]
    return dict(zip(methods, _distinct([base[i] if i < len(base) else "" for i in range(len(methods))])))


def _legend_outside(ax, **kwargs) -> None:
    """The legend to the right of the axes, where it covers no data (saved with
    ``bbox_inches="tight"``)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def _threat_text(norm: str, eps: float) -> str:
    return f"{norm} ε={format_eps(eps)}"


def _column_series(table: Table, dataset: str, col: str) -> tuple[str, float]:
    """(family, ε) of a leaderboard column, for :func:`series_colors`."""
    if col == "clean":
        return ("clean", 0.0)
    base, _, eps = table.threats.get((dataset, col), (col, "", 0.0))
    return (base, eps)


def _column_text(table: Table, dataset: str, col: str) -> str:
    """A column's label naming its threat, also where the leaderboard leaves it out (one threat)."""
    if col == "clean" or (dataset, col) not in table.threats:
        return col
    base, norm, eps = table.threats[(dataset, col)]
    return f"{base} {_threat_text(norm, eps)}"


def _save(fig, path: Path) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        p = path.with_suffix(f".{ext}")
        fig.savefig(p, dpi=120, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def plot_clean_vs_attacked(store: Store, out: Path, mode: str = "both") -> list[Path]:
    """Grouped bars per dataset: each method's clean AUROC and AUROC under each attack
    configuration and threat (the leaderboard's columns, in its order), ± the standard
    deviation over seeds."""
    table = build_table(store, mode)
    paths = []
    for dataset in dict.fromkeys(d for d, _ in table.columns):
        cols = [c for d, c in table.columns if d == dataset]
        colors = series_colors([_column_series(table, dataset, c) for c in cols])
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(table.methods) * len(cols) / 2, 3.6))
        width = 0.8 / len(cols)
        x = np.arange(len(table.methods))
        for j, (col, color) in enumerate(zip(cols, colors)):
            vals = [table.cells.get((m, dataset, col), (np.nan, None))[0] for m in table.methods]
            errs = [table.cells.get((m, dataset, col), (0, None))[1] or 0 for m in table.methods]
            ax.bar(x + (j - (len(cols) - 1) / 2) * width, vals, width, yerr=errs, color=color,
                   label=_column_text(table, dataset, col), error_kw={"lw": 0.8})  # fmt: skip
        ax.axhline(CONSTANT_DETECTOR_AUROC, color="k", ls="--", lw=1, label="constant detector")
        ax.set_xticks(x, table.methods)
        ax.set_ylim(0, 100)
        ax.set_ylabel("AUROC (%)")
        threats = sorted({(n, round(e, 10)) for (d, _), (_, n, e) in table.threats.items() if d == dataset})
        where = f"{_threat_text(*threats[0])}, " if len(threats) == 1 else ""
        ax.set_title(f"{dataset}: clean vs attacked ({where}mode '{mode}')")
        _legend_outside(ax, fontsize=7, ncol=1 if len(cols) <= 16 else 2)
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
        attacked = f"{ids.attack[strongest['job_id']]}, {_threat_text(strongest['norm'], strongest['eps'])}"
        for ax, scores, title in ((axes[0], clean, "clean"), (axes[1], adv, attacked)):
            ax.hist(np.clip(scores[y == 0], lo, hi), bins, alpha=0.6, color="tab:blue", label="normal")
            ax.hist(np.clip(scores[y == 1], lo, hi), bins, alpha=0.6, color="tab:orange", label="anomalous")
            ax.set_title(title)
            ax.set_xlabel("anomaly score")
        axes[0].set_ylabel("test samples")
        _legend_outside(axes[1], fontsize=8)
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
        methods = sorted({m for per_method in per_attack.values() for m in per_method})
        colors = method_colors(methods)
        fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 3.2), squeeze=False,
                                 sharey=True)  # fmt: skip
        for ax, attack in zip(axes[0], attacks):
            for method, curve in sorted(per_attack[attack].items()):
                e, a = zip(*curve)
                ax.plot(e, a, marker="o", ms=3, color=colors[method], label=method)
            ax.axhline(CONSTANT_DETECTOR_AUROC, color="k", ls="--", lw=1)
            ax.set_title(f"{attack}, {norm}")
            ax.set_xlabel(f"ε ({norm}; 0 = clean)")
            ticks = sorted(n_eps)
            ax.set_xticks([0.0, *ticks], ["0", *[format_eps(t) for t in ticks]], rotation=45, fontsize=7)
            ax.set_ylim(0, 100)
        axes[0][0].set_ylabel("AUROC (%)")
        handles = [plt.Line2D([], [], color=colors[m], marker="o", ms=3, label=m) for m in methods]
        axes[0][-1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                           borderaxespad=0.0)  # fmt: skip
        fig.suptitle(f"{dataset}: robustness curves (mode '{mode}'; dashed: constant detector)", y=1.04)
        paths += _save(fig, out / f"curves_{_file_part(dataset)}_{norm}")
    return paths


def _overlaps(box, boxes) -> bool:
    return any(box.overlaps(b) for b in boxes)


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], fontsize: float = 6) -> list:
    """Annotate each point with its label where the label's box overlaps no label placed
    before it and no point (greedy: around the point at growing distances, a thin leader
    line beyond the nearest ring). Returns the annotations."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pad = 3.5 * fig.dpi / 72  # a marker's radius (and a little), in pixels
    taken = [matplotlib.transforms.Bbox.from_extents(x - pad, y - pad, x + pad, y + pad)
             for x, y in ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))]  # fmt: skip
    frame = ax.get_window_extent(renderer)
    # (dx, dy) directions in points and the alignment that keeps the text on that side
    sides = [(1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"),
             (-1, -1, "right", "top"), (0, 1, "center", "bottom"), (0, -1, "center", "top"),
             (1, 0, "left", "center"), (-1, 0, "right", "center")]  # fmt: skip
    texts = []
    for (x, y), label in zip(points, labels):
        chosen = None
        for ring in (4, 9, 15, 22, 30, 40, 52):
            for dx, dy, ha, va in sides:
                t = ax.annotate(label, (x, y), xytext=(dx * ring, dy * ring), textcoords="offset points",
                                ha=ha, va=va, fontsize=fontsize)  # fmt: skip
                box = t.get_window_extent(renderer)
                inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
                if inside and not _overlaps(box, taken):
                    chosen = (t, box, ring)
                    break
                t.remove()
            if chosen:
                break
        if chosen is None:  # nowhere free: the nearest place, overlapping
            t = ax.annotate(label, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=fontsize)
            chosen = (t, t.get_window_extent(renderer), 4)
        t, box, ring = chosen
        if ring > 4:
            t.remove()
            t = ax.annotate(label, (x, y), xytext=t.xyann, textcoords="offset points", ha=t.get_ha(),
                            va=t.get_va(), fontsize=fontsize,
                            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0,
                                        "shrinkB": 2})  # fmt: skip
        taken.append(box)
        texts.append(t)
    return texts


def plot_clean_vs_robust(store: Store, out: Path, mode: str = "both") -> list[Path]:
    """One point per method, dataset and threat: clean AUROC against robust AUROC (the
    per-sample worst case over attacks, or the strongest single attack), with the
    diagonal (no loss) and the constant detector's 50%. Series (marker and colour) are
    the threats, by norm and ε."""
    table = build_table(store, mode)
    points = []  # (label, clean, robust, series label, (norm, ε))
    datasets = list(dict.fromkeys(d for d, _ in table.columns))
    for dataset in datasets:
        cols = [c for d, c in table.columns if d == dataset and c != "clean"]
        worst_cols = [c for c in cols if table.threats.get((dataset, c), ("",))[0] == WORST]
        for m in table.methods:
            clean = table.cells.get((m, dataset, "clean"))
            if clean is None:
                continue
            name = m if len(datasets) == 1 else f"{m}/{dataset}"
            picked = [c for c in worst_cols if (m, dataset, c) in table.cells]
            if not worst_cols:
                vals = [(table.cells[(m, dataset, c)][0], c) for c in cols if (m, dataset, c) in table.cells]
                picked = [min(vals)[1]] if vals else []
            for col in picked:
                base, norm, eps = table.threats.get((dataset, col), (col, "", 0.0))
                series = f"{WORST} {_threat_text(norm, eps)}" if base == WORST else "strongest attack"
                if base != WORST:
                    name = f"{name} ({base} {_threat_text(norm, eps)})"
                points.append((name, clean[0], table.cells[(m, dataset, col)][0], series, (norm, eps)))
    if not points:
        return []
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    series = sorted({(p[4], p[3]) for p in points})  # by norm, then ε numerically
    families = [(WORST if s.startswith(WORST) else s, threat[1]) for threat, s in series]
    colors = series_colors(families)
    for (threat, label), marker, color in zip(series, "os^Dv<>ph*" * 10, colors):
        pts = [p for p in points if (p[4], p[3]) == (threat, label)]
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], marker=marker, color=color, label=label,
                   zorder=3)  # fmt: skip
    ax.plot([0, 100], [0, 100], color="grey", lw=1, label="no loss (robust = clean)")
    ax.axhline(CONSTANT_DETECTOR_AUROC, color="k", ls="--", lw=1, label="constant detector")
    ax.set_xlim(min(40.0, min(p[1] for p in points) - 5), 101)
    ax.set_ylim(-2, 101)
    ax.set_xlabel("clean AUROC (%)")
    ax.set_ylabel("robust AUROC (%)")
    ax.set_title(f"clean vs robust (mode '{mode}')")
    _legend_outside(ax, fontsize=6)
    place_labels(ax, [(p[1], p[2]) for p in points], [p[0] for p in points])
    return _save(fig, out / "clean_vs_robust")


def per_class_aurocs(frame: pd.DataFrame) -> dict[str, dict[str, pd.DataFrame]]:
    """``{dataset label: {panel: AUROC % as a frame, method label × normal class}}`` from a
    results frame (:func:`robustad.benchmark.frame.results_frame`), superseded fits left
    out: the panel ``clean`` (each fit's clean AUROC), then one panel per attack
    configuration and threat (``pgd (steps=10), Linf ε=8/255``; worst case last), in the
    leaderboard's order. A value is the mean over seeds; a run that is missing is NaN."""
    df = frame[~frame["superseded"].astype(bool)]
    out: dict[str, dict] = {}
    for dataset in sorted(df["dataset_label"].unique()):
        d = df[df["dataset_label"] == dataset]
        panels = {}
        fits = d.drop_duplicates("fit_id")
        panels["clean"] = 100 * fits.pivot_table(index="method_label", columns="normal_class",
                                                 values="clean_auroc", aggfunc="mean")  # fmt: skip
        keys = d[["attack_label", "attack", "norm", "eps"]].drop_duplicates().itertuples(index=False)

        def order(k) -> tuple:
            rank = ATTACK_ORDER.index(k.attack) if k.attack in ATTACK_ORDER else len(ATTACK_ORDER)
            return (k.attack == WORST, rank, k.attack_label, k.norm, k.eps)

        for k in sorted(keys, key=order):
            sub = d[(d["attack_label"] == k.attack_label) & (d["norm"] == k.norm) & (d["eps"] == k.eps)]
            panels[f"{k.attack_label}, {_threat_text(k.norm, k.eps)}"] = 100 * sub.pivot_table(
                index="method_label", columns="normal_class", values="adv_auroc", aggfunc="mean"
            )
        out[dataset] = {name: p.reindex(index=sorted(set(d["method_label"]))) for name, p in panels.items()}
    return out


def plot_class_heatmaps(store: Store, out: Path, mode: str = "both", frame=None) -> list[Path]:
    """Per dataset: AUROC (%) per method (rows) and normal class (columns), one panel
    for the clean AUROC and one per attack configuration and threat, on one colour scale
    (0 to 100; the value is written in each cell)."""
    if frame is None:
        frame = results_frame(store, mode, n_boot=0)
    paths = []
    for dataset, panels in per_class_aurocs(frame).items():
        n = len(panels)
        ncols = min(n, 4)
        nrows = -(-n // ncols)
        first = next(iter(panels.values()))
        w = 1.2 + 0.45 * max(first.shape[1], 2)
        h = 0.8 + 0.32 * max(first.shape[0], 2)
        fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * w + 2.0, nrows * h + 0.8), squeeze=False,
                                 sharey=True, layout="constrained")  # fmt: skip
        image = None
        for ax, (name, values) in zip(axes.flat, panels.items()):
            image = ax.imshow(values.to_numpy(dtype=float), vmin=0, vmax=100, cmap="viridis", aspect="auto")
            ax.set_title(name, fontsize=8)
            ax.set_xticks(range(values.shape[1]), [str(c) for c in values.columns], fontsize=7)
            ax.set_yticks(range(values.shape[0]), list(values.index), fontsize=7)
            ax.tick_params(axis="y", labelleft=ax.get_subplotspec().is_first_col())
            ax.set_xlabel("normal class", fontsize=7)
            for (i, j), v in np.ndenumerate(values.to_numpy(dtype=float)):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 60 else "black")  # fmt: skip
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.colorbar(image, ax=axes.ravel().tolist(), label="AUROC (%)", shrink=0.8)
        fig.suptitle(f"{dataset}: AUROC per normal class (mode '{mode}'; mean over seeds)")
        paths += _save(fig, out / f"classes_{_file_part(dataset)}")
    return paths


def write_plots(store: Store, out: str | Path, mode: str = "both") -> list[Path]:
    out = Path(out) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    return (
        plot_clean_vs_attacked(store, out, mode)
        + plot_robustness_curves(store, out, mode)
        + plot_clean_vs_robust(store, out, mode)
        + plot_score_histograms(store, out)
        + plot_class_heatmaps(store, out, mode)
    )
