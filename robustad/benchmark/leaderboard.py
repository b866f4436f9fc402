"""Leaderboards as pure functions of the store (RobustBench style: results are data).

One row per method; per dataset the columns are clean AUROC, one column per
(attack, threat) and the per-sample worst case over all attacks run on the same
model. Values are AUROC in %, the mean over normal classes (± the standard
deviation over seeds when there are several).
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustad.benchmark.metrics import auroc, one_sided_scores
from robustad.benchmark.store import Store
from robustad.errors import UnknownNameError
from robustad.threat import format_eps

CONSTANT_DETECTOR_AUROC = 50.0
WORST = "worst case"


@dataclass
class Table:
    """A leaderboard: ``cells[(method, dataset, column)] = (mean, std or None)``."""

    methods: list[str]
    columns: list[tuple[str, str]]  # (dataset, column label)
    cells: dict[tuple[str, str, str], tuple[float, float | None]] = field(default_factory=dict)
    mode: str = "both"
    notes: list[str] = field(default_factory=list)
    #: reliability flags (THREAT_MODEL.md) raised on any run behind a cell
    flags: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)

    def flag_text(self, method: str, dataset: str, column: str) -> str:
        flags = self.flags.get((method, dataset, column))
        return f" [{', '.join(sorted(flags))}]" if flags else ""

    def best(self, dataset: str, column: str) -> float | None:
        vals = [self.cells[(m, dataset, column)][0] for m in self.methods
                if (m, dataset, column) in self.cells]  # fmt: skip
        return max(vals) if vals else None


def _column_label(attack: str, norm: str, eps: float, multi_threat: bool) -> str:
    return f"{attack} {norm} {format_eps(eps)}" if multi_threat else attack


def _mean_over_classes_then_seeds(per_run: dict[tuple[int, int], float]) -> tuple[float, float | None]:
    """per_run[(class, seed)] = AUROC → (mean over classes averaged over seeds, std over seeds)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for (_, seed), v in per_run.items():
        by_seed[seed].append(v)
    seed_means = [float(np.mean(v)) for v in by_seed.values()]
    std = float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else None
    return float(np.mean(seed_means)), std


