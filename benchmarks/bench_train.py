"""Training-step time of the three models, interleaved in one process.

Each configuration runs the training loop's own step (chyvae_ext.step.make_step) on the same
batches; repeats are interleaved across configurations after warm-up, and the median time per
step is reported with the ratios:

- CHyVAE / beta-VAE (same batch, network and precision) and fp32 / bf16;
- the per-minibatch speed-up the package exists for: a whole CHyVAE training step with
  impl="fused" against impl="reference", at d = 10 (h = 128, the synthetic sets) and d = 32
  (h = 256, 3DFaces, 3DChairs, CelebA), in each precision;
- with --compile: each model's step under torch.compile (CUDA graphs on a GPU) against eager.

Images are CorrelatedEllipses (one channel) for every configuration: the step's cost depends on
the network's shapes, not on what the pixels show.

    python benchmarks/bench_train.py [--batch-size 64] [--repeats 7] [--compile] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import chyvae_ext
from chyvae_ext.build import build_model
from chyvae_ext.config import TrainConfig, fast_bf16
from chyvae_ext.data import get_dataset
from chyvae_ext.step import adam_options, make_step, whole_step_compiles


def setup(cfg: dict, batch_size: int, device: str, images: torch.Tensor):
    c = TrainConfig(
        model=cfg["model"], precision=cfg["precision"], device=device, batch_size=batch_size,
        z_dim=cfg["d"], hidden=cfg["hidden"], impl=cfg["impl"], nu=200.0 if cfg["d"] == 10 else 100.0,
    ).resolved()
    torch.manual_seed(0)
    model = build_model(c, images.shape[1]).to(device)
    if c.precision == "bf16" and not cfg["compile"]:  # as train.py: compiled, Inductor picks layouts
        model = model.to(memory_format=torch.channels_last)
    vae = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    opt = torch.optim.Adam(vae, lr=1e-4, **adam_options(cfg["compile"], device))
    opt_d = (
        torch.optim.Adam(model.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
        if cfg["model"] == "factorvae"
        else None
    )
    gen = torch.Generator().manual_seed(0)
    images = images.to(device)

    def batches():
        while True:
            yield images[torch.randint(0, len(images), (batch_size,), generator=gen).to(device)]

    return make_step(
        model, opt, opt_d, batches(), torch.Generator(device=device).manual_seed(1),
        bf16=c.precision == "bf16", compile="inductor" if cfg["compile"] else None,
    )


def time_steps(step, device: str, n: int) -> float:
    """Seconds per call of step() over n calls, waiting for the device at the end (the loss may be
    one value or an ensemble's one per member)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        out = step()
    float(out["loss"].detach().sum())  # wait for the last step
    return (time.perf_counter() - t0) / n


def label(cfg: dict) -> str:
    text = f"{cfg['model']} d={cfg['d']} {cfg['precision']}"
    if cfg["model"] == "chyvae":
        text += f" {cfg['impl']}"
    return text + (" compiled" if cfg["compile"] else "")


def configurations(precisions: list[str], compile: bool, compile_only: bool = False) -> list[dict]:
    base = dict(d=10, hidden=128, impl="auto", compile=False)
    configs = []
    for p in precisions:
        for m in ("betavae", "chyvae", "factorvae"):
            configs.append(dict(base, model=m, precision=p))
        if not compile_only:
            configs.append(dict(base, model="chyvae", precision=p, impl="reference"))
            for impl in ("auto", "reference"):
                configs.append(dict(base, model="chyvae", precision=p, impl=impl, d=32, hidden=256))
        if compile:
            for m in ("betavae", "chyvae", "factorvae"):
                configs.append(dict(base, model=m, precision=p, compile=True))
    return configs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps-per-repeat", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 where the hardware has fast bf16")
    parser.add_argument("--compile", action="store_true", help="add each model's step under torch.compile")
    parser.add_argument("--compile-only", action="store_true",
                        help="with --compile: only the three models, eager and compiled (no fused/reference rows)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is available")
    ds = get_dataset("correlated_ellipses", size=2000, seed=0)
    images = torch.from_numpy(ds.uint8_array()).float().div_(255)
    precisions = args.precisions or (["fp32", "bf16"] if fast_bf16(args.device) else ["fp32"])
    configs = configurations(precisions, args.compile, args.compile_only)
    steps = {}
    for cfg in configs:
        t0 = time.perf_counter()
        steps[label(cfg)] = setup(cfg, args.batch_size, args.device, images)
        time_steps(steps[label(cfg)], args.device, 5 if cfg["compile"] else 3)  # warm-up (and compilation)
        print(f"  ready: {label(cfg)} ({time.perf_counter() - t0:.1f} s)", flush=True)
    samples = {k: [] for k in steps}
    for _ in range(args.repeats):
        for k, step in steps.items():
            samples[k].append(time_steps(step, args.device, args.steps_per_repeat))
    med = {k: statistics.median(v) for k, v in samples.items()}
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor()}
    try:
        with open("/proc/cpuinfo") as f:
            machine["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if args.device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name()
    machine["chyvae_ext"] = chyvae_ext.build_info()
    machine["whole_step_compiles"] = whole_step_compiles()
    print(f"batch {args.batch_size}, device {args.device} ({machine.get('gpu', machine['cpu'])}), "
          f"{machine['threads']} threads, torch {machine['torch']}, whole step in one graph: "
          f"{machine['whole_step_compiles']}")
    print(f"{'configuration':40} {'ms/step':>8} {'steps/s':>8}")
    for k, t in med.items():
        print(f"{k:40} {t * 1e3:8.2f} {1 / t:8.1f}")
    ratios = {}

    def ratio(name: str, numerator: str, denominator: str) -> None:
        if numerator in med and denominator in med:
            ratios[name] = med[numerator] / med[denominator]

    for p in precisions:
        ratio(f"chyvae/betavae {p}", f"chyvae d=10 {p} auto", f"betavae d=10 {p}")
        for d in (10, 32):
            ratio(f"chyvae step reference/fused d={d} {p}", f"chyvae d={d} {p} reference", f"chyvae d={d} {p} auto")
        ratio(f"chyvae/betavae {p} compiled", f"chyvae d=10 {p} auto compiled", f"betavae d=10 {p} compiled")
        for m in ("betavae", "chyvae", "factorvae"):
            key = f"{m} d=10 {p}" + (" auto" if m == "chyvae" else "")
            ratio(f"{m} {p} eager/compiled (compile speed-up)", key, key + " compiled")
    for m in ("betavae", "chyvae", "factorvae"):
        key = " auto" if m == "chyvae" else ""
        ratio(f"{m} fp32/bf16 (bf16 speed-up)", f"{m} d=10 fp32{key}", f"{m} d=10 bf16{key}")
    for k, v in ratios.items():
        print(f"{k:48} {v:7.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "ms_per_step": {k: t * 1e3 for k, t in med.items()},
                    "steps_per_s": {k: 1 / t for k, t in med.items()},
                    "ratios": ratios,
                    "batch_size": args.batch_size,
                    "device": args.device,
                    "machine": machine,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
