"""Gather every run under a directory into CSV: final metrics per run, and every evaluation by step.

``results.csv``: one row per run with its model, swept hyperparameter and value, seed, final step,
state, the last evaluation's metrics and held-out terms, and the median training time per 1,000
steps; unless ``score=False``, also every run's last checkpoint scored under both FactorVAE
protocols and MIG, and "untrained" rows (the floor: the same models at step 0), see
:mod:`chyvae_ext.experiments.scores`. ``results_by_step.csv``: one row per evaluation of every run
(for metric-vs-step figures).
"""

from __future__ import annotations

import csv
import statistics
import warnings
from pathlib import Path

from .. import runfiles
from .._checks import check_int
from ..config import SYNTHETIC, run_config, run_options
from ..models.registry import MODEL_KINDS

# the hyperparameter each model's rows are grouped by (the plain VAE's beta is always 1)
HYPER = {name: kind.hyper for name, kind in MODEL_KINDS.items()}
TABLE_COLUMNS = ("factor_vae", "factor_vae_kim_mnih", "mig_scored", "recon", "neg_elbo")  # MIG as collect scored it
# with several metric seeds: each score's mean over them
SEED_MEAN_COLUMNS = ("factor_vae_chyvae_mean", "factor_vae_kim_mnih_mean", "mig_scored_mean", "recon", "neg_elbo")
STATES_ANY = ("finished", "untrained", "running", "interrupted", "failed", "unknown")
_FIRST = ["run", "model", "hyper", "value", "seed", "step", "state"]


def _run_rows(run_dir: Path) -> tuple[dict, list[dict]] | None:
    if not runfiles.has_config(run_dir):
        return None  # not a run directory
    try:
        config = run_options(run_dir, what="ROOT")
    except ValueError as exc:  # a damaged or foreign config.json: said, not dropped in silence
        warnings.warn(f"collect: leaving out {run_dir}: {exc}", RuntimeWarning, stacklevel=2)
        return None
    status = runfiles.read_status(run_dir)
    rows = runfiles.read_metrics(run_dir)
    model = config["model"]
    head = {
        "run": run_dir.name,
        "model": model,
        "hyper": HYPER[model],
        "value": config[HYPER[model]],
        "seed": config["seed"],
        "step": status.get("step", 0),
        "state": status.get("state", "unknown"),
    }
    variant = MODEL_KINDS[model].variant(config)
    if variant:
        head["variant"] = variant
    evals = [r for r in rows if r.get("kind") == "eval"]
    by_step = [head | {"step": r["step"]} | {k: v for k, v in r.items() if k not in ("kind", "step")} for r in evals]
    final = dict(head)
    if evals:
        final |= {k: v for k, v in evals[-1].items() if k not in ("kind", "step")}
    speeds = [r["steps_per_s"] for r in rows if r.get("kind") == "train" and r.get("steps_per_s")]
    if speeds:
        final["sec_per_1000_steps"] = 1000.0 / statistics.median(speeds)
    return final, by_step


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(_FIRST)
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def collect_runs(
    root: str | Path | list[str | Path],
    out: str | Path | None = None,
    *,
    score: bool = True,
    at_step: int | None = None,
    progress=None,
    metric_seeds: int = 1,
) -> tuple[Path, list[dict]]:
    """Write ``results.csv`` and ``results_by_step.csv`` (in ``out``, default the first root); returns (csv path, rows).

    ``root``: one directory of runs, or a list of them (a sweep's runs kept in two places); with
    several, each run is named ROOT_NAME/RUN, and two runs of one model, setting and seed that both
    count (both finished, or both evaluated at ``at_step``) are refused, so no seed is counted twice.
    Adds the second opinions (to each run's row, from its last checkpoint; with ``at_step``, to its
    evaluation row at that step instead, from the checkpoint kept there) and the untrained floor:
    computed where ``score`` (minutes per run on a CPU, cached), else only those already cached. Every
    other evaluation row shows the second opinions cached at its step, so that collecting at one step
    keeps in ``results_by_step.csv`` what an earlier ``at_step`` scored.
    ``progress`` receives a line as each score starts and ends. ``metric_seeds`` S > 1 scores each
    checkpoint (and floor) under metric seeds 0 .. S-1 and adds their means and standard deviations
    (``factor_vae_chyvae_mean``, ``..._sd``: :mod:`chyvae_ext.experiments.scores`).
    """
    from .scores import score_run, untrained_rows

    seeds = tuple(range(check_int("metric_seeds", metric_seeds, 1)))
    roots = [Path(r) for r in root] if isinstance(root, list | tuple) else [Path(root)]
    for r in roots:
        if not r.is_dir():
            raise ValueError(f"ROOT {r}: no such directory")
    finals, steps, configs = [], [], []
    if score and progress is not None:
        out_dir = Path(out) if out is not None else roots[0]
        progress(_plan_line(roots, out_dir, at_step, seeds))
    for r in roots:
        for run_dir in sorted(p.parent for p in r.rglob(runfiles.CONFIG)):
            got = _run_rows(run_dir)
            if got is None:
                continue
            if len(roots) > 1:
                for row in (got[0], *got[1]):
                    row["run"] = f"{r.name}/{run_dir.name}"
            # A run whose checkpoints are gone (a fresh clone: they are not in git) still shows the
            # scores cached at that step, and its configuration still gives the untrained floor.
            if at_step is None:
                got[0].update(score_run(run_dir, compute=score, progress=progress, metric_seeds=seeds))
            for row in got[1]:  # every evaluation row shows what was scored at its step before
                computed = score and row["step"] == at_step
                row.update(score_run(run_dir, step=row["step"], compute=computed, progress=progress,
                                     metric_seeds=seeds))
            for row in (got[0], *got[1]):  # MIG logged by training at a row's step is the score collect reuses
                if "mig" in row and "mig_scored" not in row:
                    row["mig_scored"] = row["mig"]
            configs.append(run_config(run_dir).resolved())
            finals.append(got[0])
            steps += got[1]
    if not finals:
        raise ValueError(f"ROOT {' '.join(map(str, roots))}: no run directories (with config.json) under it")
    counted = [r for r in steps if r["step"] == at_step] if at_step is not None else [
        r for r in finals if r["state"] == "finished"]
    seen: dict[tuple, str] = {}
    for row in counted:
        key = (row["model"], row["value"], row.get("variant", ""), row["seed"])
        if key in seen:
            where = f"at step {at_step}" if at_step is not None else "finished"
            variant = f" ({row['variant']})" if row.get("variant") else ""
            raise ValueError(f"runs {seen[key]} and {row['run']} are both {row['model']} {row['hyper']} = "
                             f"{row['value']}{variant} seed {row['seed']} {where}: collect only one of them")
        seen[key] = row["run"]
    out = Path(out) if out is not None else roots[0]
    out.mkdir(parents=True, exist_ok=True)
    finals += untrained_rows(configs, out / "untrained_scores.json", compute=score, progress=progress,
                             metric_seeds=seeds)
    _write_csv(out / "results.csv", finals)
    _write_csv(out / "results_by_step.csv", steps)
    return out / "results.csv", finals


