"""``bench report``: one self-contained HTML page of the results in a store.

``<out>/report.html`` needs no server, no network and nothing beside it: the CSS and
the JavaScript are inline and the figures are base64 PNGs. It holds

* the leaderboard as a sortable table (click a header): each cell's AUROC (%) with its
  95% bootstrap interval and ± the standard deviation over seeds, its flags explained on
  hover (``title`` attributes), and a link to the runs behind it;
* the notes of the leaderboard, the robustness curves, the clean-vs-robust scatter, the
  bar chart and the per-class heatmaps, and per-class tables;
* provenance: every run of the frame (``robustad.load_results``) with its interval, and
  every stored job with its configuration (the job's spec and preset, and the
  ``bench run`` line that reruns it), library versions, git revision, device and times.

Every number comes from the store; the page is a function of it (and of the attack mode).
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from robustad.benchmark.bootstrap import LEVEL, N_BOOT
from robustad.benchmark.frame import results_frame
from robustad.benchmark.leaderboard import (
    CERTIFIED,
    CONSTANT_DETECTOR_AUROC,
    INCOMPLETE,
    RANDOM_WEIGHTS,
    WORST,
    Table,
    build_table,
    current_fits,
)
from robustad.benchmark.store import Store
from robustad.threat import format_eps

REPORT = "report.html"

#: what each flag means (docs/THREAT_MODEL.md), shown on hover
FLAG_TITLES = {
    "zero-grad": "over 10% of the samples had a zero input gradient: the attack may not have moved them",
    "box-masking": "over 1% of the pixels at 0 or 1 had a zero gradient there but not just inside the "
    "box: a clamp hides the attacker's direction",
    "masking?": "Square (black-box) beat this white-box attack by over 1 point: a sign of gradient masking",
    "non-monotone": "AUROC rose as ε grew in a sweep: an attack that is not strong enough",
    RANDOM_WEIGHTS: "a method published with a pretrained backbone, run here with randomly initialised "
    "weights: not the published method's number",
    INCOMPLETE: "the cell averages n of the N (normal class, seed) runs behind the row's clean cell: "
    "not comparable with the complete cells",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
  padding:0 1em;color:#222}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none}th.text,td.text{text-align:left}
td.best .v{font-weight:bold}.ci{color:#666;font-size:.85em;display:block}.v,.ci{white-space:nowrap}
.flag{color:#a33;font-size:.85em;cursor:help;border-bottom:1px dotted #a33}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:.8em}
.scroll{overflow-x:auto}details{margin:.3em 0}code{font-size:.9em}
th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
"""

