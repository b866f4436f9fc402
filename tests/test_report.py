"""bench report: one self-contained report.html, rendered in a real headless browser,
whose leaderboard shows the frame's numbers."""

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from robustad.benchmark.frame import load_results
from robustad.benchmark.leaderboard import build_table
from robustad.benchmark.report import FLAG_TITLES, rerun_command, write_report
from robustad.benchmark.runner import method_fit_version
from robustad.benchmark.store import Store
from robustad.cli import main

LABELS = np.array([0] * 25 + [1] * 25)
EPS = 8 / 255
VERSIONS = {"robustad": "0.1.0", "torch": "9.9.9-test", "numpy": "1.0"}
REV = "0123456789abcdef0123456789abcdef01234567"
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def _scores(seed: int, noise: float) -> np.ndarray:
    return LABELS + np.random.default_rng(seed).normal(0, noise, LABELS.shape)


def _fit(store, job_id, method, params, normal_class, seed):
    clean = _scores(100 * normal_class + 10 * seed + len(method), 0.7)
    config = {"kind": "fit", "method": method, "params": params, "dataset": "digits", "data_params": {},
              "normal_class": normal_class, "seed": seed, "fit_version": 1, "preset": "quick",
              "batch_size": 512}  # fmt: skip
    if method_fit_version(method) != 1:
        config["method_version"] = method_fit_version(method)
    store.put({"job_id": job_id, "kind": "fit", "fit_id": None, "method": method, "dataset": "digits",
               "normal_class": normal_class, "seed": seed, "config": config, "status": "done",
               "metrics": {"clean_auroc": roc_auc_score(LABELS, clean)}, "info": {"device": "cpu"},
               "versions": VERSIONS, "git_rev": REV, "duration": 1.5},
              labels=LABELS, clean=clean)  # fmt: skip
    return clean


def _eval(store, job_id, fit_id, method, attack, params, adv, clean, normal_class, seed, flags=()):
    config = {"kind": "eval", "fit_id": fit_id, "attack": attack, "params": params, "norm": "Linf",
              "eps": round(EPS, 12), "preset": "quick", "batch_size": 512}  # fmt: skip
    store.put({"job_id": job_id, "kind": "eval", "fit_id": fit_id, "method": method, "dataset": "digits",
               "normal_class": normal_class, "seed": seed, "attack": attack, "norm": "Linf", "eps": EPS,
               "config": config, "status": "done",
               "metrics": {"adv_auroc": roc_auc_score(LABELS, adv),
                           "clean_auroc": roc_auc_score(LABELS, clean)},
               "info": {"flags": list(flags)}, "versions": VERSIONS, "git_rev": REV, "duration": 0.5},
              labels=LABELS, clean=clean, adv=adv)  # fmt: skip


@pytest.fixture
def results(tmp_path):
    """deepsvdd on two classes and two seeds, principals on two classes and one seed;
    fgsm and pgd on every model (pgd flagged masking? on one run)."""
    with Store(tmp_path / "bench.sqlite") as store:
        for method, params, seeds in (("deepsvdd", {"width": 8}, (0, 1)), ("principals", {}, (0,))):
            for c in range(2):
                for seed in seeds:
                    fit_id = f"fit-{method}-{c}-{seed}"
                    clean = _fit(store, fit_id, method, params, c, seed)
                    for j, attack in enumerate(("fgsm", "pgd")):
                        adv = _scores(1000 + 100 * c + 10 * seed + j + len(method), 0.9 + 0.4 * j)
                        flags = (
                            ("masking?",) if (method, c, seed, attack) == ("deepsvdd", 1, 1, "pgd") else ()
                        )
                        p = {"steps": 3} if attack == "pgd" else {}
                        _eval(store, f"eval-{method}-{c}-{seed}-{attack}", fit_id, method, attack, p, adv,
                              clean, c, seed, flags)  # fmt: skip
    return tmp_path


