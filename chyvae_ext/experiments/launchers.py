"""Where a sweep's training processes run: this machine (``local``), a Ray cluster (``ray``) or SLURM (``slurm``).

The unit of work is a :class:`Job`: one training process, for one run or for an ensemble's runs
(``--ensemble``), started with the training CLI. A job reads its runs' state from disk when it
starts, so a job that is retried (Ray), requeued (SLURM) or started again (a second ``sweep``)
resumes from its runs' last checkpoints. The launchers only place, retry and stop jobs; each has
one method, ``run(jobs, progress)``, and reports to the shared :class:`Progress` (echoed lines and
``sweep_status.json``).

- ``local``: ``grid.jobs`` processes at once on this machine; SIGINT/SIGTERM reach every training
  process, which checkpoints and stops.
- ``ray`` (``pip install chyvae_ext[ray]``): each job a Ray task with the grid's ``resources``
  (``cpus``, ``gpus``) that runs the training CLI in a subprocess. It connects to ``--ray-address``
  (or ``RAY_ADDRESS``), else starts a local cluster. A job that fails is retried (``retries``,
  default 2) and resumes from its checkpoint; Ctrl-C cancels the tasks, and each training process
  checkpoints before it stops.
- ``slurm`` (``pip install chyvae_ext[slurm]``): the jobs as one SLURM job array through submitit
  (``--slurm-partition``, ``--slurm-time`` minutes, the grid's ``resources`` per array task, at most
  ``grid.jobs`` at once). On a time-out or preemption SLURM warns the job; the training process
  checkpoints and the array task is requeued, and resumes. submitit's files go to
  ``OUT/slurm/``. ``--slurm-cluster local`` runs the array on this machine (submitit's local
  executor) to try a grid out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import runfiles
from .grid import LAUNCHERS, Grid, RunSpec


class JobFailed(RuntimeError):
    """A training process that ended with neither success nor a signal (Ray retries these)."""


def require(module: str, extra: str):
    """Import an optional dependency, or fail naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(
            f"--launcher {extra} needs the {module!r} package: pip install 'chyvae_ext[{extra}]' "
            f"(or pip install {module}); importing it failed: {exc}"
        ) from exc


