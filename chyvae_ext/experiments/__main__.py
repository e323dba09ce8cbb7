"""``python -m chyvae_ext.experiments {sweep,collect,compare,plot}``.

sweep --grid FILE [--dry-run] [--ensemble [--ensemble-size N]] [--set KEY=VALUE ...]
      [--launcher {local,ray,slurm}] [--ray-address ADDR] [--slurm-partition P] [--slurm-time MIN]
                                 run a grid of trainings (resumable; see chyvae_ext.experiments.grid);
                                 --ensemble trains runs of one shape together as one batched model;
                                 --set gives every run a training option (e.g. --set dataset=dsprites
                                 --set data_root=PATH), over what the grid file says;
                                 --launcher: on this machine (default), a Ray cluster or SLURM
                                 (chyvae_ext.experiments.launchers)
collect ROOT [ROOT ...] [--out DIR] [--no-score] [--at-step S] [--metric-seeds S]
                                 results.csv and results_by_step.csv from every run under ROOT, with
                                 every run's last checkpoint scored under both FactorVAE protocols and
                                 MIG and the untrained floor (minutes per run, cached; --no-score
                                 computes none and shows the cached ones);
                                 --at-step S: the table of every run's evaluation at step S, scored
                                 from the checkpoint training keeps there; --metric-seeds S: every
                                 score under metric seeds 0 .. S-1, the table showing their means
compare CSV --a MODEL=VALUE[:VARIANT] --b MODEL=VALUE[:VARIANT] [--metric M] [--at-step S] [--lower-is-better]
                                 "A beats B" tested: Welch's t-test over the seeds of collect's CSV
                                 (finished runs; with --at-step, every run's evaluation at step S), the
                                 verdict in the words it supports (chyvae_ext.experiments.verdicts)
plot CSV [--out DIR] [--at-step S] [--runs ROOT]
                                 tradeoff.png, by_step.png, time.png from collect's CSVs (the trade-off
                                 at step S with --at-step); --runs: each model's best run's traversals
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .._checks import ArgumentParser, check_int
from .collect import (
    SEED_MEAN_COLUMNS,
    STATES_ANY,
    TABLE_COLUMNS,
    collect_runs,
    markdown_table,
    read_csv,
    rows_at_step,
    summarise,
)
from .grid import LAUNCHERS, load_grid
from .plot import plot_all
from .sweep import sweep
from .verdicts import compare_line


def parse_overrides(items: list[str]) -> dict:
    """["dataset=dsprites", "steps=100"] to {"dataset": "dsprites", "steps": 100} (values read as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"--set {item!r}: the value is not YAML ({problem})") from None
    return out


def make_parser() -> argparse.ArgumentParser:
    """The command line: its four subcommands and their options."""
    parser = ArgumentParser(
        prog="python -m chyvae_ext.experiments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep", help="run a grid of trainings")
    p.add_argument("--grid", required=True, help="YAML or JSON grid file")
    p.add_argument("--dry-run", action="store_true", help="list what would run")
    p.add_argument("--ensemble", action="store_true", help="train runs of one shape as one batched model")
    p.add_argument("--ensemble-size", type=int, help="at most this many members per ensemble")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a training option for every run (VALUE read as YAML), over the grid file's; repeatable")
    p.add_argument("--launcher", choices=LAUNCHERS,
                   help="where the runs train (default: the grid's launcher, or local)")
    p.add_argument("--ray-address", dest="ray_address",
                   help="ray: the cluster to connect to (default RAY_ADDRESS, else a local cluster)")
    p.add_argument("--retries", type=int, help="ray: times a failed run is retried (default: the grid's, or 2)")
    p.add_argument("--slurm-partition", dest="slurm_partition", help="slurm: the partition (default: the grid's)")
    p.add_argument("--slurm-time", dest="slurm_time", type=int, metavar="MINUTES",
                   help="slurm: each array task's time limit (default: the grid's, or 1440); a run past it is "
                   "requeued and resumes")
    p.add_argument("--slurm-cluster", dest="slurm_cluster", choices=("slurm", "local", "debug"),
                   help="slurm: submitit's executor (default: slurm where sbatch is found); local runs the array here")
    p = sub.add_parser("collect", help="gather runs into CSV")
    p.add_argument("root", metavar="ROOT", nargs="+", help="directories of runs (one or more)")
    p.add_argument("--out", help="directory for the CSVs (default the first ROOT)")
    p.add_argument("--no-score", dest="score", action="store_false",
                   help="compute no second opinion or floor (those already cached are shown)")
    p.add_argument("--at-step", dest="at_step", type=int,
                   help="print the table at this evaluation step (runs still going included)")
    p.add_argument("--metric-seeds", dest="metric_seeds", type=int, default=1, metavar="S",
                   help="score each checkpoint under metric seeds 0 .. S-1 and show their means (default 1)")
    p = sub.add_parser("compare", help="test whether one setting beats another (Welch's t over seeds)")
    p.add_argument("csv", metavar="CSV", help="collect's results.csv")
    p.add_argument("--a", required=True, metavar="MODEL=VALUE[:VARIANT]", help="the setting claimed better")
    p.add_argument("--b", required=True, metavar="MODEL=VALUE[:VARIANT]", help="the setting it is compared with")
    p.add_argument("--metric", default="factor_vae", help="a column of the CSV (default factor_vae)")
    p.add_argument("--at-step", dest="at_step", type=int, help="compare the evaluations at this step")
    p.add_argument("--lower-is-better", dest="higher", action="store_false",
                   help="the metric is better lower (recon, neg_elbo)")
    p = sub.add_parser("plot", help="draw the figures")
    p.add_argument("csv", metavar="CSV")
    p.add_argument("--out", help="directory for the figures (default: the CSV's)")
    p.add_argument("--metric", default="factor_vae")
    p.add_argument("--at-step", dest="at_step", type=int, help="the trade-off at this evaluation step")
    p.add_argument("--runs", dest="runs_root", help="the run directories: draw each model's best run's traversals")
    return parser