JS = """
function sortTable(th){
  const table=th.closest('table'), i=[...th.parentNode.children].indexOf(th);
  const dir=th.dataset.dir==='desc'?'asc':'desc';
  table.querySelectorAll('th').forEach(h=>delete h.dataset.dir); th.dataset.dir=dir;
  const body=table.tBodies[0], rows=[...body.rows];
  const key=r=>{const c=r.cells[i]; const v=c.dataset.value;
    return v===undefined||v===''?null:(isNaN(+v)?v:+v);};
  rows.sort((a,b)=>{const x=key(a),y=key(b);
    if(x===null)return 1; if(y===null)return -1;
    const o=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));
    return dir==='asc'?o:-o;});
  rows.forEach(r=>body.appendChild(r));
}
document.querySelectorAll('table.sortable').forEach(t=>{
  t.dataset.ready='1';
  t.querySelectorAll('thead th').forEach(th=>{th.title=(th.title?th.title+' — ':'')+'click to sort';
    th.addEventListener('click',()=>sortTable(th));});
});
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(v: float, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _flag_spans(flags: set[str]) -> str:
    out = []
    for f in sorted(flags):
        title = FLAG_TITLES.get(f.split(" ")[0] if f.startswith(INCOMPLETE) else f, "a reliability flag")
        out.append(f'<span class="flag" title="{_e(title)}">[{_e(f)}]</span>')
    return " ".join(out)


def _cell_runs(table: Table, frame: pd.DataFrame, fits: dict[str, dict]) -> dict[tuple, list[str]]:
    """(row, dataset, column) → the job ids behind the leaderboard cell."""
    by_threat = {(d, base, n, round(e, 10)): c for (d, c), (base, n, e) in table.threats.items()}
    runs: dict[tuple, list[str]] = defaultdict(list)
    current = frame[~frame["superseded"].astype(bool)]
    for fit_id in fits:
        rows = current[current["fit_id"] == fit_id]
        if len(rows):
            runs[(rows.iloc[0]["method_label"], rows.iloc[0]["dataset_label"], "clean")].append(fit_id)
    for r in current.itertuples(index=False):
        col = by_threat.get((r.dataset_label, r.attack_label, r.norm, round(r.eps, 10)))
        if col is None:
            continue
        if r.attack == WORST:
            same = current[(current["fit_id"] == r.fit_id) & (current["norm"] == r.norm)
                           & (current["eps"] == r.eps) & (current["attack"] != WORST)]  # fmt: skip
            runs[(r.method_label, r.dataset_label, col)] += list(same["eval_id"])
        else:
            runs[(r.method_label, r.dataset_label, col)].append(r.eval_id)
        if not math.isnan(r.certified_auroc):
            ccol = by_threat.get((r.dataset_label, CERTIFIED, r.norm, round(r.eps, 10)))
            if ccol:
                runs[(r.method_label, r.dataset_label, ccol)].append(r.eval_id)
    return runs


def _leaderboard_html(table: Table, runs: dict[tuple, list[str]], cell_ids: dict[tuple, str]) -> str:
    head = ['<th class="text" title="method configuration (row label)">method</th>']
    for d, c in table.columns:
        head.append(f'<th title="{_e(d)}: {_e(c)}">{_e(d)}<br>{_e(c)}</th>')
    body = []
    for m in table.methods:
        tds = [f'<td class="text" data-value="{_e(m)}">{_e(m)}</td>']
        for d, c in table.columns:
            key = (m, d, c)
            cell = table.cells.get(key)
            if cell is None:
                tds.append('<td data-value="">–</td>')
                continue
            mean, std = cell
            interval = table.ci.get(key)
            n = len(set(runs.get(key, [])))
            title = []
            if interval:
                title.append(f"{100 * LEVEL:g}% bootstrap interval over the test samples: "
                             f"[{interval[0]:.2f}, {interval[1]:.2f}]")  # fmt: skip
            if std is not None:
                title.append(f"± {std:.2f} = standard deviation over seeds")
            title.append(f"{n} stored job(s) behind this cell; click for their provenance")
            text = f"{mean:.1f}" + ("" if std is None else f" ± {std:.1f}")
            best = ' class="best"' if mean == table.best(d, c) else ""
            ci_html = f'<span class="ci">[{interval[0]:.1f}, {interval[1]:.1f}]</span>' if interval else ""
            flags = table.flags.get(key)
            tds.append(
                f'<td{best} data-value="{mean:.6f}" data-mean="{mean:.2f}"'
                + (f' data-lo="{interval[0]:.2f}" data-hi="{interval[1]:.2f}"' if interval else "")
                + f' title="{_e("; ".join(title))}"><a class="v" href="#{cell_ids[key]}">{_e(text)}</a>'
                + ci_html
                + (" " + _flag_spans(flags) if flags else "")
                + "</td>"
            )
        body.append('<tr data-method="' + _e(m) + '">' + "".join(tds) + "</tr>")
    return (
        '<div class="scroll"><table id="leaderboard" class="sortable"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "\n".join(body)
        + "</tbody></table></div>"
    )


def _frame_table(df: pd.DataFrame, table_id: str) -> str:
    cols = [("method_label", "method"), ("dataset_label", "dataset"), ("normal_class", "class"),
            ("seed", "seed"), ("attack_label", "attack"), ("norm", "norm"), ("eps", "ε"),
            ("clean_auroc", "clean AUROC"), ("adv_auroc", "attacked AUROC"), ("flags", "flags"),
            ("fit_id", "fit"), ("eval_id", "eval")]  # fmt: skip
    head = "".join(f'<th class="text">{_e(t)}</th>' if k in ("method_label", "dataset_label", "attack_label",
                   "flags", "fit_id", "eval_id") else f"<th>{_e(t)}</th>" for k, t in cols)  # fmt: skip
    rows = []
    for r in df.to_dict("records"):
        tds = []
        for k, _ in cols:
            v = r[k]
            if k in ("clean_auroc", "adv_auroc"):
                lo, hi = r[f"{k}_lo"], r[f"{k}_hi"]
                ci = "" if math.isnan(lo) else f'<span class="ci">[{100 * lo:.1f}, {100 * hi:.1f}]</span>'
                tds.append(f'<td data-value="{100 * v:.6f}">{100 * v:.1f}{ci}</td>')
            elif k == "eps":
                tds.append(f'<td data-value="{v}">{_e(format_eps(v))}</td>')
            elif k in ("fit_id", "eval_id"):
                cell = "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                link = f'<a href="#job-{_e(cell)}"><code>{_e(cell)}</code></a>' if cell else "–"
                tds.append(f'<td class="text" data-value="{_e(cell)}">{link}</td>')
            elif k == "flags":
                tds.append(f'<td class="text" data-value="{_e(v)}">'
                           f"{_flag_spans(set(v.split(';'))) if v else ''}</td>")  # fmt: skip
            else:
                cls = ' class="text"' if isinstance(v, str) else ""
                tds.append(f'<td{cls} data-value="{_e(v)}">{_e(v)}</td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="scroll"><table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")  # fmt: skip


def rerun_command(fit: dict, eval_row: dict | None = None) -> str:
    """A ``bench run`` line and YAML config that rerun a stored job (its spec pins the rest)."""
    cfg = fit.get("config") or {}
    parts = ["bench run"]
    if cfg.get("preset"):
        parts.append(f"--preset {cfg['preset']}")
    parts += [f"--methods {fit['method']}", f"--datasets {fit['dataset']}",
              f"--classes {fit['normal_class']}", f"--seeds {fit['seed']}"]  # fmt: skip
    if cfg.get("data_root"):
        parts.append(f"--data-root {cfg['data_root']}")
    yaml = {"method_params": {fit["method"]: cfg.get("params") or {}}}
    if cfg.get("data_params"):
        yaml["dataset_params"] = {fit["dataset"]: cfg["data_params"]}
    if eval_row is not None:
        ecfg = eval_row.get("config") or {}
        parts += [f"--attacks {eval_row['attack']}", f"--norm {eval_row['norm']}",
                  f"--eps {format_eps(float(eval_row['eps']))}"]  # fmt: skip
        yaml["attack_params"] = {eval_row["attack"]: ecfg.get("params") or {}}
        if ecfg.get("batch_size"):
            parts.append(f"--batch-size {ecfg['batch_size']}")
    parts.append("--config config.yaml")
    # JSON is YAML: the exact values, flow style
    lines = [f"{k}: {json.dumps(v, sort_keys=True)}" for k, v in yaml.items()]
    return " ".join(parts) + "\n# config.yaml\n" + "\n".join(lines)


def _jobs_html(fits: dict[str, dict], evals: list[dict], wanted: set[str]) -> str:
    out = []
    for row in [*fits.values(), *evals]:
        if row["job_id"] not in wanted:
            continue
        fit = fits.get(row["fit_id"]) if row["kind"] == "eval" else row
        what = f"{row['method']} on {row['dataset']}, class {row['normal_class']}, seed {row['seed']}: "
        if row["kind"] == "eval":
            what += f"{row['attack']} {row['norm']} ε={format_eps(float(row['eps']))}"
        else:
            what += "fit"
        facts = {
            "git revision": row.get("git_rev") or "unknown",
            "library versions": row.get("versions") or {},
            "config (the job's spec, preset and batch size)": row.get("config") or {},
            "metrics": row.get("metrics") or {},
            "info": row.get("info") or {},
            "duration (s)": row.get("duration"),
            "finished (Unix time)": row.get("finished"),
        }
        body = "".join(f"<dt>{_e(k)}</dt><dd><pre>{_e(json.dumps(v, indent=1, sort_keys=True, default=str))}"
                       "</pre></dd>" for k, v in facts.items())  # fmt: skip
        cmd = rerun_command(fit, row if row["kind"] == "eval" else None) if fit else ""
        out.append(
            f'<details id="job-{_e(row["job_id"])}"><summary><code>{_e(row["job_id"])}</code> '
            f"{_e(what)}</summary><dl>{body}<dt>rerun</dt><dd><pre>{_e(cmd)}</pre></dd></dl></details>"
        )
    return "\n".join(out)


def _summary(fits: dict[str, dict], evals: list[dict]) -> str:
    rows = [*fits.values(), *evals]
    revs = sorted({r.get("git_rev") or "unknown" for r in rows})
    versions = sorted({json.dumps(r.get("versions") or {}, sort_keys=True) for r in rows})
    presets = sorted({str((r.get("config") or {}).get("preset")) for r in rows})
    devices = sorted({str((f.get("info") or {}).get("device")) for f in fits.values()})
    items = [
        f"{len(fits)} fitted model(s), {len(evals)} attack run(s) (finished jobs in the store)",
        "git revision(s): " + ", ".join(f"<code>{_e(r)}</code>" for r in revs),
        "preset(s): "
        + ", ".join(_e(p) for p in presets)
        + "; device(s): "
        + ", ".join(_e(d) for d in devices),
    ]
    vers = "".join(f"<pre>{_e(v)}</pre>" for v in versions)
    summary = f"library versions ({len(versions)} set(s))"
    return (
        "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
        f"<details><summary>{summary}</summary>{vers}</details>"
    )


def render_report(store: Store, mode: str = "both", n_boot: int = N_BOOT, title: str | None = None) -> str:
    """The report page (a string) of ``store`` (see the module docstring)."""
    from robustad.benchmark import plots

    table = build_table(store, mode, ci=n_boot > 0, n_boot=max(n_boot, 1))
    frame = results_frame(store, mode, n_boot=n_boot)
    all_fits = {r["job_id"]: r for r in store.jobs(kind="fit", status="done")}
    evals = [r for r in store.jobs(kind="eval", status="done") if r["fit_id"] in all_fits]
    fits = current_fits(store)
    runs = _cell_runs(table, frame, fits)
    cell_ids = {key: f"cell-{i}" for i, key in enumerate(table.cells)}

    parts = [f"<h1>{_e(title or 'robustad results')}</h1>", _summary(all_fits, evals)]
    parts.append("<h2 id='leaderboard-section'>Leaderboard</h2>")
    parts.append(
        f"<p>AUROC (%), mean over normal classes (± the standard deviation over seeds), attack mode "
        f"'{_e(mode)}'; under each value its {100 * LEVEL:g}% bootstrap interval over the test samples. "
        f"Bold: the best of a column. A constant detector scores {CONSTANT_DETECTOR_AUROC:.1f}. "
        "Hover a flag for its meaning, click a header to sort, click a value for its runs.</p>"
    )
    parts.append(_leaderboard_html(table, runs, cell_ids))
    parts.append("<ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in table.notes) + "</ul>")

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        figures = {
            "Robustness curves": plots.plot_robustness_curves(store, d, mode),
            "Clean vs robust": plots.plot_clean_vs_robust(store, d, mode),
            "Clean vs attacked": plots.plot_clean_vs_attacked(store, d, mode),
        }
        per_class = plots.plot_class_heatmaps(store, d, mode, frame=frame)
        parts.append("<h2 id='figures'>Figures</h2>")
        for name, paths in figures.items():
            pngs = [p for p in paths if p.suffix == ".png"]
            if pngs:
                parts.append(f"<h3>{_e(name)}</h3>" + "".join(_img(p, f"{name}: {p.stem}") for p in pngs))
        parts.append("<h2 id='per-class'>Per normal class</h2>")
        parts += [_img(p, p.stem) for p in per_class if p.suffix == ".png"]
    for dataset, panels in plots.per_class_aurocs(frame).items() if len(frame) else []:
        for name, values in panels.items():
            head = "".join(f"<th>{_e(c)}</th>" for c in values.columns)
            rows = "".join(
                f'<tr><td class="text">{_e(m)}</td>'
                + "".join(f'<td data-value="{v:.6f}">{_num(v)}</td>' for v in values.loc[m])
                + "</tr>"
                for m in values.index
            )
            parts.append(
                f"<details><summary>{_e(dataset)}: {_e(name)}</summary><table class='sortable per-class'>"
                f"<thead><tr><th class='text'>method \\ normal class</th>{head}</tr></thead>"
                f"<tbody>{rows}</tbody></table></details>"
            )

    parts.append("<h2 id='provenance'>Provenance</h2>")
    parts.append("<h3>Leaderboard cells and their runs</h3>")
    for key, cid in cell_ids.items():
        ids = list(dict.fromkeys(runs.get(key, [])))
        links = ", ".join(f'<a href="#job-{_e(j)}"><code>{_e(j)}</code></a>' for j in ids) or "–"
        parts.append(f'<p id="{cid}">{_e(" / ".join(key))}: {links}</p>')
    parts.append("<h3>Runs (one row per attack run and per-sample worst case)</h3>")
    parts.append(_frame_table(frame, "runs") if len(frame) else "<p>no attack runs</p>")
    parts.append("<h3>Stored jobs</h3>")
    parts.append(_jobs_html(all_fits, evals, {r["job_id"] for r in [*all_fits.values(), *evals]}))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title or 'robustad results')}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(parts)
        + f"\n<script>{JS}</script>\n</body></html>\n"
    )


def write_report(store: Store, out: str | Path, mode: str = "both", n_boot: int = N_BOOT) -> Path:
    """Write ``<out>/report.html`` (:func:`render_report`); returns its path."""
    path = Path(out) / REPORT
    path.write_text(render_report(store, mode, n_boot, title=f"robustad results: {Path(out).name}"),
                    encoding="utf-8")  # fmt: skip
    return path


__all__ = ["FLAG_TITLES", "REPORT", "render_report", "rerun_command", "write_report"]