def die_with_parent() -> None:
    """In a child process before it runs (Linux): SIGTERM when its parent dies (PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def run_state(run_dir: Path, steps: int) -> str:
    """finished | resumable | new, from what is on disk."""
    s = runfiles.read_status(run_dir)  # {} where damaged: the checkpoints decide
    if s.get("state") == "finished" and s.get("step", 0) >= steps:
        return "finished"
    if runfiles.has_config(run_dir) and runfiles.Run(run_dir).checkpoints():
        return "resumable"
    return "new"


@dataclasses.dataclass
class Job:
    """One training process: one run, or an ensemble's runs. ``state`` is theirs when the sweep was planned."""

    specs: list[RunSpec]
    out: Path
    state: str  # resumable | new

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def label(self) -> str:
        return self.names[0] + (f" (+{len(self.specs) - 1} in its ensemble)" if len(self.specs) > 1 else "")

    @property
    def log(self) -> Path:
        return self.out / self.names[0] / runfiles.LOG

    def _steps(self) -> int | None:
        return self.specs[0].options.get("steps")

    def command(self) -> list[str]:
        """The training command for the runs as they stand on disk now: ``--resume`` where every run has a
        checkpoint (so a retried or requeued job resumes), else a fresh start from the sweep's options."""
        from ..config import TrainConfig

        steps = self._steps()
        dirs = [self.out / name for name in self.names]
        resume = all(run_state(d, steps or TrainConfig().steps) != "new" for d in dirs)
        base = [sys.executable, "-m", "chyvae_ext.train"]
        until = ["--steps", str(steps)] if steps is not None else []
        # a fresh start replaces what an attempt that never checkpointed left (its first rows)
        if len(dirs) > 1:
            return [*base, "--ensemble", *map(str, dirs), *(["--resume", *until] if resume else ["--overwrite"])]
        if resume:
            return [*base, "--resume", str(dirs[0]), *until]
        return [*base, "--config", str(dirs[0] / runfiles.SWEEP_OPTIONS), "--out", str(dirs[0]), "--overwrite"]

    def prepare(self) -> None:
        """The run directories, each run's options (sweep_options.json) and, in an ensemble, where its log is."""
        for spec in self.specs:
            run_dir = self.out / spec.name
            run_dir.mkdir(parents=True, exist_ok=True)
            options = run_dir / runfiles.SWEEP_OPTIONS
            if not options.is_file() or run_state(run_dir, spec.options.get("steps", 1)) == "new":
                runfiles.write_sweep_options(run_dir, spec.options)
        for name in self.names[1:]:
            with open(self.out / name / runfiles.LOG, "a") as log:
                log.write(f"trained in an ensemble of {len(self.specs)}; its log: {self.log}\n")

    def start(self, env: dict) -> subprocess.Popen:
        """The training process, its output appended to the log; on Linux it is sent SIGTERM (it
        checkpoints and stops) when the process that started it dies, even by kill -9, so that no
        orphan trains on while a rerun of the sweep resumes the same run."""
        self.prepare()
        with open(self.log, "a") as log:
            return subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)

    def run(self, env_extra: dict, on_start=None) -> int:
        """Runs the training process to its end here (a Ray task's or SLURM task's body): returns its exit
        status, 0 (finished) or 130 (stopped by a signal); raises JobFailed for any other.

        ``on_start`` is given the process once started. SIGTERM or an interruption (Ray's cancel raises
        KeyboardInterrupt) is passed to the training process, which checkpoints and stops, before this
        returns or re-raises."""
        proc = self.start({**os.environ, **env_extra})
        if on_start is not None:
            on_start(proc)

        def forward(signum, frame):
            proc.send_signal(signal.SIGTERM)

        try:
            old = signal.signal(signal.SIGTERM, forward)
        except ValueError:  # not the main thread: the caller passes signals on itself
            old = None
        try:
            rc = proc.wait()
        except BaseException:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            raise
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        if rc not in (0, 130):
            raise JobFailed(f"{self.label}: the training process exited with status {rc}; see {self.log}")
        return rc

    def outcomes(self, rc: int) -> dict[str, str]:
        """Each run's outcome after the process ended with ``rc``: a lone run's from ``rc``; an ensemble's
        members' from their status.json (one exit status covers them all)."""
        by_rc = {0: "finished", 130: "interrupted"}.get(rc, "failed")
        if len(self.names) == 1:
            return {self.names[0]: by_rc}
        out = {}
        for name in self.names:
            state = runfiles.read_status(self.out / name).get("state")  # None where missing or damaged
            out[name] = state if state in ("finished", "failed", "interrupted") else by_rc
        return out


class Progress:
    """What every launcher reports: a line when a job starts or ends, and ``sweep_status.json``."""

    def __init__(self, grid: Grid, outcome: dict[str, str], echo):
        self.grid, self.outcome, self.echo = grid, outcome, echo
        self.running: dict[str, Job] = {}
        self.pending: list[Job] = []

    def queued(self, jobs: list[Job]) -> None:
        self.pending = list(jobs)
        self.write_status()

    def started(self, job: Job, how: str = "start") -> None:
        if job in self.pending:
            self.pending.remove(job)
        self.running[job.names[0]] = job
        self.echo(f"[{time.strftime('%H:%M:%S')}] {how} {job.label} ({job.state})")
        self.write_status()

    def ended(self, job: Job, rc: int, seconds: float | None) -> None:
        self.running.pop(job.names[0], None)
        if job in self.pending:
            self.pending.remove(job)
        took = f", {seconds:.0f} s" if seconds is not None else ""
        for name, result in job.outcomes(rc).items():
            self.outcome[name] = result
            done = sum(o in ("finished", "skipped") for o in self.outcome.values())
            self.echo(
                f"[{time.strftime('%H:%M:%S')}] {result} {name} (exit {rc}{took})  [{done}/{len(self.grid.runs)} done]"
                + (f"  see {job.log}" if result == "failed" else "")
            )
        self.write_status()

    def write_status(self) -> None:
        o = self.outcome
        status = {
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "runs": len(self.grid.runs),
            "finished": sorted(n for n, r in o.items() if r in ("finished", "skipped")),
            "failed": sorted(n for n, r in o.items() if r == "failed"),
            "interrupted": sorted(n for n, r in o.items() if r == "interrupted"),
            "running": sorted(n for job in self.running.values() for n in job.names),
            "pending": [n for job in self.pending for n in job.names],
        }
        tmp = self.grid.out / ".sweep_status.json.tmp"
        tmp.write_text(json.dumps(status, indent=2))
        tmp.replace(self.grid.out / "sweep_status.json")