def build_table(store: Store, mode: str = "both") -> Table:
    """Compute the leaderboard from stored per-sample scores (``mode``: who is attacked)."""
    all_fits = {r["job_id"]: r for r in store.jobs(kind="fit", status="done")}
    superseded = superseded_fits(all_fits.values())
    fits = {k: r for k, r in all_fits.items() if k not in superseded}
    evals = [r for r in store.jobs(kind="eval", status="done") if r["fit_id"] in fits]

    threats_per_dataset: dict[str, set] = defaultdict(set)
    for r in evals:
        threats_per_dataset[r["dataset"]].add((r["norm"], round(r["eps"], 10)))

    # values[(method, dataset, column)][(class, seed)] = AUROC %
    values: dict[tuple[str, str, str], dict[tuple[int, int], float]] = defaultdict(dict)
    attack_columns: dict[str, list[str]] = defaultdict(list)
    column_keys: dict[tuple[str, str], tuple[str, str, float]] = {}  # → (attack, norm, eps)
    flags: dict[tuple[str, str, str], set[str]] = {}
    # (fit_id, norm, eps) → [(labels, attacked scores)] of each attack on that model
    same_model_and_threat: dict[tuple[str, str, float], list] = defaultdict(list)
    for fit in fits.values():
        key = (fit["method"], fit["dataset"], "clean")
        values[key][(fit["normal_class"], fit["seed"])] = 100 * fit["metrics"]["clean_auroc"]
    for r in evals:
        multi = len(threats_per_dataset[r["dataset"]]) > 1
        col = _column_label(r["attack"], r["norm"], r["eps"], multi)
        if col not in attack_columns[r["dataset"]]:
            attack_columns[r["dataset"]].append(col)
            column_keys[(r["dataset"], col)] = (r["attack"], r["norm"], r["eps"])
        run_flags = (r.get("info") or {}).get("flags") or []
        if run_flags:
            flags.setdefault((r["method"], r["dataset"], col), set()).update(run_flags)
        s = store.samples(r["job_id"])
        labels, clean, adv = s["labels"], s["clean"], s["adv"]
        attacked = one_sided_scores(clean, adv, labels, mode)
        values[(r["method"], r["dataset"], col)][(r["normal_class"], r["seed"])] = 100 * auroc(
            attacked, labels
        )
        same_model_and_threat[(r["fit_id"], r["norm"], round(r["eps"], 10))].append((labels, attacked))
    for (fit_id, norm, eps), runs in same_model_and_threat.items():
        fit = fits[fit_id]
        if len(runs) < 2:
            continue  # a worst case over one attack repeats its column
        multi = len(threats_per_dataset[fit["dataset"]]) > 1
        col = f"{WORST} {norm} {format_eps(eps)}" if multi else WORST
        labels = runs[0][0]
        values[(fit["method"], fit["dataset"], col)][(fit["normal_class"], fit["seed"])] = 100 * auroc(
            per_sample_worst_case(labels, [a for _, a in runs]), labels
        )
        if col not in attack_columns[fit["dataset"]]:
            attack_columns[fit["dataset"]].append(col)

    methods = sorted({f["method"] for f in fits.values()})
    datasets = sorted({f["dataset"] for f in fits.values()})
    columns = []
    for d in datasets:
        columns.append((d, "clean"))
        cols = sorted(attack_columns[d], key=lambda c: _column_order(c, column_keys.get((d, c))))
        columns += [(d, c) for c in cols]
    table = Table(methods=methods, columns=columns, mode=mode, flags=flags)
    for key, per_run in values.items():
        table.cells[key] = _mean_over_classes_then_seeds(per_run)
    n_classes = {d: len({f["normal_class"] for f in fits.values() if f["dataset"] == d})
                 for d in datasets}  # fmt: skip
    for d in datasets:
        threats = ", ".join(f"{n} ε={format_eps(e)}" for n, e in sorted(threats_per_dataset[d]))
        table.notes.append(f"{d}: mean over {n_classes[d]} normal class(es); {threats or 'no attacks'}")
    table.notes.append(
        f"AUROC in %, attack mode '{mode}'; a constant detector scores "
        f"{CONSTANT_DETECTOR_AUROC:.1f} under any attack."
    )
    if flags:
        table.notes.append(FLAG_NOTE)
    for method, n in sorted(Counter(superseded.values()).items()):
        table.notes.append(
            f"left out: {n} {method} model(s) trained before its training code changed "
            "(an older fit_version); rerun the same `bench run` to replace them"
        )
    return table


def per_sample_worst_case(labels: np.ndarray, attacked: list[np.ndarray]) -> np.ndarray:
    """The per-sample worst case over attacks on one model: for every test sample the
    attacked score with the highest attacker objective d·s (d = +1 for a normal sample,
    whose score the attacker raises, −1 for an anomaly), as if an adversary ran every
    attack and picked per sample. Its AUROC is never above the lowest single-attack
    AUROC of attack mode ``"both"``."""
    stacked = np.stack(attacked)
    return np.where(labels == 0, stacked.max(0), stacked.min(0))


def per_sample_worst_case_auroc(store: Store, eval_rows: list[dict], mode: str = "both") -> float:
    """AUROC (a fraction) of :func:`per_sample_worst_case` over ``eval_rows``, the eval
    jobs of one fit and one threat, read from ``store``."""
    labels, attacked = None, []
    for r in eval_rows:
        s = store.samples(r["job_id"])
        labels = s["labels"]
        attacked.append(one_sided_scores(s["clean"], s["adv"], labels, mode))
    return auroc(per_sample_worst_case(labels, attacked), labels)


def current_fits(store: Store) -> dict[str, dict]:
    """Finished fit rows by job id, without those of :func:`superseded_fits`."""
    fits = {r["job_id"]: r for r in store.jobs(kind="fit", status="done")}
    old = superseded_fits(fits.values())
    return {k: r for k, r in fits.items() if k not in old}


def superseded_fits(fit_rows) -> dict[str, str]:
    """Fit job id → method, for fits made by an older ``fit_version`` of their method.

    A method bumps ``Detector.fit_version`` when its training changes; the new fits get
    new job ids and sit in the store next to the old ones, which must not be averaged
    with them. Methods that are not registered here (a plugin not loaded) are kept.
    """
    from robustad.benchmark.runner import method_fit_version

    out = {}
    for r in fit_rows:
        try:
            current = method_fit_version(r["method"])
        except UnknownNameError:  # not registered here: keep
            continue
        if int((r.get("config") or {}).get("method_version", 1)) < current:
            out[r["job_id"]] = r["method"]
    return out


