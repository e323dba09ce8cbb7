"""An ensemble's convolution stacks on the CPU, members side by side on threads.

A lone run at batch 50 uses its torch threads inside each convolution, and these small convolutions
leave part of every other thread idle (the measured ratio is in benchmarks/RESULTS.md). Members are independent,
so an ensemble can instead give each thread whole members, each running its convolutions with one
intra-op thread: forward and backward. ``run_stacks`` does that as one autograd Function: its
forward runs each member's stack on a worker thread (recording that member's graph there), its
backward runs each member's backward on a worker thread (torch's CPU autograd runs a graph on the
thread that asks for it) and stacks the gradients. Every member computes exactly what its lone
convolutions compute; only which thread runs them changes.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

import torch

_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_LOCK = threading.Lock()


def workers() -> int:
    """Threads for members side by side: torch's intra-op threads (members then run single-threaded)."""
    return torch.get_num_threads()


def _pool(size: int) -> concurrent.futures.ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE != size:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="chyvae_ext-member")
            _POOL_SIZE = size
    return _POOL


def _on_worker(fn: Callable, autocast: tuple[bool, torch.dtype]):
    """fn wrapped to run on a worker: one intra-op thread, and the caller's CPU autocast (thread-local)."""

    def wrapped(*args):
        torch.set_num_threads(1)
        with torch.autocast("cpu", dtype=autocast[1], enabled=autocast[0]):
            return fn(*args)

    return wrapped


class _Stacks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, member_fn, size, x, *params):
        autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))

        def run(m):
            with torch.enable_grad():
                xm = x[m].detach().requires_grad_(ctx.needs_input_grad[2])
                pm = [p[m].detach().requires_grad_(ctx.needs_input_grad[3 + i]) for i, p in enumerate(params)]
                out = member_fn(xm, pm)
            return xm, pm, out

        results = list(_pool(size).map(_on_worker(run, autocast), range(x.shape[0])))
        ctx.results = results
        ctx.size = size
        return torch.stack([out.detach() for _, _, out in results])

    @staticmethod
    def backward(ctx, grad):
        results, ctx.results = ctx.results, None

        def back(m):
            xm, pm, out = results[m]
            inputs = [t for t in [xm, *pm] if t.requires_grad]
            grads = iter(torch.autograd.grad(out, inputs, grad[m]) if inputs else ())
            return [next(grads) if t.requires_grad else None for t in [xm, *pm]]

        per_member = list(_pool(ctx.size).map(_on_worker(back, (False, torch.bfloat16)), range(len(results))))
        stacked = [None if g[0] is None else torch.stack(g) for g in zip(*per_member, strict=True)]
        return (None, None, *stacked)


def run_stacks(member_fn: Callable, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """member_fn(x[m], [p[m] for p in params]) for every member m, members side by side on threads;
    returns the outputs stacked on a new leading dimension, differentiable in x and params.
    Without gradients (evaluation, inference mode) the members just run on the threads."""
    size = min(workers(), x.shape[0])
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _Stacks.apply(member_fn, size, x, *params)
    autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
    inference = torch.is_inference_mode_enabled()

    def run(m):
        with torch.inference_mode(inference), torch.no_grad():
            return member_fn(x[m], [p[m] for p in params])

    return torch.stack(list(_pool(size).map(_on_worker(run, autocast), range(x.shape[0]))))