def thread_env(grid: Grid) -> dict:
    """The environment each training process gets over its host's: torch's threads (the grid's ``threads``)."""
    return {"OMP_NUM_THREADS": str(grid.threads), "MKL_NUM_THREADS": str(grid.threads)}


class LocalLauncher:
    """``grid.jobs`` training processes at once on this machine."""

    def __init__(self, grid: Grid):
        self.grid = grid

    def run(self, jobs: list[Job], progress: Progress) -> None:
        env = {**os.environ, **thread_env(self.grid)}
        running: dict[str, tuple[subprocess.Popen, float, Job]] = {}
        stop = {"signal": None}

        def handle(signum, frame):
            stop["signal"] = signum
            for proc, _, _ in running.values():
                proc.send_signal(signal.SIGTERM)

        old = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        queue = list(jobs)
        progress.queued(queue)
        try:
            while queue or running:
                while queue and len(running) < self.grid.jobs and stop["signal"] is None:
                    job = queue.pop(0)
                    running[job.names[0]] = (job.start(env), time.perf_counter(), job)
                    progress.started(job)
                if stop["signal"] is not None and queue:
                    queue.clear()  # not started: they stay pending in sweep_status.json, for the rerun
                time.sleep(0.5)
                for name, (proc, t0, job) in list(running.items()):
                    rc = proc.poll()
                    if rc is not None:
                        del running[name]
                        progress.ended(job, rc, time.perf_counter() - t0)
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _ray_task(job: Job, env_extra: dict) -> tuple[int, float]:
    """A Ray task's body: the job's training process; a failure raises JobFailed, which Ray retries."""
    t0 = time.perf_counter()
    rc = job.run(env_extra)
    return rc, time.perf_counter() - t0


class RayLauncher:
    """Each job a Ray task (see the module docstring)."""

    def __init__(self, grid: Grid, address: str | None = None):
        self.grid, self.address = grid, address

    def run(self, jobs: list[Job], progress: Progress) -> None:
        ray = require("ray", "ray")
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or None  # None: a local cluster
            ray.init(address=address, log_to_driver=False)
        res = self.grid.resources
        task = ray.remote(_ray_task).options(
            num_cpus=res.get("cpus", self.grid.threads),
            num_gpus=res.get("gpus", 0),
            max_retries=self.grid.retries,
            retry_exceptions=[JobFailed],
        )
        refs = {task.remote(job, thread_env(self.grid)): job for job in jobs}
        for job in jobs:
            progress.started(job, "submitted")
        pending = list(refs)
        old = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    self._report(ray, ref, refs[ref], progress)
        except KeyboardInterrupt:
            progress.echo(f"[{time.strftime('%H:%M:%S')}] interrupted: cancelling {len(pending)} task(s); "
                          "their training processes checkpoint and stop")
            for ref in pending:
                ray.cancel(ref)
            for ref in pending:
                self._report(ray, ref, refs[ref], progress)
        finally:
            signal.signal(signal.SIGTERM, old)

    @staticmethod
    def _report(ray, ref, job: Job, progress: Progress) -> None:
        try:
            rc, seconds = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            rc, seconds = 130, None
        except ray.exceptions.RayError as exc:  # JobFailed after its retries, or a worker lost
            progress.echo(f"[{time.strftime('%H:%M:%S')}] {job.label}: {str(exc).strip().splitlines()[-1]}")
            rc, seconds = 1, None
        progress.ended(job, rc, seconds)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class SlurmTask:
    """A SLURM array task's body (submitit pickles it): the job's training process. On a time-out or
    preemption submitit calls ``checkpoint``: the training process checkpoints and the task is requeued
    (it resumes)."""

    def __init__(self, job: Job, env_extra: dict):
        self.job, self.env_extra = job, env_extra
        self.proc: subprocess.Popen | None = None

    def __call__(self) -> int:
        # scancel's SIGTERM reaches the training through Job.run: it checkpoints and stops
        return self.job.run(self.env_extra, on_start=lambda proc: setattr(self, "proc", proc))

    def checkpoint(self, *args, **kwargs):
        import submitit

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait()
        return submitit.helpers.DelayedSubmission(SlurmTask(self.job, self.env_extra))