#: weakest to strongest, so a row reads as the attack budget grows
ATTACK_ORDER = ("none", "noise", "fgsm", "pgd", "eot-pgd", "apgd", "square", "aa")
FLAG_NOTE = (
    "[flags] raised on at least one run: zero-grad = over 10% of samples had a zero input "
    "gradient; masking? = Square beat this white-box attack by over 1 point (gradient masking); "
    "non-monotone = AUROC rose as ε grew in a sweep."
)


def _column_order(label: str, key: tuple[str, str, float] | None) -> tuple:
    """Attack columns by ATTACK_ORDER (unknown attacks after, by name), then norm and ε;
    worst-case columns last."""
    if label.startswith(WORST) or key is None:
        return (1, 0, label, "", 0.0)
    attack, norm, eps = key
    rank = ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else len(ATTACK_ORDER)
    return (0, rank, attack, norm, eps)


def _fmt(cell: tuple[float, float | None] | None) -> str:
    if cell is None:
        return "–"
    mean, std = cell
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["method"]
    for d, c in table.columns:
        header += [f"{d}:{c}", f"{d}:{c}:std"]
    header.append("flags")
    w.writerow(header)
    for m in table.methods:
        row: list[str] = [m]
        for d, c in table.columns:
            cell = table.cells.get((m, d, c))
            row += ["" if cell is None else f"{cell[0]:.2f}",
                    "" if cell is None or cell[1] is None else f"{cell[1]:.2f}"]  # fmt: skip
        row.append("; ".join(f"{d}:{c}={'|'.join(sorted(table.flags[(m, d, c)]))}"
                             for d, c in table.columns if table.flags.get((m, d, c))))  # fmt: skip
        w.writerow(row)
    return buf.getvalue()


def to_markdown(table: Table) -> str:
    header = "| method | " + " | ".join(f"{d} {c}" for d, c in table.columns) + " |"
    sep = "|---|" + "---:|" * len(table.columns)
    lines = [header, sep]
    for m in table.methods:
        cells = []
        for d, c in table.columns:
            text = _fmt(table.cells.get((m, d, c)))
            if table.cells.get((m, d, c)) and table.cells[(m, d, c)][0] == table.best(d, c):
                text = f"**{text}**"
            cells.append(text + table.flag_text(m, d, c))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("ε", r"$\epsilon$")


def to_latex(table: Table) -> str:
    datasets = list(dict.fromkeys(d for d, _ in table.columns))
    spec = "l" + "r" * len(table.columns)
    lines = [r"\begin{tabular}{" + spec + "}", r"\toprule"]
    groups, rules, start = [], [], 2
    for d in datasets:
        n = sum(1 for dd, _ in table.columns if dd == d)
        groups.append(rf"\multicolumn{{{n}}}{{c}}{{{_tex_escape(d)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" & " + " & ".join(groups) + r" \\")
    lines.append(" ".join(rules))
    lines.append("method & " + " & ".join(_tex_escape(c) for _, c in table.columns) + r" \\")
    lines.append(r"\midrule")
    for m in table.methods:
        cells = []
        for d, c in table.columns:
            cell = table.cells.get((m, d, c))
            text = _fmt(cell).replace("±", r"$\pm$").replace("–", "--")
            if cell is not None and cell[0] == table.best(d, c):
                text = rf"\textbf{{{text}}}"
            flag = table.flag_text(m, d, c)
            cells.append(text + (rf"\,{{\scriptsize{flag}}}" if flag else ""))
        lines.append(_tex_escape(m) + " & " + " & ".join(cells) + r" \\")
    lines.append(r"\midrule")
    lines.append(
        "constant detector & " + " & ".join(f"{CONSTANT_DETECTOR_AUROC:.1f}" for _ in table.columns) + r" \\"
    )
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


FORMATS = {"csv": to_csv, "md": to_markdown, "latex": to_latex}
EXTENSIONS = {"csv": "csv", "md": "md", "latex": "tex"}


def write_leaderboards(
    store: Store, out: str | Path, formats=("csv", "md", "latex"), mode: str = "both"
) -> dict[str, Path]:
    """Write ``leaderboard.<ext>`` for each format into ``out``; returns the paths."""
    table = build_table(store, mode)
    paths = {}
    for fmt in formats:
        path = Path(out) / f"leaderboard.{EXTENSIONS[fmt]}"
        path.write_text(FORMATS[fmt](table))
        paths[fmt] = path
    return paths
