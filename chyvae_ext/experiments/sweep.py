"""Run a grid of training runs, several processes at once, resumable.

A run whose ``status.json`` says finished (with at least the steps asked for) is skipped; one with
a checkpoint is resumed with ``--resume`` (the checkpoint holds the model, the optimisers and the
random states, so the result equals an uninterrupted run); any other starts afresh. Each run's
output goes to ``RUN_DIR/train.log``. ``sweep_status.json`` in the sweep's directory says where
the sweep stands (finished, running, failed, pending), rewritten whenever a run starts or ends.
SIGINT/SIGTERM are passed to the running trainings, which checkpoint and stop; running the same
command again continues.
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


def _command(spec: RunSpec, run_dir: Path, state: str) -> list[str]:
    steps = spec.options.get("steps")
    if state == "resumable":
        cmd = [sys.executable, "-m", "chyvae_ext.train", "--resume", str(run_dir)]
        return cmd + (["--steps", str(steps)] if steps is not None else [])
    options = run_dir / "sweep_options.json"
    return [sys.executable, "-m", "chyvae_ext.train", "--config", str(options), "--out", str(run_dir)]


def _launch(spec: RunSpec, run_dir: Path, state: str, env: dict) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    if state == "new":
        (run_dir / "sweep_options.json").write_text(json.dumps(spec.options, indent=2))
    with open(run_dir / "train.log", "a") as log:
        return subprocess.Popen(_command(spec, run_dir, state), stdout=log, stderr=subprocess.STDOUT, env=env)


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
    echo(
        f"sweep {grid.out}: {len(grid.runs)} runs, {len(outcome)} already finished, {len(todo)} to run "
        f"({sum(s == 'resumable' for _, s in todo)} resumed), {grid.jobs} at once, {grid.threads} thread(s) each"
    )
    if dry_run:
        for spec, state in todo:
            echo(f"  {spec.name}: {state}: {' '.join(_command(spec, grid.out / spec.name, state)[1:])}")
        return outcome
    env = dict(os.environ, OMP_NUM_THREADS=str(grid.threads), MKL_NUM_THREADS=str(grid.threads))
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    stop = {"signal": None}

    def handle(signum, frame):
        stop["signal"] = signum
        for proc, _ in running.values():
            proc.send_signal(signal.SIGTERM)

    def write_status():
        status = {
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "runs": len(grid.runs),
            "finished": sorted(n for n, o in outcome.items() if o in ("finished", "skipped")),
            "failed": sorted(n for n, o in outcome.items() if o == "failed"),
            "interrupted": sorted(n for n, o in outcome.items() if o == "interrupted"),
            "running": sorted(running),
            "pending": [s.name for s, _ in queue],
        }
        tmp = grid.out / ".sweep_status.json.tmp"
        tmp.write_text(json.dumps(status, indent=2))
        tmp.replace(grid.out / "sweep_status.json")

    old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    queue = list(todo)
    try:
        while queue or running:
            while queue and len(running) < grid.jobs and stop["signal"] is None:
                spec, state = queue.pop(0)
                run_dir = grid.out / spec.name
                proc = _launch(spec, run_dir, state, env)
                running[spec.name] = (proc, time.perf_counter())
                echo(f"[{time.strftime('%H:%M:%S')}] start {spec.name} ({state})")
                write_status()
            if stop["signal"] is not None and queue:
                queue.clear()
            time.sleep(0.5)
            for name, (proc, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[name]
                outcome[name] = {0: "finished", 130: "interrupted"}.get(rc, "failed")
                done = sum(o in ("finished", "skipped") for o in outcome.values())
                took = time.perf_counter() - t0
                echo(
                    f"[{time.strftime('%H:%M:%S')}] {outcome[name]} {name} (exit {rc}, {took:.0f} s)"
                    f"  [{done}/{len(grid.runs)} done]"
                    + (f"  see {grid.out / name / 'train.log'}" if rc not in (0, 130) else "")
                )
                write_status()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    write_status()
    return outcome
