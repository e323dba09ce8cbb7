"""What the training loop runs inside: SIGINT/SIGTERM turned into a flag checked between steps, the
progress bar and its lines, flushed denormals on a CPU, and a silent TensorBoard writer for the
processes that do not write (torchrun's ranks above 0)."""

from __future__ import annotations

import contextlib
import signal
import sys

import torch


class NoWriter:
    """TensorBoard's writer where rank 0 writes and this process does not."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class Interrupted(Exception):
    """A signal came during work that is abandoned rather than finished (an evaluation)."""


class StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps; inside :meth:`interrupting`, a
    signal also raises :class:`Interrupted` at once (a long evaluation is abandoned, not awaited)."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}
        self._raise = False

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        if self._raise:
            self._raise = False
            raise Interrupted(signal.Signals(signum).name)

    @contextlib.contextmanager
    def interrupting(self):
        """A block a signal interrupts (Interrupted is raised in it); one that came before it raises at once."""
        if self.signal is not None:
            raise Interrupted(signal.Signals(self.signal).name)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def progress_bar(total: int, initial: int):
    """A tqdm bar on a terminal (stderr), None elsewhere (the loop prints a line per row instead)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    return None


@contextlib.contextmanager
def flush_denormals(device: torch.device):
    """On a CPU, float arithmetic flushes denormal numbers (below 1.2e-38 in float32) to zero while the
    block runs (``torch.set_flush_denormal``), and stops at its end (the process's default).

    A decoder that has learnt the background gives logits of -100 and below there; their sigmoid, and
    so the BCE's gradient, is denormal, and x86 cores take a slow path for every operation on a
    denormal: training slows down once the background is learnt (``benchmarks/bench_denormals.py``).
    The values flushed are below 1.2e-38, far below anything the loss or its gradients resolve."""
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flush:
            torch.set_flush_denormal(False)


def span(values: list[float], digits: int) -> str:
    """One value, or the range over an ensemble's members."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{min(values):.{digits}f}..{max(values):.{digits}f}"


def duration(seconds: float) -> str:
    """A time span in the unit that reads best: "40 s", "12 min", "3.4 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def show_progress(bar, step: int, steps: int, since: int, rate: float, losses: list[float],
                  recon: float | None) -> None:
    """The bar's update for ``since`` more steps, or (``bar`` None: no terminal) one printed line with the
    time the remaining steps take at this rate (evaluations come on top); ``losses``: every member's mean
    loss over them, ``recon`` a lone run's reconstruction."""
    if bar is not None:
        bar.update(since)
        bar.set_postfix(loss=span(losses, 1), steps_s=f"{rate:.1f}")
        return
    who = f"  {len(losses)} members" if recon is None else ""
    detail = f"  loss {span(losses, 2)}" + ("" if recon is None else f"  recon {recon:.2f}")
    left = f", about {duration((steps - step) / rate)} left" if step < steps and rate > 0 else ""
    print(f"step {step}/{steps}{who}{detail}  {rate:.1f} steps/s{left}", flush=True)


def say(bar, line: str) -> None:
    """``line`` printed where the progress is shown: above the bar, or on stdout."""
    if bar is not None:
        bar.write(line)
    else:
        print(line, flush=True)
