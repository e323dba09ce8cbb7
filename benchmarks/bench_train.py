"""Training-step time of the three models in both precisions, interleaved in one process.

Each configuration runs the training loop's own step (chyvae_ext.train.make_step) on the same
batches; repeats are interleaved across configurations after warm-up, and the median time per
step is reported with the ratios issue 6 asks for: CHyVAE / beta-VAE (same batch, network and
precision) and fp32 / bf16.

    python benchmarks/bench_train.py [--batch-size 64] [--repeats 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from chyvae_ext.data import get_dataset
from chyvae_ext.train import TrainConfig, build_model, fast_bf16, make_step


def setup(model_name: str, precision: str, batch_size: int, device: str, images: torch.Tensor):
    c = TrainConfig(model=model_name, precision=precision, device=device, batch_size=batch_size).resolved()
    torch.manual_seed(0)
    model = build_model(c, images.shape[1]).to(device)
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    vae = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    opt = torch.optim.Adam(vae, lr=1e-4)
    opt_d = (
        torch.optim.Adam(model.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
        if model_name == "factorvae"
        else None
    )
    gen = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield images[torch.randint(0, len(images), (batch_size,), generator=gen)].to(device)

    return make_step(
        model, opt, opt_d, batches(), torch.Generator(device=device).manual_seed(1), bf16=precision == "bf16"
    )


def time_steps(step, device: str, n: int) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        out = step()
    float(out["loss"].detach())  # wait for the last step
    return (time.perf_counter() - t0) / n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps-per-repeat", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    ds = get_dataset("correlated_ellipses", size=2000, seed=0)
    images = torch.from_numpy(ds.uint8_array()).float().div_(255)
    precisions = ["fp32", "bf16"] if fast_bf16(args.device) else ["fp32"]
    configs = [(m, p) for p in precisions for m in ("betavae", "chyvae", "factorvae")]
    steps = {cfg: setup(*cfg, args.batch_size, args.device, images) for cfg in configs}
    for cfg in configs:  # warm-up
        time_steps(steps[cfg], args.device, 3)
    samples = {cfg: [] for cfg in configs}
    for _ in range(args.repeats):
        for cfg in configs:
            samples[cfg].append(time_steps(steps[cfg], args.device, args.steps_per_repeat))
    med = {cfg: statistics.median(v) for cfg, v in samples.items()}
    print(f"batch {args.batch_size}, device {args.device}, {torch.get_num_threads()} threads")
    print(f"{'model':10} {'precision':9} {'ms/step':>8} {'steps/s':>8}")
    for (m, p), t in med.items():
        print(f"{m:10} {p:9} {t * 1e3:8.1f} {1 / t:8.1f}")
    ratios = {}
    for p in precisions:
        ratios[f"chyvae/betavae {p}"] = med[("chyvae", p)] / med[("betavae", p)]
    if "bf16" in precisions:
        for m in ("betavae", "chyvae", "factorvae"):
            ratios[f"{m} fp32/bf16 (bf16 speed-up)"] = med[(m, "fp32")] / med[(m, "bf16")]
    for k, v in ratios.items():
        print(f"{k:40} {v:6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "ms_per_step": {f"{m} {p}": t * 1e3 for (m, p), t in med.items()},
                    "ratios": ratios,
                    "batch_size": args.batch_size,
                    "device": args.device,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
