"""The ``bench`` command: run, leaderboard, plot, report, merge, list.

User errors (unknown names, missing files, impossible ε or attack parameters, an
unknown device, ``--out`` naming a file, a locked store, ...) print one sentence and
exit with status 2, found before any training where the config alone shows them;
an interrupted run exits with status 2 too and keeps every finished job, so the
same command resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robustad.errors import UserError

DEFAULT_OUT = "results"


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="results folder: store, leaderboards, plots (default: results/)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description="Adversarial robustness benchmark for anomaly detectors."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train, attack and record every job of the grid")
    run.add_argument("--preset", default="quick", help="quick (default), standard or paper")
    run.add_argument("--config", help="a YAML file overriding preset fields")
    run.add_argument("--methods", help="comma list of methods, or 'all'")
    run.add_argument("--datasets", help="comma list of datasets, or 'all'")
    run.add_argument("--classes", help="comma list of normal classes, or 'all'")
    run.add_argument("--seeds", help="comma list of seeds")
    run.add_argument("--attacks", help="comma list of attacks, or 'all'")
    run.add_argument("--eps", help="budget(s): 0.03, 8/255, or a comma list for a sweep")
    run.add_argument("--norm", help="Linf or L2")
    run.add_argument("--attack-mode", dest="attack_mode", help="both, normal or anomaly")
    run.add_argument("--batch-size", dest="batch_size", type=int, help="attack batch size")
    run.add_argument("--plugin", action="append", default=[],
                     help="import MODULE (or file.py) before the run so it can register")  # fmt: skip
    run.add_argument("--data-root", dest="data_root", help="folder holding datasets")
    run.add_argument("--download", action="store_true", default=None,
                     help="download missing datasets (needs the network)")  # fmt: skip
    run.add_argument("--device", help="auto (default: CUDA when available), cpu, cuda, cuda:N or mps")
    run.add_argument("--executor", help="local (default) or ray (docs/SCALING.md)")
    run.add_argument("--ray-address", dest="ray_address",
                     help="with --executor ray: none = a private local Ray, 'auto' = the Ray "
                          "cluster running on this machine, or host:port / ray://host:port")  # fmt: skip
    run.add_argument("--ray-cpus-per-task", dest="ray_cpus_per_task", type=float,
                     help="with --executor ray: CPUs per task, also its torch thread count "
                          "(default 1)")  # fmt: skip
    run.add_argument("--ray-gpus-per-task", dest="ray_gpus_per_task", type=float,
                     help="with --executor ray: GPUs per task, fractions allowed "
                          "(default 1 when the run uses CUDA, else 0)")  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no progress output")
    _add_out(run)

    lb = sub.add_parser("leaderboard", help="print and write the leaderboard from the store")
    lb.add_argument("--format", choices=["csv", "latex", "md"], default="md")
    lb.add_argument("--attack-mode", dest="attack_mode", default="both",
                    choices=["both", "normal", "anomaly"])  # fmt: skip
    lb.add_argument("--ci", action="store_true",
                    help="show the 95%% bootstrap interval of every cell in Markdown/LaTeX "
                         "(the CSV always has it)")  # fmt: skip
    _add_out(lb)

    pl = sub.add_parser("plot", help="draw figures from the store into <out>/plots")
    pl.add_argument("--attack-mode", dest="attack_mode", default="both",
                    choices=["both", "normal", "anomaly"])  # fmt: skip
    _add_out(pl)

    rp = sub.add_parser("report", help="write one self-contained <out>/report.html from the store")
    rp.add_argument("--attack-mode", dest="attack_mode", default="both",
                    choices=["both", "normal", "anomaly"])  # fmt: skip
    _add_out(rp)

    mg = sub.add_parser("merge", help="copy the finished jobs of other results folders into --out")
    mg.add_argument("sources", nargs="+", help="results folders (or their bench.sqlite) to copy from")
    _add_out(mg)

    ls = sub.add_parser("list", help="list registered methods, attacks or datasets")
    ls.add_argument("what", choices=["methods", "attacks", "datasets"])
    ls.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. '*svdd*'")
    ls.add_argument("--plugin", action="append", default=[])
    ls.add_argument("--data-root", dest="data_root",
                    help="with 'datasets': where to look for the files (as for bench run)")  # fmt: skip
    return parser


def _open_store(out: str):
    from robustad.benchmark.store import Store

    path = Path(out) / "bench.sqlite"
    if not path.is_file():
        raise UserError(f"no results store at {path}; run 'bench run --out {out}' first")
    return Store(path)


def cmd_run(args: argparse.Namespace) -> int:
    from robustad.benchmark.frame import write_runs_csv
    from robustad.benchmark.leaderboard import build_table, to_markdown, write_leaderboards
    from robustad.benchmark.plots import write_plots
    from robustad.benchmark.runner import run_grid
    from robustad.benchmark.store import Store
    from robustad.config import resolve
    from robustad.registry import load_plugin

    for module in args.plugin:
        load_plugin(module)
    overrides = {k: getattr(args, k) for k in (
        "methods", "datasets", "classes", "seeds", "attacks", "eps", "norm", "attack_mode",
        "batch_size", "data_root", "download", "device", "executor",
        "ray_address", "ray_cpus_per_task", "ray_gpus_per_task")}  # fmt: skip
    cfg = resolve(args.preset, args.config, overrides)
    out = Path(args.out)
    try:
        counts = run_grid(cfg, out, quiet=args.quiet, plugins=args.plugin)
    except KeyboardInterrupt:
        print(
            f"bench: interrupted; finished jobs are saved in {out / 'bench.sqlite'}, "
            "run the same command again to finish the rest",
            file=sys.stderr,
        )
        return 2
    with Store(out / "bench.sqlite") as store:
        paths = write_leaderboards(store, out, mode=cfg["attack_mode"])
        paths["runs"] = write_runs_csv(store, out, mode=cfg["attack_mode"])
        plots = write_plots(store, out, mode=cfg["attack_mode"])
        print(to_markdown(build_table(store, cfg["attack_mode"])))
    print(f"jobs: {counts['done']} run, {counts['skipped']} already in the store, {counts['failed']} failed")
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f" and {len(plots)} plot files")
    if counts["failed"]:
        print(f"some jobs failed; their tracebacks are in {out / 'bench.sqlite'} (table jobs)")
        return 1
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from robustad.benchmark.frame import write_runs_csv
    from robustad.benchmark.leaderboard import EXTENSIONS, FORMATS, build_table

    with _open_store(args.out) as store:
        table = build_table(store, args.attack_mode, ci=args.ci or args.format == "csv")
        text = FORMATS[args.format](table, ci=args.ci)
        write_runs_csv(store, args.out, args.attack_mode)  # the table's runs, as data
    path = Path(args.out) / f"leaderboard.{EXTENSIONS[args.format]}"
    path.write_text(text)
    print(text, end="")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from robustad.benchmark.plots import write_plots

    with _open_store(args.out) as store:
        paths = write_plots(store, args.out, args.attack_mode)
    for p in paths:
        print(p)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from robustad.benchmark.report import write_report

    with _open_store(args.out) as store:
        path = write_report(store, args.out, args.attack_mode)
    print(path)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from robustad.benchmark.driver import merge_results

    c = merge_results(args.sources, args.out)
    print(f"merged into {Path(args.out) / 'bench.sqlite'}: {c['copied']} jobs copied, "
          f"{c['already']} already there (kept), {c['conflicts']} conflicting (not copied: "
          f"the same fit id trained to other clean scores), {c['no_checkpoint']} fits without "
          "a checkpoint (their results are kept; more attacks on them need a refit)")  # fmt: skip
    print(f"bench leaderboard --out {args.out} writes its leaderboard")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from robustad.registry import ATTACKS, DATASETS, METHODS, load_plugin

    for module in args.plugin:
        load_plugin(module)
    registry = {"methods": METHODS, "attacks": ATTACKS, "datasets": DATASETS}[args.what]
    names = registry.list(args.pattern)
    if not names:
        print(f"no {args.what} match {args.pattern!r}")
        return 0
    width = max(len(n) for n in names)
    for name in names:
        meta = registry.get(name).metadata
        facts = "; ".join(f"{k}: {v}" for k, v in meta.items() if k != "class_names" and not callable(v))
        print(f"{name:<{width}}  {facts}")
        names_ = meta.get("class_names") or []
        if args.what == "datasets" and names_ != [str(i) for i in range(len(names_))]:
            classes = ", ".join(f"{i} {c}" for i, c in enumerate(names_))
            print(f"{'':<{width}}  classes: {classes}")
        if callable(meta.get("locate")):  # datasets: where the files are looked for, and if found
            found, where = meta["locate"](getattr(args, "data_root", None))
            print(f"{'':<{width}}  files: {'found' if found else 'NOT FOUND'}: {where}")
        if callable(meta.get("weights_found")):  # methods with a pretrained backbone
            print(f"{'':<{width}}  weights: {meta['weights_found']()}")
    return 0


COMMANDS = {"run": cmd_run, "leaderboard": cmd_leaderboard, "plot": cmd_plot, "report": cmd_report,
            "merge": cmd_merge, "list": cmd_list}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
