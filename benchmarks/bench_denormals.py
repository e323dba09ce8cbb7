"""Training-step speed on a CPU with and without flushing denormal floats to zero.

A decoder that has learnt the background of a mostly-black dataset gives very negative logits there
(down to -240 in a trained run); those in the band (-88.7, -87.3) have a sigmoid, and so a BCE
gradient, that is a denormal float32 (below 1.2e-38; further down the sigmoid is exactly 0), and x86
cores take a slow path for every operation on one. The long CPU reproduction (issue 17) ran at
half its starting speed after about 2,000 steps for this reason; training now flushes denormals to
zero on the CPU (``chyvae_ext.train.flush_denormals``).

What is timed: whole training steps (forward, backward, Adam) of a d = 10, h = 128 model at batch 50
on CorrelatedEllipses images, one thread, eager float32; "logits in the band" shifts the decoder's last
bias by -88 (a fresh decoder's logits, spread around 0, then fall in and around the band: a synthetic
worst case), "fresh" leaves it as initialised; --checkpoint adds a trained run's weights (the real case:
a small share of its pixels in the band). Each setting:
the median of --repeats timings of --steps steps after two of warm-up.

    python benchmarks/bench_denormals.py [--steps 20] [--repeats 3] [--threads 1] [--checkpoint PT] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from chyvae_ext.data import get_dataset
from chyvae_ext.models import BetaVAE, CHyVAE


def steps_per_s(model, x, steps: int, repeats: int) -> float:
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    gen = torch.Generator().manual_seed(0)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def run(n):
        for _ in range(n):
            out = model.loss(x, generator=gen)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()

    rates = []
    for _ in range(repeats):
        model.load_state_dict(state)  # every timing from the same weights
        run(2)
        t0 = time.perf_counter()
        run(steps)
        rates.append(steps / (time.perf_counter() - t0))
    return statistics.median(rates)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint", help="a lone CHyVAE run's checkpoint (nu from its config) instead of shifted biases")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.from_numpy(get_dataset("correlated_ellipses").random_images(50, np.random.default_rng(0)))
    cases = []
    for name, cls in (("CHyVAE", CHyVAE), ("beta-VAE", BetaVAE)):
        for background in ("fresh", "logits in the band"):
            torch.manual_seed(0)
            model = cls(10, 1, 128)
            if background != "fresh":
                with torch.no_grad():
                    model.decoder.deconv[-1].bias -= 88.0
            cases.append((name, background, model))
    if args.checkpoint:
        state = torch.load(args.checkpoint, weights_only=True, map_location="cpu")
        model = CHyVAE(10, 1, 128, nu=float(state["config"]["nu"]))
        model.load_state_dict(state["model"])
        cases.append(("CHyVAE", f"trained ({args.checkpoint})", model))
    rows = []
    for name, background, model in cases:
        with torch.no_grad():
            logits = model.decoder(model.posterior(x)[0])
        p_bg = torch.sigmoid(logits)
        denormal = float(((p_bg > 0) & (p_bg < torch.finfo(torch.float32).tiny)).float().mean())
        torch.set_flush_denormal(False)
        slow = steps_per_s(model, x, args.steps, args.repeats)
        torch.set_flush_denormal(True)
        fast = steps_per_s(model, x, args.steps, args.repeats)
        torch.set_flush_denormal(False)
        rows.append({"model": name, "decoder": background, "denormal_pixels": denormal,
                     "steps_per_s_as_is": slow, "steps_per_s_flushed": fast, "speedup": fast / slow})
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {cpu}; batch 50, d = 10, h = 128, float32 eager")
    print(f"{'model':9s} {'decoder':20s} {'denormal px':>11s} {'steps/s as is':>13s} {'flushed':>8s} {'speedup':>8s}")
    for r in rows:
        print(f"{r['model']:9s} {r['decoder'][:20]:20s} {r['denormal_pixels']:11.1%} {r['steps_per_s_as_is']:13.2f} "
              f"{r['steps_per_s_flushed']:8.2f} {r['speedup']:7.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "cpu": cpu, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
