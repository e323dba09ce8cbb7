"""The run directory's format: the one module that knows its file names.

A run directory holds::

    config.json          the resolved TrainConfig (its keys in the dataclass's order)
    metrics.jsonl        one JSON object a line: kind "train" (an interval's mean terms) or "eval"
    status.json          {"state": running | finished | interrupted | failed, "step": ..., ...}
    checkpoints/         step_XXXXXXXX.pt (a damaged one set aside as step_XXXXXXXX.pt.damaged)
    sweep_options.json   the options a sweep gave the run (before it first trains)
    train.log            a sweep's training output
    eval.json            the last ``python -m chyvae_ext.evaluate``
    scores.json          scores cached by ``collect`` (chyvae_ext.experiments.scores)
    tb/                  TensorBoard events
    .lock                held (fcntl) by the trainer writing the run, its PID inside
    reconstructions.png, samples.png, traversals.png, traversals.gif, curves.png

Training writes it through :class:`Run` (rank 0 under torchrun; the other ranks hold a
:class:`ReadOnlyRun`); evaluate, explore, collect, plot and the sweep read it with the readers here.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

CONFIG = "config.json"
METRICS = "metrics.jsonl"
STATUS = "status.json"
CHECKPOINTS = "checkpoints"
SWEEP_OPTIONS = "sweep_options.json"
LOG = "train.log"
EVAL = "eval.json"
SCORES = "scores.json"
LOCK = ".lock"
TENSORBOARD = "tb"
PICTURES = ("reconstructions.png", "samples.png", "traversals.png", "traversals.gif", "curves.png")


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file, in order; [] when the file does not exist. ``path`` is the file,
    or a run directory (its metrics.jsonl).

    A last line cut short (a process killed while appending) is ignored; a malformed line
    anywhere else raises ValueError naming the file and the line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {n} is not a JSON object ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {n} is not a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def has_config(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a config.json (is a run directory)."""
    return (Path(run_dir) / CONFIG).is_file()


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in ``path``; a ValueError naming ``what``, the file and the line where it is not
    valid JSON or not an object (a damaged or hand-edited run file)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what}: {path} cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object of options, got {type(data).__name__}")
    return data