class SlurmLauncher:
    """The jobs as one SLURM job array through submitit (see the module docstring)."""

    def __init__(self, grid: Grid, partition: str | None = None, time_min: int | None = None,
                 cluster: str | None = None):
        self.grid, self.partition, self.time_min, self.cluster = grid, partition, time_min, cluster

    def run(self, jobs: list[Job], progress: Progress) -> None:
        submitit = require("submitit", "slurm")
        res = self.grid.resources
        executor = submitit.AutoExecutor(folder=self.grid.out / "slurm" / "%j", cluster=self.cluster)
        params = {
            "name": f"chyvae-{self.grid.out.name}",
            "timeout_min": self.time_min or self.grid.slurm.get("time", 24 * 60),
            "cpus_per_task": res.get("cpus", self.grid.threads),
            "gpus_per_node": res.get("gpus", 0),
            "tasks_per_node": 1,
            "slurm_array_parallelism": self.grid.jobs,
        }
        partition = self.partition or self.grid.slurm.get("partition")
        if partition:
            params["slurm_partition"] = partition
        executor.update_parameters(**params)
        with executor.batch():
            futures = [executor.submit(SlurmTask(job, thread_env(self.grid))) for job in jobs]
        for job, future in zip(jobs, futures, strict=True):
            progress.started(job, f"submitted as {future.job_id}:")
        waiting = dict(zip(futures, jobs, strict=True))
        try:
            while waiting:
                time.sleep(1.0)
                for future in [f for f in waiting if f.done()]:
                    job = waiting.pop(future)
                    try:
                        rc = future.result()
                    except Exception as exc:  # submitit's FailedJobError, UncompletedJobError
                        progress.echo(f"[{time.strftime('%H:%M:%S')}] {job.label}: {str(exc).strip().splitlines()[0]}")
                        rc = 1
                    progress.ended(job, rc, None)
        except KeyboardInterrupt:
            progress.echo(f"[{time.strftime('%H:%M:%S')}] interrupted: cancelling {len(waiting)} array task(s); "
                          "their training processes checkpoint and stop")
            for future in waiting:
                future.cancel(check=False)
            for future, job in waiting.items():
                future.wait()
                progress.ended(job, 130, None)


def make_launcher(name: str, grid: Grid, *, ray_address: str | None = None, slurm_partition: str | None = None,
                  slurm_time: int | None = None, slurm_cluster: str | None = None):
    """The launcher called ``name`` (one of LAUNCHERS) for ``grid``."""
    if name == "local":
        return LocalLauncher(grid)
    if name == "ray":
        return RayLauncher(grid, ray_address)
    if name == "slurm":
        return SlurmLauncher(grid, slurm_partition, slurm_time, slurm_cluster)
    raise ValueError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {name!r}")
