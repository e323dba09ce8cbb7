"""Grid files: which (model, hyperparameter, seed) runs a sweep holds.

A grid is YAML or JSON::

    out: experiments/runs/ellipses     # where the run directories go (relative to the grid file)
    jobs: 2                            # training processes at once
    threads: 1                         # torch threads per process
    seeds: [0, 1, 2]
    ensemble: false                    # true: runs that share their shapes train as one batched model
    ensemble_size: 16                  # at most this many members per ensemble (default: no cap)
    launcher: local                    # local | ray | slurm (chyvae_ext.experiments.launchers)
    resources: {cpus: 1, gpus: 0}      # per training process, on ray and slurm (default cpus: threads)
    retries: 2                         # ray: times a failed run is retried (it resumes)
    slurm: {partition: gpu, time: 240} # slurm: the partition and each array task's time limit, minutes
    common: {dataset: correlated_ellipses, steps: 1200, eval_every: 400}
    runs:
      - {model: chyvae, nu: [12, 200, 1000]}
      - {model: betavae, beta: [1, 4]}
      - {model: factorvae, gamma: [10, 40]}

Each entry of ``runs`` is expanded over the product of its list-valued options and the seeds;
every option is a training option (:class:`chyvae_ext.config.TrainConfig`). A run is named after
its model, its swept options and its seed, e.g. ``chyvae-nu200-seed1``; runs are ordered seed
by seed, so that a sweep stopped part-way has covered every setting.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

from .._checks import check_int
from ..config import TrainConfig, read_mapping_file, read_numbers

_KNOWN = {f.name for f in dataclasses.fields(TrainConfig)} - {"out", "seed"}
_GRID_KEYS = {
    "out", "jobs", "threads", "seeds", "common", "runs", "ensemble", "ensemble_size", "launcher", "resources",
    "retries", "slurm",
}
LAUNCHERS = ("local", "ray", "slurm")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    options: dict  # TrainConfig options, seed included, out excluded
    swept: dict  # the options this run's entry varies (its hyperparameters)


@dataclasses.dataclass(frozen=True)
class Grid:
    out: Path
    jobs: int
    threads: int
    runs: list[RunSpec]
    ensemble: bool = False
    ensemble_size: int | None = None  # None: no cap
    launcher: str = "local"
    resources: dict = dataclasses.field(default_factory=dict)  # cpus, gpus per training process
    retries: int = 2
    slurm: dict = dataclasses.field(default_factory=dict)  # partition, time (minutes)


def _name(model: str, swept: dict, seed: int) -> str:
    parts = [model] + [
        f"{k.replace('_', '')}{v:g}" if isinstance(v, float) else f"{k.replace('_', '')}{v}" for k, v in swept.items()
    ]
    return "-".join([*parts, f"seed{seed}"])


def expand_grid(spec: dict, *, base: Path = Path(".")) -> Grid:
    """The runs of a grid mapping (see the module docstring). Raises ValueError naming what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError(f"grid: expected a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _GRID_KEYS)
    if unknown:
        raise ValueError(f"grid: unknown key(s) {', '.join(unknown)}; keys: {', '.join(sorted(_GRID_KEYS))}")
    for key in ("jobs", "threads"):
        check_int(f"grid: {key}", spec.get(key, 1), 1)
    ensemble = spec.get("ensemble", False)
    if not isinstance(ensemble, bool):
        raise ValueError(f"grid: ensemble must be true or false, got {ensemble!r}")
    ensemble_size = spec.get("ensemble_size")
    if ensemble_size is not None:
        check_int("grid: ensemble_size", ensemble_size, 1)
    launcher = spec.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise ValueError(f"grid: launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    check_int("grid: retries", spec.get("retries", 2), 0)
    resources = _mapping(spec, "resources", {"cpus", "gpus"})
    for key, value in resources.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"grid: resources.{key} must be a number >= 0, got {value!r}")
    slurm = _mapping(spec, "slurm", {"partition", "time"})
    if "time" in slurm:
        check_int("grid: slurm.time (minutes)", slurm["time"], 1)
    if "partition" in slurm and not isinstance(slurm["partition"], str):
        raise ValueError(f"grid: slurm.partition must be a string, got {slurm['partition']!r}")
    seeds = spec.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ValueError(f"grid: seeds must be a non-empty list of integers, got {seeds!r}")
    common = spec.get("common", {})
    entries = spec.get("runs")
    if not isinstance(common, dict):
        raise ValueError(f"grid: common must be a mapping of training options, got {common!r}")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"grid: runs must be a non-empty list of mappings, got {entries!r}")
    runs: list[RunSpec] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "model" not in entry:
            raise ValueError(f"grid: runs[{i}] must be a mapping with a model, got {entry!r}")
        options = {**common, **entry}
        bad = sorted(set(options) - _KNOWN)
        if bad:
            raise ValueError(f"grid: runs[{i}]: unknown training option(s) {', '.join(bad)}")
        swept_keys = [k for k, v in entry.items() if isinstance(v, list)]
        for k in swept_keys:
            if not entry[k]:
                raise ValueError(f"grid: runs[{i}].{k} is an empty list")
        for values in itertools.product(*(entry[k] for k in swept_keys)):
            swept = dict(zip(swept_keys, values, strict=True))
            for seed in seeds:
                opts = read_numbers({**options, **swept, "seed": seed}, f"grid: runs[{i}]")
                name = _name(opts["model"], swept, seed)
                if "/" in name or "\\" in name or name.startswith("."):
                    raise ValueError(f"grid: runs[{i}]: the run directory name {name!r} (from the swept values) "
                                     "would leave the sweep's out directory; use values without / or \\")
                runs.append(RunSpec(name, opts, swept))
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"grid: two runs would share the directory name {dupes[0]}")
    runs.sort(key=lambda r: r.options["seed"])  # seed-major: a partial sweep covers every setting
    out = Path(spec.get("out", "runs/sweep"))
    out = Path(os.path.normpath(out if out.is_absolute() else base / out))
    return Grid(out, spec.get("jobs", 1), spec.get("threads", 1), runs, ensemble, ensemble_size, launcher, resources,
                spec.get("retries", 2), slurm)


def _mapping(spec: dict, key: str, known: set[str]) -> dict:
    value = spec.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"grid: {key} must be a mapping, got {value!r}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"grid: {key}: unknown key(s) {', '.join(unknown)}; keys: {', '.join(sorted(known))}")
    return value


def apply_overrides(spec: dict, overrides: dict) -> dict:
    """``spec`` with each training option in ``overrides`` set for every run (in ``common``, and replacing
    the option in any run entry that sets it). Raises ValueError for an option training does not know."""
    bad = sorted(set(overrides) - _KNOWN)
    if bad:
        raise ValueError(f"--set: unknown training option(s) {', '.join(bad)}")
    if not isinstance(spec, dict) or not isinstance(spec.get("common", {}), dict):
        return spec  # expand_grid says what is wrong
    runs = spec.get("runs")
    if isinstance(runs, list):
        runs = [{k: v for k, v in e.items() if k not in overrides} if isinstance(e, dict) else e for e in runs]
    return spec | {"common": spec.get("common", {}) | overrides, "runs": runs}


def load_grid(path: str | Path, overrides: dict | None = None) -> Grid:
    """The grid in the YAML or JSON file at ``path``, with ``overrides`` (training options) applied."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--grid: no file at {p}")
    spec = read_mapping_file(p, "--grid")
    return expand_grid(apply_overrides(spec, overrides or {}), base=p.parent)
