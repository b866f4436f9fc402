"""Figures and tables for an ε sweep: ε in numerical order, no colour twice in a chart,
legends beside the axes, every panel naming its attack and ε, scatter labels apart, and
a LaTeX table a few columns wide."""

import matplotlib
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from robustad.benchmark import plots
from robustad.benchmark.frame import load_results
from robustad.benchmark.leaderboard import build_table, to_latex, to_markdown
from robustad.benchmark.store import Store
from robustad.threat import format_eps

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = np.array([0] * 30 + [1] * 30)
SWEEP = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
METHODS = {"deepsvdd": {"width": 8}, "principals": {"widths": [8, 16]}}


def _scores(seed: int, noise: float) -> np.ndarray:
    return LABELS + np.random.default_rng(seed).normal(0, noise, LABELS.shape)


def _fit(store, job_id, method, normal_class, seed=0):
    clean = _scores(100 * normal_class + seed + len(method), 0.6)
    config = {"kind": "fit", "method": method, "params": METHODS[method], "dataset": "digits",
              "data_params": {}, "normal_class": normal_class, "seed": seed, "fit_version": 1}  # fmt: skip
    from robustad.benchmark.runner import method_fit_version

    if method_fit_version(method) != 1:
        config["method_version"] = method_fit_version(method)
    store.put({"job_id": job_id, "kind": "fit", "fit_id": None, "method": method, "dataset": "digits",
               "normal_class": normal_class, "seed": seed, "config": config, "status": "done",
               "metrics": {"clean_auroc": roc_auc_score(LABELS, clean)}},
              labels=LABELS, clean=clean)  # fmt: skip
    return clean


def _eval(store, job_id, fit_id, method, attack, eps, adv, clean, normal_class, seed=0):
    config = {"kind": "eval", "fit_id": fit_id, "attack": attack, "params": {}, "norm": "Linf",
              "eps": round(eps, 12)}  # fmt: skip
    store.put({"job_id": job_id, "kind": "eval", "fit_id": fit_id, "method": method, "dataset": "digits",
               "normal_class": normal_class, "seed": seed, "attack": attack, "norm": "Linf", "eps": eps,
               "config": config, "status": "done", "metrics": {"adv_auroc": roc_auc_score(LABELS, adv),
                           "clean_auroc": roc_auc_score(LABELS, clean)},
               "info": {"flags": []}},
              labels=LABELS, clean=clean, adv=adv)  # fmt: skip