def _sweep(args) -> int:
    grid = load_grid(args.grid, parse_overrides(args.overrides))
    if args.ensemble_size is not None:
        check_int("--ensemble-size", args.ensemble_size, 1)
    if args.ensemble or args.ensemble_size is not None:
        size = args.ensemble_size if args.ensemble_size is not None else grid.ensemble_size
        grid = dataclasses.replace(grid, ensemble=True, ensemble_size=size)
    if args.retries is not None:
        grid = dataclasses.replace(grid, retries=check_int("--retries", args.retries))
    if args.slurm_time is not None:
        check_int("--slurm-time", args.slurm_time, 1)
    outcome = sweep(grid, dry_run=args.dry_run, launcher=args.launcher, ray_address=args.ray_address,
                    slurm_partition=args.slurm_partition, slurm_time=args.slurm_time,
                    slurm_cluster=args.slurm_cluster)
    if any(o == "interrupted" for o in outcome.values()):
        return 130
    return 1 if any(o == "failed" for o in outcome.values()) else 0


def _collect(args) -> int:
    if args.at_step is not None:
        check_int("--at-step", args.at_step)
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.score else None
    check_int("--metric-seeds", args.metric_seeds, 1)
    path, rows = collect_runs(args.root, args.out, score=args.score, at_step=args.at_step, progress=progress,
                              metric_seeds=args.metric_seeds)
    columns = TABLE_COLUMNS if args.metric_seeds == 1 else SEED_MEAN_COLUMNS
    if args.at_step is None:
        print(markdown_table(summarise(rows, columns), columns))
    else:
        at = rows_at_step(read_csv(path.with_name("results_by_step.csv")), args.at_step)
        if not at:
            raise ValueError(f"--at-step {args.at_step}: no run has an evaluation at that step")
        floor = [r for r in rows if r.get("state") == "untrained"]
        print(markdown_table(summarise(at + floor, columns, states=STATES_ANY), columns))
    print(f"{len(rows)} runs -> {path} and {path.with_name('results_by_step.csv')}")
    return 0


def _compare(args) -> int:
    path = Path(args.csv)
    if not path.is_file():
        raise ValueError(f"CSV {path}: no such file")
    if args.at_step is not None:
        rows = rows_at_step(read_csv(path.with_name("results_by_step.csv")), check_int("--at-step", args.at_step))
    else:
        rows = [r for r in read_csv(path) if r.get("state", "finished") == "finished"]
    print(compare_line(rows, args.a, args.b, args.metric, higher_is_better=args.higher))
    return 0


def _plot(args) -> int:
    if args.at_step is not None:
        check_int("--at-step", args.at_step)
    for path in plot_all(args.csv, args.out, args.metric, at_step=args.at_step, runs_root=args.runs_root):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    command = {"sweep": _sweep, "collect": _collect, "compare": _compare, "plot": _plot}[args.command]
    try:
        return command(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
