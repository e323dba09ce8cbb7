"""An ensemble's batches of a fixed set: M members' per-member batches stacked (each member's own gather
and copy, then a stack) against StackedBatches (one shared store, indices drawn a chunk at a time, one
gather for every member). Both give the same batches (tests/test_stacked_batches.py); this times them.

Rates are member-batches per second, the median of --repeats rounds of --steps batches, the two ways
alternated in each round, so that every ratio comes from one run.

    python benchmarks/bench_batches.py [--members 1 8 32] [--batch-size 50] [--size 20000] [--chunk 500]
        [--device cpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from chyvae_ext.data import get_dataset
from chyvae_ext.data.base import StackedBatches


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_way(make, steps: int, device: torch.device) -> float:
    batches = make()
    next(batches)  # warm: the store is on the device, the first chunk drawn
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(batches)
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--size", type=int, default=20000, help="images in the fixed set")
    parser.add_argument("--chunk", type=int, default=500, help="steps of indices drawn at a time (ckpt_every)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset = get_dataset("correlated_ellipses", size=args.size)
    rows = []
    for m in args.members:
        def stacked_per_member(m=m):
            lone = [dataset.batches(args.batch_size, device=device, generator=torch.Generator().manual_seed(s))
                    for s in range(m)]
            while True:
                yield torch.stack([next(b) for b in lone])

        def one_gather(m=m):
            return StackedBatches(dataset, args.batch_size, [torch.Generator().manual_seed(s) for s in range(m)],
                                  device=device, chunk=args.chunk)

        old, new = [], []
        for r in range(args.repeats):
            ways = [(stacked_per_member, old), (one_gather, new)]
            for make, out in ways if r % 2 == 0 else ways[::-1]:
                out.append(m * args.steps / time_way(make, args.steps, device))
        row = {"members": m, "per_member_stack": statistics.median(old), "stacked_batches": statistics.median(new)}
        row["ratio"] = row["stacked_batches"] / row["per_member_stack"]
        rows.append(row)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {where}; torch {torch.__version__}; {torch.get_num_threads()} threads; batch {args.batch_size}, "
          f"fixed set of {args.size}, chunk {args.chunk}")
    print("| members | per-member stack (member-batches/s) | StackedBatches | ratio |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['members']} | {row['per_member_stack']:,.0f} | {row['stacked_batches']:,.0f} | "
              f"{row['ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "torch": torch.__version__, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