@pytest.fixture
def sweep(tmp_path):
    """Two methods × two normal classes, fgsm and pgd at ε = 2, 4, 8, 16 /255 (stored
    in that order reversed, so order is never insertion order)."""
    with Store(tmp_path / "bench.sqlite") as store:
        for method in METHODS:
            for c in range(2):
                fit_id = f"fit-{method}-{c}"
                clean = _fit(store, fit_id, method, c)
                for k, eps in reversed(list(enumerate(SWEEP))):
                    for j, attack in enumerate(("pgd", "fgsm")):
                        adv = _scores(1000 + 10 * k + j + 7 * c + len(method), 0.6 + 0.5 * k + 0.1 * j)
                        _eval(store, f"eval-{method}-{c}-{attack}-{k}", fit_id, method, attack, eps, adv,
                              clean, c)  # fmt: skip
        yield store, tmp_path


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, by file stem, before they are closed."""
    saved = {}
    real = plots._save

    def keep(fig, path):
        fig.canvas.draw()
        saved[path.name] = {
            "axes": [
                {
                    "title": ax.get_title(),
                    "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
                    "legend_box": ax.get_legend().get_window_extent() if ax.get_legend() else None,
                    "box": ax.get_window_extent(),
                    "bar_colors": [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches],
                    "line_colors": [
                        matplotlib.colors.to_hex(ln.get_color())
                        for ln in ax.get_lines()
                        if ln.get_label() and not ln.get_label().startswith("_")
                    ],  # fmt: skip
                    "labels": [t.get_text() for t in ax.texts],
                    "image": np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
                    if ax.images
                    else None,
                    "yticks": [t.get_text() for t in ax.get_yticklabels()],
                    "xticks": [t.get_text() for t in ax.get_xticklabels()],
                    "label_boxes": [matplotlib.text.Text.get_window_extent(t) for t in ax.texts],
                }
                for ax in fig.axes
            ],
            "suptitle": fig._suptitle.get_text() if fig._suptitle else "",
        }
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def test_columns_are_in_numerical_eps_order(sweep):
    store, _ = sweep
    table = build_table(store)
    cols = [c for _, c in table.columns]
    eps = ["2/255", "4/255", "8/255", "16/255"]
    assert cols == ["clean", *[f"fgsm Linf {e}" for e in eps], *[f"pgd Linf {e}" for e in eps],
                    *[f"worst case Linf {e}" for e in eps]]  # fmt: skip
    header = to_markdown(table).splitlines()[0]
    assert header.index("worst case Linf 2/255") < header.index("worst case Linf 16/255")


def _width(row: str) -> int:
    """Columns a LaTeX table row spans (a multicolumn counts its span)."""
    cells = row.removesuffix(r"\\").split("&")
    return sum(int(c.split(r"\multicolumn{")[1].split("}")[0]) if r"\multicolumn{" in c else 1 for c in cells)


def test_sweep_latex_has_eps_as_a_row_level(sweep):
    store, _ = sweep
    table = build_table(store, ci=True)
    for ci in (False, True):
        tex = to_latex(table, ci=ci)
        spec = tex.split(r"\begin{tabular}{")[1].split("}")[0]
        assert spec == "llrrrr"  # method, ε, clean, fgsm, pgd, worst case: not 13 columns
        rows = [ln for ln in tex.splitlines() if ln.endswith(r"\\") and "&" in ln]
        assert [_width(ln) for ln in rows] == [len(spec)] * len(rows)
        assert r"method & $\epsilon$ (Linf) & clean & fgsm & pgd & worst case \\" in tex
        body = [ln.split(" & ")[:2] for ln in rows[2:]]
        assert body[:4] == [["deepsvdd", "2/255"], ["", "4/255"], ["", "8/255"], ["", "16/255"]]
        assert body[4:8] == [["principals", "2/255"], ["", "4/255"], ["", "8/255"], ["", "16/255"]]
        # a cell of a row is the leaderboard cell of that method, attack and threat
        pgd8 = rows[2 + 6].split(" & ")[4]
        assert pgd8.removeprefix("\\textbf{").startswith(
            f"{table.cells[('principals', 'digits', 'pgd Linf 8/255')][0]:.1f}"
        )
        assert ("[" in pgd8) == ci
    # one threat: the column layout of before
    with Store(store.path.parent / "one.sqlite") as one:
        clean = _fit(one, "fit-a", "deepsvdd", 0)
        _eval(one, "eval-a", "fit-a", "deepsvdd", "pgd", 8 / 255, _scores(3, 1.0), clean, 0)
        assert to_latex(build_table(one)).startswith(r"\begin{tabular}{lrr}")


def test_sweep_figures_are_readable(sweep, figures):
    store, out = sweep
    paths = plots.write_plots(store, out)
    assert all(p.is_file() for p in paths)
    eps = ["2/255", "4/255", "8/255", "16/255"]

    (bars,) = figures["auroc_digits"]["axes"]
    legend = bars["legend"]
    assert legend[1:] == ["clean", *[f"fgsm Linf ε={e}" for e in eps], *[f"pgd Linf ε={e}" for e in eps],
                          *[f"worst case Linf ε={e}" for e in eps]]  # fmt: skip
    per_series = bars["bar_colors"][:: len(METHODS)]  # bars come series by series, a bar per method
    assert len(per_series) == 13 and len(set(per_series)) == 13  # no colour twice
    assert set(bars["bar_colors"]) == set(per_series)
    assert not bars["legend_box"].overlaps(bars["box"])  # beside the axes, never over the bars

    curves = figures["curves_digits_Linf"]["axes"]
    assert [a["title"] for a in curves] == ["fgsm, Linf", "pgd, Linf", "worst case, Linf"]
    assert all(len(set(a["line_colors"])) == len(a["line_colors"]) == len(METHODS) for a in curves)
    assert not curves[-1]["legend_box"].overlaps(curves[-1]["box"])

    scatter = figures["clean_vs_robust"]["axes"][0]
    assert scatter["legend"][:4] == [f"worst case Linf ε={e}" for e in eps]
    assert not scatter["legend_box"].overlaps(scatter["box"])
    assert sorted(scatter["labels"]) == sorted([m for m in METHODS for _ in eps])
    boxes = scatter["label_boxes"]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])

    for method in METHODS:  # the attacked panel names the attack and ε
        clean_panel, attacked = figures[f"scores_{method}_digits"]["axes"]
        assert clean_panel["title"] == "clean"
        assert attacked["title"] in {f"{a}, Linf ε={e}" for a in ("fgsm", "pgd") for e in eps}
        assert not attacked["legend_box"].overlaps(attacked["box"])


def test_one_threat_names_its_eps(sweep, figures, tmp_path):
    with Store(tmp_path / "one" / "bench.sqlite") as store:
        clean = _fit(store, "fit-a", "deepsvdd", 0)
        for j, attack in enumerate(("pgd", "fgsm")):
            _eval(
                store, f"eval-{attack}", "fit-a", "deepsvdd", attack, 8 / 255, _scores(3 + j, 1.0), clean, 0
            )
        plots.write_plots(store, tmp_path / "one")
    (bars,) = figures["auroc_digits"]["axes"]
    assert "Linf ε=8/255" in bars["title"]
    assert bars["legend"][1:] == ["clean", "fgsm Linf ε=8/255", "pgd Linf ε=8/255", "worst case Linf ε=8/255"]
    assert figures["clean_vs_robust"]["axes"][0]["legend"][0] == "worst case Linf ε=8/255"


def test_colours_are_never_reused():
    series = [("clean", 0.0)] + [(f"attack{a}", e) for a in range(15) for e in SWEEP]
    colors = plots.series_colors(series)
    assert len(set(colors)) == len(series)
    assert colors[0] == plots.CLEAN_COLOR
    # one family's shades darken with ε
    blues = [matplotlib.colors.to_rgb(c) for c in colors[1:5]]
    assert [sum(c) for c in blues] == sorted((sum(c) for c in blues), reverse=True)
    for n in (3, 10, 11, 25, 40):
        assert len(set(plots.method_colors([f"m{i}" for i in range(n)]).values())) == n


def test_scatter_labels_do_not_overlap():
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.set_xlim(40, 101)
    ax.set_ylim(-2, 101)
    rng = np.random.default_rng(0)
    points = [(50 + rng.normal(0, 1), 10 + rng.normal(0, 1)) for _ in range(8)] + [(80.0, 80.0), (80.5, 80.2)]
    texts = plots.place_labels(ax, points, [f"method {i} (k=v)" for i in range(len(points))])
    fig.canvas.draw()
    boxes = [matplotlib.text.Text.get_window_extent(t) for t in texts]  # the text, not its leader line
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    pad = 3 * fig.dpi / 72
    for x, y in ax.transData.transform(points):  # and no label covers a point
        assert not any(b.overlaps(matplotlib.transforms.Bbox.from_extents(x - pad, y - pad, x + pad, y + pad))
                       for b in boxes)  # fmt: skip
    plt.close(fig)


def test_per_class_heatmaps_show_the_frames_values(sweep, figures):
    store, out = sweep
    # a second seed for one method and class: a heatmap value is the mean over seeds
    clean = _fit(store, "fit-deepsvdd-0-s1", "deepsvdd", 0, seed=1)
    adv = _scores(77, 1.0)
    _eval(store, "eval-deepsvdd-0-s1", "fit-deepsvdd-0-s1", "deepsvdd", "pgd", 8 / 255, adv, clean, 0, seed=1)
    paths = plots.write_plots(store, out)
    assert out / "plots" / "classes_digits.png" in paths and (out / "plots" / "classes_digits.pdf").is_file()
    df = load_results(out, n_boot=0)
    panels = figures["classes_digits"]["axes"][
        :13
    ]  # clean, fgsm ×4, pgd ×4, worst case ×4; then the colorbar
    eps = ["2/255", "4/255", "8/255", "16/255"]
    titles = ["clean"] + [f"{a}, Linf ε={e}" for a in ("fgsm", "pgd", "worst case") for e in eps]
    assert [p["title"] for p in panels] == titles
    methods = panels[0]["yticks"]  # shown on the first column (the rows are shared)
    assert methods == ["deepsvdd", "principals"]
    for panel in panels:
        assert panel["xticks"] == ["0", "1"] and panel["image"].shape == (2, 2)
        if panel["title"] == "clean":
            want = (
                100
                * df.drop_duplicates("fit_id").groupby(["method_label", "normal_class"])["clean_auroc"].mean()
            )
        else:
            attack, threat = panel["title"].split(", ")
            sub = df[
                (df["attack_label"] == attack)
                & (df["eps"].map(lambda e: f"Linf ε={format_eps(e)}") == threat)
            ]
            want = 100 * sub.groupby(["method_label", "normal_class"])["adv_auroc"].mean()
        for i, method in enumerate(methods):
            for j, c in enumerate(panel["xticks"]):
                assert panel["image"][i, j] == pytest.approx(want[(method, int(c))])
    # the seed-1 run moved the mean of its cell
    pgd8 = figures["classes_digits"]["axes"][titles.index("pgd, Linf ε=8/255")]["image"][0, 0]
    seed0 = df[(df["fit_id"] == "fit-deepsvdd-0") & (df["attack"] == "pgd") & (df["eps"] == 8 / 255)][
        "adv_auroc"
    ]
    assert pgd8 == pytest.approx(100 * np.mean([seed0.iloc[0], roc_auc_score(LABELS, adv)]))
    tables = plots.per_class_aurocs(df)
    assert tables["digits"]["pgd, Linf ε=8/255"].loc["deepsvdd", 0] == pytest.approx(pgd8)
