"""Forward+backward of the CHyVAE regulariser per minibatch: fused op against the PyTorch reference.

docs/math.md 5: one process, interleaved repeats after warm-up, medians; CUDA timed with events after a
synchronise, plus the device time of a captured CUDA graph of the fused forward+backward. Before
timing, each configuration checks that fused and reference agree (values and gradients).

    python benchmarks/bench_elbo.py                      # full grid on CPU (and CUDA if present)
    python benchmarks/bench_elbo.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time

import torch

import chyvae_ext
from chyvae_ext import chyvae_regularizer

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}


def make_inputs(batch: int, d: int, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, d, generator=gen, dtype=torch.float64)
    a = torch.randn(batch, d, d, generator=gen, dtype=torch.float64) * 0.3
    L = torch.tril(a, -1) + torch.diag_embed(torch.nn.functional.softplus(torch.diagonal(a, dim1=-2, dim2=-1)) + 1e-4)
    z = mu + (L @ torch.randn(batch, d, 1, generator=gen, dtype=torch.float64)).squeeze(-1)
    return [t.to(dtype=dtype, device=device).requires_grad_() for t in (mu, L, z)]


def step(impl: str, inputs, nu: float):
    out = chyvae_regularizer(*inputs, nu, impl=impl)
    return (out, *torch.autograd.grad(out.sum(), inputs))


def check_agreement(inputs, nu: float, dtype: torch.dtype) -> float:
    """Largest relative difference between fused and reference (value and gradients, float64 truth)."""
    fused = step("fused", inputs, nu)
    exact_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref = step("reference", exact_inputs, nu)
    worst = 0.0
    for a, b in zip(fused, ref, strict=True):
        worst = max(worst, float((a.detach().double() - b.detach()).norm() / b.detach().norm()))
    if not worst <= TOLERANCE[dtype]:
        raise SystemExit(f"fused and reference disagree: relative difference {worst:.3g} > {TOLERANCE[dtype]:.0e}")
    return worst


def time_call(fn, device: str, inner: int) -> float:
    """Seconds per call, averaged over `inner` back-to-back calls."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    # As timeit does: no garbage-collection pause lands inside a timed loop (the objects of each
    # call are freed by reference counting either way).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(fn, device: str, target_s: float) -> int:
    inner = 1
    while True:
        elapsed = time_call(fn, device, inner) * inner
        if elapsed >= target_s or inner >= 1 << 16:
            return inner
        inner *= 2


def graph_replay_time(inputs, nu: float, repeats: int) -> float:
    """Median device seconds of one replay of a CUDA graph holding the fused forward+backward."""
    static = inputs
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step("fused", static, nu)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step("fused", static, nu)
    times = []
    for _ in range(repeats):
        times.append(time_call(graph.replay, "cuda", 20))
    return statistics.median(times)


def bench_one(batch: int, d: int, dtype: torch.dtype, device: str, repeats: int, target_s: float):
    nu = float(d + 2) if d > 10 else 200.0
    inputs = make_inputs(batch, d, dtype, device)
    err = check_agreement(inputs, nu, dtype)
    fns = {impl: (lambda impl=impl: step(impl, inputs, nu)) for impl in ("fused", "reference")}
    inner = {impl: calibrate(fn, device, target_s) for impl, fn in fns.items()}
    samples = {impl: [] for impl in fns}
    for _ in range(repeats):  # interleaved: fused, reference, fused, ...
        for impl, fn in fns.items():
            samples[impl].append(time_call(fn, device, inner[impl]))
    fused, ref = statistics.median(samples["fused"]), statistics.median(samples["reference"])
    row = {
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "batch": batch,
        "d": d,
        "nu": nu,
        "fused_us": fused * 1e6,
        "reference_us": ref * 1e6,
        "speedup": ref / fused,
        "max_rel_diff": err,
        "repeats": repeats,
    }
    if device == "cuda":
        row["fused_graph_us"] = graph_replay_time(inputs, nu, repeats) * 1e6
    return row


def machine_description(devices) -> dict:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "chyvae_ext": chyvae_ext.build_info(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if "cuda" in devices:
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_table(rows) -> None:
    header = (f"{'device':6} {'layout':7} {'dtype':8} {'B':>5} {'d':>3} {'fused us':>10} {'reference us':>13} "
              f"{'speedup':>8}")
    if any("fused_graph_us" in r for r in rows):
        header += f" {'graph us':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        line = (f"{r['device']:6} {r.get('variant', 'auto'):7} {r['dtype']:8} {r['batch']:5d} {r['d']:3d} "
                f"{r['fused_us']:10.1f} "
                f"{r['reference_us']:13.1f} {r['speedup']:7.1f}x")
        if "fused_graph_us" in r:
            line += f" {r['fused_graph_us']:9.1f}"
        print(line, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="'all': the CPU, and CUDA when a GPU is present (default)")
    parser.add_argument("--batch", type=int, nargs="+", default=[50, 64, 256, 1024, 4096])
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 32])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float64"], default=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats; the median is reported")
    parser.add_argument("--target-ms", type=float, default=20.0, help="time per repeat for each implementation")
    parser.add_argument("--quick", action="store_true", help="B in {64, 1024}, float32, 7 repeats")
    parser.add_argument("--json", metavar="PATH", help="write the rows and the machine description here")
    parser.add_argument("--cuda-variants", nargs="+", choices=["auto", "thread", "warp", "unrolled"], default=["auto"],
                        help="CUDA layouts of the K = 1 isotropic kernels to time: a thread or a warp per datapoint, "
                             "or a warp with the rows unrolled")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.dtypes, args.repeats = [64, 1024], ["float32"], 7
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [dev for dev in devices if dev == "cpu" or torch.cuda.is_available()]
    if "cuda" in devices and not chyvae_ext.fused_available(torch.device("cuda")):
        print("note: built without CUDA kernels; skipping CUDA", file=sys.stderr)
        devices.remove("cuda")
    machine = machine_description(devices)
    print(f"# {machine['cpu']}, {machine['torch_threads']} threads, torch {machine['torch']}"
          + (f", {machine['gpu']}" if "gpu" in machine else ""))
    rows = []
    for device in devices:
        for variant in args.cuda_variants if device == "cuda" else ["auto"]:
            if device == "cuda":
                chyvae_ext._C.set_cuda_kernel_variant(variant)
            for dtype_name in args.dtypes:
                for d in args.dims:
                    for batch in args.batch:
                        row = bench_one(batch, d, getattr(torch, dtype_name), device, args.repeats,
                                        args.target_ms / 1e3)
                        row["variant"] = variant
                        rows.append(row)
                        print(f"  {device} {variant} {dtype_name} B={batch} d={d}: fused {row['fused_us']:.1f} us, "
                              f"reference {row['reference_us']:.1f} us", file=sys.stderr, flush=True)
        if device == "cuda":
            chyvae_ext._C.set_cuda_kernel_variant("auto")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
