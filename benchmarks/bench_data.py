"""Data throughput: random training batches from a materialised set, procedural rendering, and the same
factors' pixels looked up in a PixelTable (rendered once) instead of rendered.

Targets of issue 3 (this 2-core CPU): >= 20,000 images/s for random 64-image batches from a
materialised set, >= 5,000 images/s for procedural rendering.

    python benchmarks/bench_data.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from chyvae_ext.data import get_dataset


def images_per_second(fn, images_per_call: int, repeats: int = 7, min_time: float = 0.2) -> float:
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_time:
            fn()
            calls += 1
        rates.append(calls * images_per_call / (time.perf_counter() - t0))
    return statistics.median(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--materialised-size", type=int, default=50_000)
    args = parser.parse_args(argv)
    rows = []
    ellipses = get_dataset("correlated_ellipses", size=args.materialised_size, seed=0)
    batches = ellipses.batches(64, generator=torch.Generator().manual_seed(0))
    rows.append(
        (
            "materialised correlated_ellipses, batches of 64 (CPU tensors)",
            images_per_second(lambda: next(batches), 64),
            20_000,
        )
    )
    for name in ("shapes2d", "correlated_ellipses"):
        ds = get_dataset(name)
        rng = np.random.default_rng(0)
        rows.append(
            (
                f"procedural {name}, render 256",
                images_per_second(lambda ds=ds, rng=rng: ds.random_images(256, rng), 256),
                5_000,
            )
        )
    from chyvae_ext.data import PixelTable

    for name in ("shapes2d", "correlated_ellipses"):
        ds = get_dataset(name)
        t0 = time.perf_counter()
        table = PixelTable(ds)
        built = time.perf_counter() - t0
        factors = ds.sample_factors(1024, np.random.default_rng(1))
        render = images_per_second(lambda ds=ds, f=factors: ds.pixels(f), len(factors))
        lookup = images_per_second(lambda t=table, f=factors: t.pixels(f), len(factors))
        rows.append((f"{name} pixels of 1024 factors, rendered", render, 0))
        what = f"{name} the same from its PixelTable ({lookup / render:.1f}x; built in {built:.0f} s)"
        rows.append((what, lookup, 0))
        del table
    print(f"{'what':66} {'images/s':>10} {'target':>8}")
    for what, rate, target in rows:
        verdict = ("ok" if rate >= target else "MISSED") if target else "-"
        print(f"{what:66} {rate:10.0f} {target:8d}  {verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"what": w, "images_per_s": r, "target": t} for w, r, t in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
