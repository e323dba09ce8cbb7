"""Run a grid of training runs, resumable, on this machine, a Ray cluster or SLURM.

A run whose ``status.json`` says finished (with at least the steps asked for) is skipped; one with
a checkpoint is resumed with ``--resume`` (the checkpoint holds the model, the optimisers and the
random states, so the result equals an uninterrupted run); any other starts afresh. Each run's
output goes to ``RUN_DIR/train.log``. ``sweep_status.json`` in the sweep's directory says where
the sweep stands (finished, running, failed, pending), rewritten whenever a run starts or ends.
SIGINT/SIGTERM are passed to the running trainings, which checkpoint and stop; running the same
command again continues.

Where the training processes run is the launcher's business (``--launcher`` or ``launcher:`` in
the grid; chyvae_ext.experiments.launchers): ``local`` (``grid.jobs`` at once here), ``ray`` or
``slurm``.

With ``ensemble`` (``--ensemble``, or ``ensemble: true`` in the grid), the runs still to do that
share their shapes and schedule (chyvae_ext.config.ENSEMBLE_SHARED) and start from the same step
train together as one batched model, at most ``ensemble_size`` at a time: one process per
ensemble (one job for any launcher), whose output goes to its first member's ``train.log`` (the
others' logs say where). Each member still writes its own run directory, so skipping, resuming,
collect and evaluate see ordinary runs.
"""

from __future__ import annotations

from pathlib import Path

from .grid import Grid, RunSpec
from .launchers import Job, Progress, make_launcher, run_state

__all__ = ["checkpoint_step", "plan_jobs", "run_state", "sweep"]


def checkpoint_step(run_dir: Path) -> int:
    """The step of a run's last checkpoint (0 without one)."""
    from ..runfiles import Run, checkpoint_step_of

    last = Run(run_dir).checkpoint()
    return checkpoint_step_of(last) if last is not None else 0


def plan_jobs(grid: Grid, todo: list[tuple[RunSpec, str]]) -> list[Job]:
    """The training processes to run: one run each, or with grid.ensemble the runs that can train
    together (same ENSEMBLE_SHARED options, same state and start step) in groups of at most
    ensemble_size, in the grid's order, except that runs under way (resumable) go before new ones."""
    if not grid.ensemble:
        groups = [[item] for item in todo]
    else:
        from ..config import TrainConfig, ensemble_key

        by_key: dict[tuple, list] = {}
        for spec, state in todo:
            start = checkpoint_step(grid.out / spec.name) if state == "resumable" else 0
            by_key.setdefault((ensemble_key(TrainConfig(**spec.options)), state, start), []).append((spec, state))
        size = grid.ensemble_size or max((len(g) for g in by_key.values()), default=1)
        groups = [g[i : i + size] for g in by_key.values() for i in range(0, len(g), size)]
    out = grid.out.absolute()  # the same path for a Ray worker or SLURM task started elsewhere
    jobs = [Job([spec for spec, _ in g], out, g[0][1]) for g in groups]
    return sorted(jobs, key=lambda job: job.state != "resumable")  # stable: the grid's order otherwise


def check_runs(grid: Grid) -> None:
    """Every run's configuration checked before the first starts (a typo in the grid fails now, not
    when its run's turn comes hours later); the device is checked where each run trains."""
    from ..config import TrainConfig, check_config

    for spec in grid.runs:
        try:
            check_config(TrainConfig(**spec.options).resolved(), check_device=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"grid: run {spec.name}: {exc}") from None


def sweep(grid: Grid, *, dry_run: bool = False, echo=print, launcher: str | None = None, **launcher_options) -> dict:
    """Run every unfinished run of ``grid``; returns {name: finished|failed|interrupted|skipped}.

    launcher: local, ray or slurm (default: the grid's ``launcher``); launcher_options: ray_address,
    slurm_partition, slurm_time, slurm_cluster (see chyvae_ext.experiments.launchers)."""
    from ..config import TrainConfig

    check_runs(grid)
    launcher = launcher or grid.launcher
    runner = make_launcher(launcher, grid, **launcher_options)
    grid.out.mkdir(parents=True, exist_ok=True)
    default_steps = TrainConfig().steps
    todo, outcome = [], {}
    for spec in grid.runs:
        state = run_state(grid.out / spec.name, spec.options.get("steps", default_steps))
        if state == "finished":
            outcome[spec.name] = "skipped"
        else:
            todo.append((spec, state))
    jobs = plan_jobs(grid, todo)
    largest = max((len(j.specs) for j in jobs), default=0)
    grouped = f", as {len(jobs)} ensemble(s) of up to {largest}" if grid.ensemble else ""
    where = f"{grid.jobs} at once, {grid.threads} thread(s) each" if launcher == "local" else f"on {launcher}"
    echo(
        f"sweep {grid.out}: {len(grid.runs)} runs, {len(outcome)} already finished, {len(todo)} to run "
        f"({sum(s == 'resumable' for _, s in todo)} resumed){grouped}, {where}"
    )
    if dry_run:
        for job in jobs:
            echo(f"  {', '.join(job.names)}: {job.state}: {' '.join(job.command()[1:])}")
        return outcome
    progress = Progress(grid, outcome, echo)
    if jobs:
        runner.run(jobs, progress)
    progress.write_status()
    return outcome
