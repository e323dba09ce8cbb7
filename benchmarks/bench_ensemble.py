"""Member-steps per second: an ensemble of M runs as one batched model against M lone runs.

For each model type, precision and M, the same M runs (seeds 0..M-1, their own batches and noise)
train two ways with the training loop's own step (chyvae_ext.step.make_step):

- lone: M models, one step each, one after another, on the same threads (what M lone runs one after
  another cost per step);
- ensemble: one model built with members=M (chyvae_ext.models.ensemble.stack_models), one step.

Rates are member-steps per second (M steps of the lone loop, or one ensemble step, count M). Repeats
alternate the two ways (and their order) after warm-up; the median is reported with the ratio
ensemble / lone, so every ratio comes from one run. Batches are drawn from a pool of
CorrelatedEllipses images made once: the step's cost depends on the network's shapes, not on the
pixels. On the CPU the ensemble's convolutions run member by member (conv_mode "auto"); --conv-mode
grouped measures the grouped convolutions instead.

    python benchmarks/bench_ensemble.py [--members 1 2 4 8 16] [--models chyvae betavae factorvae]
        [--precisions fp32 bf16] [--batch-size 50] [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch
from bench_train import time_steps  # benchmarks/ is on the path when a script here runs

import chyvae_ext
from chyvae_ext.build import build_model
from chyvae_ext.config import TrainConfig
from chyvae_ext.data import get_dataset
from chyvae_ext.models.ensemble import stack_models
from chyvae_ext.step import make_step


def _pool(device: str, n: int = 512) -> torch.Tensor:
    ds = get_dataset("correlated_ellipses")
    return next(ds.batches(n, device=device, generator=torch.Generator().manual_seed(0)))


def _batches(pool: torch.Tensor, batch_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield pool[torch.randint(0, len(pool), (batch_size,), generator=gen).to(pool.device)]


def _config(model: str, precision: str, device: str, seed: int, batch_size: int) -> TrainConfig:
    hyper = {"chyvae": {"nu": 12.0 + 20 * seed}, "betavae": {"beta": 1.0 + seed}, "factorvae": {"gamma": 10.0 + seed}}
    return TrainConfig(model=model, precision=precision, device=device, seed=seed, batch_size=batch_size,
                       **hyper[model]).resolved()


def _optimisers(model, c: TrainConfig):
    vae = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    opt = torch.optim.Adam(vae, lr=c.lr, betas=(0.9, 0.999))
    opt_d = None
    if c.model == "factorvae":
        opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    return opt, opt_d


def lone_round(model_name: str, precision: str, device: str, members: int, batch_size: int, pool: torch.Tensor):
    """A function making one step of each of M lone runs."""
    steps = []
    for seed in range(members):
        c = _config(model_name, precision, device, seed, batch_size)
        torch.manual_seed(seed)
        model = build_model(c, pool.shape[1]).to(device)
        if c.precision == "bf16":  # as the trainer lays out a lone eager bf16 run
            model = model.to(memory_format=torch.channels_last)
        opt, opt_d = _optimisers(model, c)
        noise = torch.Generator(device=device).manual_seed(seed + 1)
        steps.append(make_step(model, opt, opt_d, _batches(pool, batch_size, seed), noise, bf16=c.precision == "bf16"))

    def run():
        for step in steps:
            out = step()
        return out

    return run


def ensemble_step(model_name: str, precision: str, device: str, members: int, batch_size: int, pool: torch.Tensor,
                  conv_mode: str):
    configs = [_config(model_name, precision, device, seed, batch_size) for seed in range(members)]
    lones = []
    for c in configs:
        torch.manual_seed(c.seed)
        lones.append(build_model(c, pool.shape[1]))
    model = stack_models(lones).to(device)
    model.encoder.conv_mode = model.decoder.conv_mode = conv_mode
    opt, opt_d = _optimisers(model, configs[0])
    sources = [_batches(pool, batch_size, c.seed) for c in configs]

    def batches():
        while True:
            yield torch.stack([next(s) for s in sources])

    gens = [torch.Generator(device=device).manual_seed(c.seed + 1) for c in configs]
    return make_step(model, opt, opt_d, batches(), gens, bf16=configs[0].precision == "bf16")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--models", nargs="+", choices=["chyvae", "betavae", "factorvae"],
                        default=["chyvae", "betavae", "factorvae"])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps-per-repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--conv-mode", choices=["auto", "grouped", "members"], default="auto")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    device = args.device
    pool = _pool(device)
    info = {
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu",
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "chyvae_ext": chyvae_ext.__version__,
        "batch_size": args.batch_size,
        "conv_mode": args.conv_mode,
    }
    print(f"# {info['cpu']} ({info['threads']} threads), device {device}, torch {info['torch']}, "
          f"batch {args.batch_size}, conv_mode {args.conv_mode}")
    print(f"{'model':10s} {'prec':5s} {'M':>3s} {'lone m-steps/s':>15s} {'ensemble m-steps/s':>19s} {'ratio':>6s}")
    rows = []
    for model_name in args.models:
        for precision in args.precisions:
            for m in args.members:
                lone = lone_round(model_name, precision, device, m, args.batch_size, pool)
                ens = ensemble_step(model_name, precision, device, m, args.batch_size, pool, args.conv_mode)
                lone(), ens()  # warm-up (and the optimisers' state)
                t_lone, t_ens = [], []
                for r in range(args.repeats):
                    order = [(lone, t_lone), (ens, t_ens)]
                    for fn, times in order if r % 2 == 0 else order[::-1]:
                        times.append(time_steps(fn, device, args.steps_per_repeat))
                row = {
                    "model": model_name,
                    "precision": precision,
                    "members": m,
                    "lone_member_steps_per_s": m / statistics.median(t_lone),
                    "ensemble_member_steps_per_s": m / statistics.median(t_ens),
                }
                row["ratio"] = row["ensemble_member_steps_per_s"] / row["lone_member_steps_per_s"]
                rows.append(row)
                print(f"{model_name:10s} {precision:5s} {m:3d} {row['lone_member_steps_per_s']:15.2f} "
                      f"{row['ensemble_member_steps_per_s']:19.2f} {row['ratio']:6.2f}", flush=True)
                del lone, ens
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=2)
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