def _plan_line(roots: list[Path], out: Path, at_step: int | None, seeds: tuple[int, ...]) -> str:
    """What collect is about to score, and about how long that takes on this machine (timed on 2,000
    images), said before it starts: the scores take minutes each on a CPU."""
    from ..looptools import duration
    from .scores import images_encoded, images_per_second, missing_scores, missing_untrained

    keys, runs, configs = [], 0, []
    for r in roots:
        for run_dir in sorted(p.parent for p in r.rglob(runfiles.CONFIG)):
            try:
                configs.append(run_config(run_dir).resolved())
            except ValueError:
                continue  # left out, with a warning, by the collection itself
            missing = missing_scores(run_dir, step=at_step, metric_seeds=seeds)
            runs += bool(missing)
            keys += missing
    floors = missing_untrained(configs, out / "untrained_scores.json", seeds)
    if not keys and not floors:
        return "collect: every score is cached or was logged by training; nothing to compute"
    counts: dict[str, int] = {}
    for k in keys + floors:
        name = next(n for n in ("factor_vae_chyvae", "factor_vae_kim_mnih", "mig_scored") if k.startswith(n))
        counts[name] = counts.get(name, 0) + 1
    names = {"factor_vae_chyvae": "FactorVAE (paper protocol)", "factor_vae_kim_mnih": "FactorVAE (kim_mnih)",
             "mig_scored": "MIG"}
    what = ", ".join(f"{n} {names[k]}" for k, n in counts.items())
    images = sum(images_encoded(k) for k in keys + floors)
    rate = images_per_second(next(c for c in configs if c.dataset in SYNTHETIC))
    return (f"collect: scoring {runs} run(s) and {len(floors)} untrained floor score(s): {what}; "
            f"{images:,} images, about {duration(images / rate)} at this machine's {rate:,.0f} images/s "
            "(--no-score shows only what is cached)")


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV written by collect, numbers as floats where they parse."""

    def conv(v: str):
        try:
            return float(v)
        except ValueError:
            return v

    with open(path, newline="") as f:
        return [{k: conv(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(
    rows: list[dict],
    metrics: tuple[str, ...] = ("factor_vae", "recon", "neg_elbo"),
    states: tuple[str, ...] = ("finished", "untrained"),
) -> list[dict]:
    """Per (model, hyperparameter value, variant): n seeds, and mean and sample std of each metric, over
    the rows whose state is in ``states`` (default the finished runs and the untrained floor: a run still
    going, or stopped, has its last evaluation at another step). Rows without a state count as finished."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("state", "finished") not in states:
            continue
        groups.setdefault((r["model"], r["hyper"], float(r["value"]), r.get("variant", "")), []).append(r)
    out = []
    for (model, hyper, value, variant), rs in sorted(groups.items()):
        s = {"model": model, "hyper": hyper, "value": value, "seeds": len(rs)}
        if variant:
            s["variant"] = variant
        for m in metrics:
            vals = [float(r[m]) for r in rs if m in r and r[m] != ""]
            if vals:
                s[f"{m}_mean"], s[f"{m}_std"] = mean_std(vals)
        out.append(s)
    return out


def rows_at_step(by_step: list[dict], step: int) -> list[dict]:
    """The rows of results_by_step at ``step``: every run's evaluation there, whatever its state."""
    return [r for r in by_step if int(float(r["step"])) == step]


def markdown_table(summary: list[dict], metrics: tuple[str, ...] = ("factor_vae", "recon")) -> str:
    head = "| model | hyperparameter | seeds | " + " | ".join(f"{m} (mean +- std)" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (3 + len(metrics))]
    for s in summary:
        cells = [f"{s[f'{m}_mean']:.3f} +- {s[f'{m}_std']:.3f}" if f"{m}_mean" in s else "-" for m in metrics]
        setting = f"{s['hyper']} = {s['value']:g}" + (f" ({s['variant']})" if s.get("variant") else "")
        lines.append(f"| {s['model']} | {setting} | {s['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
