"""Run a grid of training runs, several processes at once, resumable.

A run whose ``status.json`` says finished (with at least the steps asked for) is skipped; one with
a checkpoint is resumed with ``--resume`` (the checkpoint holds the model, the optimisers and the
random states, so the result equals an uninterrupted run); any other starts afresh. Each run's
output goes to ``RUN_DIR/train.log``. ``sweep_status.json`` in the sweep's directory says where
the sweep stands (finished, running, failed, pending), rewritten whenever a run starts or ends.
SIGINT/SIGTERM are passed to the running trainings, which checkpoint and stop; running the same
command again continues.

With ``ensemble`` (``--ensemble``, or ``ensemble: true`` in the grid), the runs still to do that
share their shapes and schedule (chyvae_ext.train.ENSEMBLE_SHARED) and start from the same step
train together as one batched model, at most ``ensemble_size`` at a time: one process per
ensemble, whose output goes to its first member's ``train.log`` (the others' logs say where).
Each member still writes its own run directory, so skipping, resuming, collect and evaluate see
ordinary runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .grid import Grid, RunSpec


def run_state(run_dir: Path, steps: int) -> str:
    """finished | resumable | new, from what is on disk."""
    status = run_dir / "status.json"
    if status.is_file():
        try:
            s = json.loads(status.read_text())
        except json.JSONDecodeError:
            s = {}
        if s.get("state") == "finished" and s.get("step", 0) >= steps:
            return "finished"
    if (run_dir / "config.json").is_file() and any((run_dir / "checkpoints").glob("step_*.pt")):
        return "resumable"
    return "new"


def checkpoint_step(run_dir: Path) -> int:
    """The step of a run's last checkpoint (0 without one)."""
    from ..train import Run, checkpoint_step_of

    last = Run(run_dir).checkpoint()
    return checkpoint_step_of(last) if last is not None else 0


def plan_jobs(grid: Grid, todo: list[tuple[RunSpec, str]]) -> list[list[tuple[RunSpec, str]]]:
    """The processes to run: one run each, or with grid.ensemble the runs that can train together
    (same ENSEMBLE_SHARED options, same state and start step) in groups of at most ensemble_size,
    in the grid's order, except that runs under way (resumable) go before new ones."""
    if not grid.ensemble:
        return _under_way_first([[item] for item in todo])
    from ..train import TrainConfig, ensemble_key

    groups: dict[tuple, list] = {}
    for spec, state in todo:
        run_dir = grid.out / spec.name
        start = checkpoint_step(run_dir) if state == "resumable" else 0
        key = (ensemble_key(TrainConfig(**spec.options)), state, start)
        groups.setdefault(key, []).append((spec, state))
    size = grid.ensemble_size or max((len(g) for g in groups.values()), default=1)
    return _under_way_first([g[i : i + size] for g in groups.values() for i in range(0, len(g), size)])


def _under_way_first(jobs: list[list[tuple[RunSpec, str]]]) -> list[list[tuple[RunSpec, str]]]:
    return sorted(jobs, key=lambda job: job[0][1] != "resumable")  # stable: the grid's order otherwise


def _ensemble_command(job: list[tuple[RunSpec, str]], out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "chyvae_ext.train", "--ensemble", *(str(out / spec.name) for spec, _ in job)]
    if job[0][1] == "resumable":
        steps = job[0][0].options.get("steps")
        cmd += ["--resume"] + (["--steps", str(steps)] if steps is not None else [])
    return cmd


def _command(spec: RunSpec, run_dir: Path, state: str) -> list[str]:
    steps = spec.options.get("steps")
    if state == "resumable":
        cmd = [sys.executable, "-m", "chyvae_ext.train", "--resume", str(run_dir)]
        return cmd + (["--steps", str(steps)] if steps is not None else [])
    options = run_dir / "sweep_options.json"
    return [sys.executable, "-m", "chyvae_ext.train", "--config", str(options), "--out", str(run_dir)]


def _job_command(job: list[tuple[RunSpec, str]], out: Path) -> list[str]:
    if len(job) == 1:
        spec, state = job[0]
        return _command(spec, out / spec.name, state)
    return _ensemble_command(job, out)