def read_config(run_dir: str | Path, *, what: str = "RUN_DIR") -> dict:
    """The run's config.json as a dict of options. Without one, ValueError
    "``what`` RUN_DIR: no config.json there (not a run directory)"; a damaged one is a ValueError naming it."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(f"{what} {run_dir}: no {CONFIG} there (not a run directory)")
    return read_json_object(path, what)


def read_status(run_dir: str | Path) -> dict:
    """The run's status.json; {} where there is none, or where it is damaged (it is rewritten at each
    checkpoint, and nothing is decided from it that the checkpoints do not say)."""
    path = Path(run_dir) / STATUS
    try:
        return read_json_object(path, "status") if path.is_file() else {}
    except ValueError:
        return {}


def read_sweep_options(run_dir: str | Path, *, what: str = "RUN_DIR") -> dict:
    """The options a sweep gave the run (sweep_options.json); the caller checks it exists."""
    return read_json_object(Path(run_dir) / SWEEP_OPTIONS, what)


def write_sweep_options(run_dir: str | Path, options: dict) -> None:
    (Path(run_dir) / SWEEP_OPTIONS).write_text(json.dumps(options, indent=2))


def checkpoint_step_of(path: Path) -> int:
    """The step of a checkpoint file step_XXXXXXXX.pt."""
    return int(path.stem.split("_")[1])


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def load_checkpoint(path: Path | None, device: torch.device) -> dict | None:
    """The checkpoint at ``path`` on ``device``; None (with a warning naming the file and the error) where it
    cannot be loaded: truncated, corrupt, or not a training checkpoint."""
    if path is None:
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)  # tensors and plain values: no code runs
    except Exception as exc:  # torch.load's failures on damaged files: RuntimeError, EOFError, UnpicklingError...
        warnings.warn(f"skipping checkpoint {path}: it cannot be loaded ({type(exc).__name__}: {exc})",
                      RuntimeWarning, stacklevel=2)
        return None
    if not isinstance(state, dict) or not {"model", "opt", "step"} <= state.keys():
        warnings.warn(f"skipping checkpoint {path}: not a training checkpoint", RuntimeWarning, stacklevel=2)
        return None
    return state


class WriteFailed(OSError):
    """Writing a run file failed (a full disk, an I/O error): the reason and the file, in one line."""

    def __init__(self, exc: BaseException, path: Path):
        errno_ = getattr(exc, "errno", None)
        if errno_ is None and "file write failed" in str(exc):  # torch's writer hides ENOSPC's errno
            reason = "the write failed (is the disk full?)"
        else:
            reason = os.strerror(errno_).lower() if errno_ else (str(exc).strip().splitlines() or [""])[0]
        super().__init__(errno_, f"{reason} writing {path}")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


class Run:
    """The run directory: config, metrics, status, checkpoints and pictures."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.ckpt_dir = self.root / CHECKPOINTS

    def prepare(self) -> None:
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"--out {self.root} is not writable: {exc}") from exc

    def lock(self) -> None:
        """Takes the run directory for this process (an exclusive ``fcntl`` lock on ``.lock``, held until
        :meth:`unlock` or the process ends: the kernel frees a dead process's lock, so none goes stale);
        a ValueError naming the PID holding it where another trainer has it."""
        import fcntl

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ValueError(f"--out {self.root} is not writable: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"{self.root} is being trained by another process (PID {holder}, holding "
                             f"{self.root / LOCK}); wait for it to end or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        """Releases :meth:`lock` (nothing where it was not taken)."""
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def has_evaluation(self, step: int) -> bool:
        """Whether metrics.jsonl holds an eval row of ``step``."""
        return any(r.get("kind") == "eval" and r.get("step") == step for r in read_metrics(self.root))

    def held(self) -> list[str]:
        """What an earlier run left here that a fresh start would lose: its config, metrics, status and
        checkpoints ([] for a new directory, or one holding only a sweep's options)."""
        held = [n for n in (CONFIG, METRICS, STATUS) if (self.root / n).is_file()]
        ckpts = self.checkpoints()
        if ckpts:
            held.append(f"{len(ckpts)} checkpoint(s) up to step {checkpoint_step_of(ckpts[-1])}")
        return held

    def claim(self, overwrite: bool) -> None:
        """For a fresh start: refuses a directory an earlier run left something in (:meth:`held`), or,
        with ``overwrite``, removes that run's files first, so that no run mixes into another's."""
        held = self.held()
        if held and not overwrite:
            raise ValueError(
                f"--out {self.root} holds a run already ({', '.join(held)}); continue it with --resume "
                f"{self.root}, train into another --out, or pass --overwrite to replace it"
            )
        if held:
            self.clear()

    def clear(self) -> None:
        """Removes an earlier run's files (config, metrics, status, evaluation and scores, pictures,
        TensorBoard events, checkpoints); a sweep's options and log stay."""
        import shutil

        for name in (CONFIG, METRICS, STATUS, EVAL, SCORES, *PICTURES):
            (self.root / name).unlink(missing_ok=True)
        shutil.rmtree(self.root / TENSORBOARD, ignore_errors=True)
        for ckpt in self.ckpt_dir.glob("step_*.pt*"):
            ckpt.unlink()

    def write_json(self, name: str, data: dict) -> None:
        tmp = self.root / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.root / name)

    def write_config(self, config: dict) -> None:
        self.write_json(CONFIG, config)

    def write_status(self, status: dict) -> None:
        self.write_json(STATUS, status)

    def checkpoints(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("step_*.pt"))

    def checkpoint(self, step: int | None = None) -> Path | None:
        """The last checkpoint, or the one of ``step``; None where there is none."""
        ckpts = [c for c in self.checkpoints() if step is None or checkpoint_step_of(c) == step]
        return ckpts[-1] if ckpts else None

    def newest_loadable(self, device: torch.device) -> tuple[int, dict]:
        """(step, state) of the newest checkpoint that loads; damaged newer ones are skipped with a warning
        and set aside (renamed .pt.damaged, so nothing else takes them). ValueError where none loads."""
        step, states = newest_common([self], device)
        return step, states[0]

    def save_checkpoint(self, state: dict, step: int, keep: int, keep_every: int | None = None) -> Path:
        """Writes the checkpoint of ``step``; removes all but the newest ``keep``, except those of steps that
        are multiples of ``keep_every`` (the evaluation steps: kept, so a run can be scored again there)."""
        path = self.ckpt_dir / checkpoint_name(step)
        tmp = path.with_suffix(".pt.tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)  # a reader never sees a half-written checkpoint
        except (OSError, RuntimeError) as exc:  # a full disk: OSError, or torch's writer's RuntimeError
            tmp.unlink(missing_ok=True)
            raise WriteFailed(exc, path) from exc
        for old in self.checkpoints()[:-keep]:
            if keep_every is None or checkpoint_step_of(old) % keep_every != 0:
                old.unlink()
        return path

    def append_metrics(self, row: dict) -> None:
        with open(self.root / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after ``step`` (they belong to the part of the run being redone)."""
        path = self.root / METRICS
        if path.exists():
            rows = [r for r in read_metrics(path) if r["step"] <= step]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def newest_common(runs: list[Run], device: torch.device) -> tuple[int, list[dict]]:
    """(step, each run's state) at the newest step where every run's checkpoint loads: a lone run's newest
    loadable checkpoint; an ensemble's newest step all its members share (a member's damaged newer one does
    not stop the others). A damaged checkpoint on the way is set aside as :meth:`Run.newest_loadable` does;
    ValueError where no step will do."""
    paths = []
    for run in runs:
        by_step = {checkpoint_step_of(c): c for c in run.checkpoints()}
        if not by_step:
            raise ValueError(f"--resume {run.root}: no checkpoint in {run.ckpt_dir}")
        paths.append(by_step)
    shared = sorted(set.intersection(*(set(p) for p in paths)), reverse=True)
    for step in shared:
        states = []
        for by_step in paths:
            state = load_checkpoint(by_step[step], device)
            if state is None:
                by_step[step].replace(by_step[step].with_suffix(".pt.damaged"))
                break
            states.append(state)
        else:
            ahead = [f"{r.root.name} at {max(p)}" for r, p in zip(runs, paths, strict=True) if max(p) > step]
            if ahead and len(runs) > 1:
                warnings.warn(f"the ensemble resumes from step {step}, the newest step every member has a checkpoint "
                              f"of; the steps after it are trained again ({', '.join(ahead)})", RuntimeWarning,
                              stacklevel=2)
            return step, states
    if len(runs) == 1:
        raise ValueError(f"--resume {runs[0].root}: none of the {len(paths[0])} checkpoint(s) in {runs[0].ckpt_dir} "
                         "can be loaded (each one's warning says why)")
    at = "; ".join(f"{r.root.name} at {', '.join(map(str, sorted(p)))}" for r, p in zip(runs, paths, strict=True))
    raise ValueError(f"an ensemble resumes together, from a step every member has a loadable checkpoint of; "
                     f"there is none ({at})")


class ReadOnlyRun(Run):
    """The run directory as a process other than rank 0 sees it under torchrun: read, never written."""

    def prepare(self) -> None:
        pass

    def write_json(self, name: str, data: dict) -> None:
        pass

    def clear(self) -> None:
        pass  # rank 0 removes the earlier run's files

    def lock(self) -> None:
        pass  # rank 0 holds the run's lock

    def save_checkpoint(self, state: dict, step: int, keep: int, keep_every: int | None = None) -> Path:
        return self.ckpt_dir / checkpoint_name(step)

    def append_metrics(self, row: dict) -> None:
        pass

    def truncate_metrics(self, step: int) -> None:
        pass