class _Cells(HTMLParser):
    """The cells of the table with id ``leaderboard``: [(row's method, attributes)]."""

    def __init__(self):
        super().__init__()
        self.inside = False
        self.method = None
        self.cells: list[tuple[str, dict]] = []
        self.headers: list[str] = []
        self.flags: list[dict] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.inside = a.get("id") == "leaderboard"
        if tag == "img":
            self.images.append(a.get("src", ""))
        if not self.inside:
            return
        if tag == "tr":
            self.method = a.get("data-method")
        elif tag == "th":
            self.headers.append(a.get("title", ""))
        elif tag == "td" and self.method is not None:
            self.cells.append((self.method, a))
        elif tag == "span" and "flag" in a.get("class", ""):
            self.flags.append(a)

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False


def _render(path) -> str:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_is_self_contained(results):
    assert main(["report", "--out", str(results)]) == 0
    page = (results / "report.html").read_text(encoding="utf-8")
    # nothing to fetch: no external script, stylesheet, image or font
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#|data:)""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(imgs) >= 3 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n") for s in imgs)
    # provenance: the revision, the versions and every job, with the line that reruns it
    assert REV in page and "9.9.9-test" in page
    with Store(results / "bench.sqlite") as store:
        for row in store.jobs():
            assert f'id="job-{row["job_id"]}"' in page
        fit = store.jobs(job_id="fit-deepsvdd-1-1")[0]
        ev = store.jobs(job_id="eval-deepsvdd-1-1-pgd")[0]
    cmd = rerun_command(fit, ev)
    assert cmd.startswith(
        "bench run --preset quick --methods deepsvdd --datasets digits --classes 1 --seeds 1 "
        "--attacks pgd --norm Linf --eps 8/255 --batch-size 512 --config config.yaml"
    )
    assert 'attack_params: {"pgd": {"steps": 3}}' in cmd and '"width": 8' in cmd


@pytest.mark.skipif(
    BROWSER is None, reason="no chromium binary (apt-get install chromium) to render the page"
)
def test_rendered_leaderboard_shows_the_frames_numbers(results):
    with Store(results / "bench.sqlite") as store:
        path = write_report(store, results)
        table = build_table(store, ci=True)
    dom = _render(path)
    assert 'data-ready="1"' in dom  # the page's script ran (sortable headers) without an error
    parsed = _Cells()
    parsed.feed(dom)
    cells = {}
    for method, attrs in parsed.cells:
        if "data-mean" in attrs:
            cells.setdefault(method, []).append(attrs)
    assert set(cells) == {"deepsvdd", "principals"}
    # the headers, as the page's script left them
    assert parsed.headers[1:] == [f"digits: {c} — click to sort" for _, c in table.columns]
    columns = [c for _, c in table.columns]
    frame = load_results(results)
    for method, attrs in cells.items():
        assert len(attrs) == len(columns)
        rows = frame[frame["method_label"] == method]
        for col, a in zip(columns, attrs):
            if col == "clean":
                fits = rows.drop_duplicates("fit_id")
                by_seed = fits.groupby("seed")["clean_auroc"].mean()
            else:
                by_seed = rows[rows["attack_label"] == col].groupby("seed")["adv_auroc"].mean()
            assert float(a["data-mean"]) == pytest.approx(100 * by_seed.mean(), abs=0.005), (method, col)
            lo, hi = table.ci[(method, "digits", col)]
            assert (float(a["data-lo"]), float(a["data-hi"])) == (pytest.approx(lo, abs=0.005),
                                                                  pytest.approx(hi, abs=0.005))  # fmt: skip
            assert float(a["data-lo"]) <= float(a["data-mean"]) <= float(a["data-hi"])
            if len(by_seed) > 1:
                assert f"± {100 * by_seed.std(ddof=1):.2f}" in a["title"]
    # principals has one seed per class: its cells' intervals over the two runs are the
    # frame's runs resampled (one run: the frame's own interval)
    one = frame[(frame["method_label"] == "principals") & (frame["normal_class"] == 0)]
    assert len(one) == 3  # fgsm, pgd, worst case
    # flags are explained on hover
    assert any(f.get("title") == FLAG_TITLES["masking?"] for f in parsed.flags)
    assert all(s.startswith("data:image/png;base64,") for s in parsed.images) and parsed.images