def _launch(job: list[tuple[RunSpec, str]], out: Path, env: dict) -> subprocess.Popen:
    for spec, state in job:
        run_dir = out / spec.name
        run_dir.mkdir(parents=True, exist_ok=True)
        if state == "new":
            (run_dir / "sweep_options.json").write_text(json.dumps(spec.options, indent=2))
    first = out / job[0][0].name
    for spec, _ in job[1:]:
        with open(out / spec.name / "train.log", "a") as log:
            log.write(f"trained in an ensemble of {len(job)}; its log: {first / 'train.log'}\n")
    with open(first / "train.log", "a") as log:
        return subprocess.Popen(_job_command(job, out), stdout=log, stderr=subprocess.STDOUT, env=env)


def _member_outcome(run_dir: Path, rc: int) -> str:
    """A run's outcome from its status.json (an ensemble's exit status covers all its members)."""
    try:
        state = json.loads((run_dir / "status.json").read_text()).get("state")
    except (OSError, json.JSONDecodeError):
        state = None
    if state in ("finished", "failed", "interrupted"):
        return state
    return {0: "finished", 130: "interrupted"}.get(rc, "failed")


def sweep(grid: Grid, *, dry_run: bool = False, echo=print) -> dict:
    """Run every unfinished run of ``grid``; returns {name: finished|failed|interrupted|skipped}."""
    from ..train import TrainConfig

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
    grouped = f", as {len(jobs)} ensemble(s) of up to {max((len(j) for j in jobs), default=0)}" if grid.ensemble else ""
    echo(
        f"sweep {grid.out}: {len(grid.runs)} runs, {len(outcome)} already finished, {len(todo)} to run "
        f"({sum(s == 'resumable' for _, s in todo)} resumed){grouped}, {grid.jobs} at once, "
        f"{grid.threads} thread(s) each"
    )
    if dry_run:
        for job in jobs:
            names = ", ".join(spec.name for spec, _ in job)
            echo(f"  {names}: {job[0][1]}: {' '.join(_job_command(job, grid.out)[1:])}")
        return outcome
    env = dict(os.environ, OMP_NUM_THREADS=str(grid.threads), MKL_NUM_THREADS=str(grid.threads))
    running: dict[str, tuple[subprocess.Popen, float, list]] = {}
    stop = {"signal": None}

    def handle(signum, frame):
        stop["signal"] = signum
        for proc, _, _ in running.values():
            proc.send_signal(signal.SIGTERM)

    def write_status():
        status = {
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "runs": len(grid.runs),
            "finished": sorted(n for n, o in outcome.items() if o in ("finished", "skipped")),
            "failed": sorted(n for n, o in outcome.items() if o == "failed"),
            "interrupted": sorted(n for n, o in outcome.items() if o == "interrupted"),
            "running": sorted(spec.name for _, _, job in running.values() for spec, _ in job),
            "pending": [spec.name for job in queue for spec, _ in job],
        }
        tmp = grid.out / ".sweep_status.json.tmp"
        tmp.write_text(json.dumps(status, indent=2))
        tmp.replace(grid.out / "sweep_status.json")

    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    queue = list(jobs)
    try:
        while queue or running:
            while queue and len(running) < grid.jobs and stop["signal"] is None:
                job = queue.pop(0)
                name = job[0][0].name + (f" (+{len(job) - 1} in its ensemble)" if len(job) > 1 else "")
                running[name] = (_launch(job, grid.out, env), time.perf_counter(), job)
                echo(f"[{time.strftime('%H:%M:%S')}] start {name} ({job[0][1]})")
                write_status()
            if stop["signal"] is not None and queue:
                queue.clear()
            time.sleep(0.5)
            for name, (proc, t0, job) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[name]
                took = time.perf_counter() - t0
                log = grid.out / job[0][0].name / "train.log"
                for spec, _ in job:
                    outcome[spec.name] = (
                        _member_outcome(grid.out / spec.name, rc)
                        if len(job) > 1
                        else {0: "finished", 130: "interrupted"}.get(rc, "failed")
                    )
                    done = sum(o in ("finished", "skipped") for o in outcome.values())
                    echo(
                        f"[{time.strftime('%H:%M:%S')}] {outcome[spec.name]} {spec.name} (exit {rc}, {took:.0f} s)"
                        f"  [{done}/{len(grid.runs)} done]"
                        + (f"  see {log}" if outcome[spec.name] == "failed" else "")
                    )
                write_status()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    write_status()
    return outcome
