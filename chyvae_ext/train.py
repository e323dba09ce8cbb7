"""``python -m chyvae_ext.train``: train CHyVAE, beta-VAE or FactorVAE and write a run directory.

With no options it trains CHyVAE on procedural CorrelatedEllipses for a few minutes on a laptop
CPU. Everything a run produces lands in ``--out`` (default ``runs/<model>-<dataset>-seed<seed>``):

    config.json        the resolved configuration
    metrics.jsonl      one JSON object per logging interval (kind "train": losses and their terms,
                       steps/s) and per evaluation (kind "eval": held-out negative ELBO and terms, and
                       the --metrics, by default the FactorVAE score, on sets with ground-truth factors)
    status.json        running / finished / interrupted / failed, with the step
    tb/                TensorBoard event files
    checkpoints/       step_XXXXXXXX.pt, written atomically, the last few kept
    reconstructions.png, samples.png, traversals.png, traversals.gif, curves.png

``--resume RUN_DIR`` continues from the last checkpoint (model, optimisers, random states and data
order): on the CPU an interrupted and resumed run ends with the same parameters, bit for bit, as
one never interrupted. SIGINT or SIGTERM saves a checkpoint and exits with status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from ._checks import check_int
from .data import DataError, get_dataset
from .data.base import GroundTruthDataset
from .metrics import PROTOCOLS, make_encoder, parse_metrics, score
from .models import BetaVAE, CHyVAE, FactorVAE
from .plots import save_curves, save_model_pictures
from .runfiles import read_metrics

MODELS = ("chyvae", "betavae", "factorvae")
SYNTHETIC = ("shapes2d", "dsprites", "correlated_ellipses")


@dataclasses.dataclass
class TrainConfig:
    model: str = "chyvae"
    dataset: str = "correlated_ellipses"
    data_root: str | None = None
    z_dim: int | None = None  # default: 10 for the synthetic sets, 32 otherwise (SPEC 2)
    hidden: int | None = None  # default: 128 for the synthetic sets, 256 otherwise
    nu: float = 200.0
    learn_nu: bool = False
    num_samples: int = 1
    beta: float = 4.0
    gamma: float = 10.0
    steps: int = 2500
    batch_size: int = 50
    lr: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 where the hardware has fast bf16)
    impl: str = "auto"
    out: str | None = None
    log_every: int = 50
    eval_every: int = 1250
    metrics: str = "factor_vae"  # at every evaluation, on datasets with ground-truth factors; "none" to skip
    metric_protocol: str = "chyvae"
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    compile: bool = False  # the training step under torch.compile (CUDA graphs on a GPU)

    def resolved(self) -> TrainConfig:
        c = dataclasses.replace(self)
        synthetic = c.dataset in SYNTHETIC
        c.z_dim = c.z_dim if c.z_dim is not None else (10 if synthetic else 32)
        c.hidden = c.hidden if c.hidden is not None else (128 if synthetic else 256)
        if c.precision == "auto":
            c.precision = "bf16" if fast_bf16(c.device) else "fp32"
        c.out = c.out or os.path.join("runs", f"{c.model}-{c.dataset}-seed{c.seed}")
        return c


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def fast_bf16(device: str) -> bool:
    """Whether bf16 matrix units are there: AMX/AVX512-BF16 on the CPU, bf16 support on a GPU.

    On the CPU, oneDNN's own check also says yes on plain AVX-512, where bf16 is emulated and a
    training step ran at half the speed of fp32 (measured, benchmarks/RESULTS.md): where the CPU's
    flags can be read, they decide.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_config(c: TrainConfig) -> None:
    """Every invalid option or combination, before anything is built."""
    if c.model not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {c.model!r}")
    for name in (
        "steps",
        "batch_size",
        "log_every",
        "eval_every",
        "ckpt_every",
        "keep_checkpoints",
        "z_dim",
        "hidden",
        "num_samples",
    ):
        check_int(f"--{name.replace('_', '-')}", getattr(c, name), 1)
    for name in ("lr", "beta", "gamma", "nu"):
        v = getattr(c, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"--{name} must be a positive number, got {v!r}")
    if c.model == "chyvae" and c.nu <= c.z_dim - 1:
        raise ValueError(f"--nu must be greater than z_dim - 1 = {c.z_dim - 1} for CHyVAE, got {c.nu}")
    if c.precision not in ("fp32", "bf16"):
        raise ValueError(f"--precision must be fp32, bf16 or auto, got {c.precision!r}")
    try:
        parse_metrics(c.metrics)
    except ValueError as exc:
        raise ValueError(f"--{exc}") from exc
    if c.metric_protocol not in PROTOCOLS:
        raise ValueError(f"--metric-protocol must be one of {', '.join(PROTOCOLS)}, got {c.metric_protocol!r}")
    if c.impl not in ("auto", "fused", "reference"):
        raise ValueError(f"--impl must be auto, fused or reference, got {c.impl!r}")
    try:
        dev = torch.device(c.device)
    except RuntimeError as exc:
        raise ValueError(f"--device {c.device!r} is not a device: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {c.device}: no CUDA GPU is available")


def build_model(c: TrainConfig, channels: int) -> torch.nn.Module:
    if c.model == "chyvae":
        return CHyVAE(c.z_dim, channels, c.hidden, nu=c.nu, learn_nu=c.learn_nu, num_samples=c.num_samples, impl=c.impl)
    if c.model == "betavae":
        return BetaVAE(c.z_dim, channels, c.hidden, beta=c.beta)
    return FactorVAE(c.z_dim, channels, c.hidden, gamma=c.gamma)


def fixed_batches(dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(8 images for the pictures, 256 held-out images for the held-out ELBO), the same for every run on a dataset."""
    fixed = next(dataset.batches(8, device=device, generator=torch.Generator().manual_seed(1234)))
    held_out = next(dataset.batches(256, device=device, generator=torch.Generator().manual_seed(4321)))
    return fixed, held_out


def held_out_terms(model: torch.nn.Module, held_out: torch.Tensor, *, bf16: bool) -> dict[str, float]:
    """The model's loss terms (neg_elbo, recon, ...) on the held-out batch, in eval mode, with fixed noise."""
    device = held_out.device
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model.loss(held_out, generator=torch.Generator(device=device).manual_seed(0))
    model.train(was_training)
    return {k: float(v) for k, v in out.items() if k not in ("z", "loss")}


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config: no file at {p}")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"--config {p}: expected a mapping of options, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {p}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return data


class Run:
    """The run directory: config, metrics, status, checkpoints and pictures."""

    def __init__(self, root: Path):
        self.root = root
        self.ckpt_dir = root / "checkpoints"

    def prepare(self) -> None:
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"--out {self.root} is not writable: {exc}") from exc

    def write_json(self, name: str, data: dict) -> None:
        tmp = self.root / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.root / name)

    def checkpoints(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("step_*.pt"))

    def save_checkpoint(self, state: dict, step: int, keep: int) -> Path:
        path = self.ckpt_dir / f"step_{step:08d}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a reader never sees a half-written checkpoint
        for old in self.checkpoints()[:-keep]:
            old.unlink()
        return path

    def append_metrics(self, row: dict) -> None:
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after ``step`` (they belong to the part of the run being redone)."""
        path = self.root / "metrics.jsonl"
        if path.exists():
            rows = [r for r in read_metrics(path) if r["step"] <= step]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))


class StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def adam_options(compile: bool, device: torch.device) -> dict:
    """Adam's options for a step: compiled on a GPU, the fused kernel with its step counts on the
    device (one launch an update where Adam runs eagerly, and nothing on the host for CUDA graphs)."""
    return {"fused": True} if compile and torch.device(device).type == "cuda" else {}


def whole_step_compiles() -> bool:
    """Whether this torch can compile forward, backward and optimiser update as one graph
    (torch._dynamo.config.trace_autograd_ops: present in 2.11 and 2.13, the two torches measured)."""
    return hasattr(torch._dynamo.config, "trace_autograd_ops")


def adam_update(params: list[torch.Tensor], grads, opt: torch.optim.Adam) -> None:
    """torch.optim.Adam's update (no weight decay, amsgrad or maximize) on opt's own state, written
    out so that it compiles into the same graph as the forward and backward (Adam.step always
    breaks a compiled graph). The state must exist (one eager opt.step() creates it)."""
    group = opt.param_groups[0]
    if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
        raise ValueError("adam_update: only plain Adam (no weight decay, amsgrad or maximize) is written out here")
    beta1, beta2 = group["betas"]
    lr, eps = group["lr"], group["eps"]
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            state = opt.state[p]
            state["step"] += 1
            step = state["step"].to(torch.float64)  # 1 - beta2^t loses digits in float32
            state["exp_avg"].lerp_(g, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            bias2_sqrt = (1 - beta2**step).sqrt().to(p.dtype)
            step_size = (lr / (1 - beta1**step)).to(p.dtype)
            denom = (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(eps)
            p.sub_(step_size * state["exp_avg"] / denom)


def make_step(model, opt, opt_d, batches, noise_gen, *, bf16: bool, compile: str | None = None):
    """One optimisation step (two for FactorVAE: the VAE, then its discriminator) as a closure.

    Returns the step's loss terms as tensors; nothing here waits for the device.

    compile: None (eager) or a torch.compile backend ("inductor"; "aot_eager" checks graph capture
    without generating code). Compiled, the noise is drawn outside the graph (model.sample_noise,
    same draws in the same order); for CHyVAE and beta-VAE the forward, backward and Adam update
    are one graph (fullgraph=True) where this torch can trace autograd (whole_step_compiles()),
    after one eager step that creates the optimiser's state; otherwise, and for FactorVAE, the
    loss is compiled (fullgraph=True, its backward through AOTAutograd) and the optimiser runs
    eagerly. On CUDA with inductor the graphs run as CUDA graphs (mode="reduce-overhead").
    """
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    options = {"mode": "reduce-overhead"} if compile == "inductor" and device.type == "cuda" else {}
    cudagraphs = bool(options)

    def next_batch():
        x = next(batches)
        # channels_last helps eager bf16 convolutions; compiled, Inductor chooses the layouts itself
        # (and torch 2.11's Inductor mis-strided a channels_last convolution backward in a CUDA graph).
        return x.contiguous(memory_format=torch.channels_last) if bf16 and compile is None else x

    def loss_fn(x, noise):
        with autocast:
            return model.loss(x, noise=noise)

    def eager_update(out) -> None:
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    if compile is not None and opt_d is None and whole_step_compiles():
        torch._dynamo.config.trace_autograd_ops = True
        params = [p for group in opt.param_groups for p in group["params"]]

        def whole(x, noise):
            out = loss_fn(x, noise)
            adam_update(params, torch.autograd.grad(out["loss"], params), opt)
            return {k: v.detach() for k, v in out.items()}

        compiled = torch.compile(whole, fullgraph=True, backend=compile, **options)

        def step() -> dict:
            x = next_batch()
            noise = model.sample_noise(len(x), device, noise_gen)
            if not opt.state:  # the first step eagerly: it creates Adam's state
                out = loss_fn(x, noise)
                eager_update(out)
                if cudagraphs:  # the state is updated in place: CUDA graphs may keep its addresses
                    for state in opt.state.values():
                        for t in state.values():
                            if torch.is_tensor(t):
                                torch._dynamo.mark_static_address(t)
                return out
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            return compiled(x, noise)

        return step

    loss = loss_fn if compile is None else torch.compile(loss_fn, fullgraph=True, backend=compile, **options)

    def step() -> dict:
        x = next_batch()
        noise = model.sample_noise(len(x), device, noise_gen)
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = loss(x, noise)
        eager_update(out)
        if opt_d is not None:
            x2 = next_batch()
            noise2 = model.sample_noise(len(x2), device, noise_gen)
            with torch.no_grad():
                z2 = loss(x2, noise2)["z"]
            d_loss = model.discriminator_loss(out["z"].float(), z2.float(), generator=noise_gen)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            out["disc_loss"] = d_loss
        return out

    return step


def _progress(total: int, initial: int):
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    return None


def train(config: TrainConfig, *, resume: Path | None = None) -> dict:
    """Train as configured; returns the final status dict. Raises ValueError for bad options."""
    c = config.resolved()
    check_config(c)
    run = Run(Path(c.out))
    try:
        dataset = get_dataset(c.dataset, c.data_root)
    except (DataError, TypeError) as exc:
        raise ValueError(f"--dataset {c.dataset}: {exc}") from exc
    run.prepare()
    device = torch.device(c.device)
    torch.manual_seed(c.seed)
    model = build_model(c, dataset.channels).to(device)
    if c.precision == "bf16" and not c.compile:
        model = model.to(memory_format=torch.channels_last)
    vae_params = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    opt = torch.optim.Adam(vae_params, lr=c.lr, betas=(0.9, 0.999), **adam_options(c.compile, device))
    opt_d = (
        torch.optim.Adam(model.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
        if c.model == "factorvae"
        else None
    )
    data_gen = torch.Generator().manual_seed(c.seed)
    noise_gen = torch.Generator(device=device).manual_seed(c.seed + 1)
    step = 0
    if resume is not None:
        ckpts = run.checkpoints()
        if not ckpts:
            raise ValueError(f"--resume {run.root}: no checkpoint in {run.ckpt_dir}")
        state = torch.load(ckpts[-1], map_location=device, weights_only=False)
        trained_on = state.get("channels", dataset.channels)
        if trained_on != dataset.channels:
            raise ValueError(f"--dataset {c.dataset} has {dataset.channels}-channel images, but the run in {run.root} "
                             f"was trained on {trained_on}-channel images")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if opt_d is not None:
            opt_d.load_state_dict(state["opt_d"])
        data_gen.set_state(state["data_gen"])
        noise_gen.set_state(state["noise_gen"].to(noise_gen.get_state().device))
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        run.truncate_metrics(step)
    run.write_json("config.json", dataclasses.asdict(c))
    batches = dataset.batches(c.batch_size, device=device, generator=data_gen)
    fixed, held_out = fixed_batches(dataset, device)
    metric_names = parse_metrics(c.metrics) if isinstance(dataset, GroundTruthDataset) else []
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run.root / "tb"), purge_step=step if step else None)
    term_names = None
    sums = None
    bad = torch.zeros((), dtype=torch.bool, device=device)
    t_last, steps_since = time.perf_counter(), 0
    last_good = run.checkpoints()[-1] if run.checkpoints() else None

    def checkpoint_state() -> dict:
        return {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "opt_d": opt_d.state_dict() if opt_d is not None else None,
            "data_gen": data_gen.get_state(),
            "noise_gen": noise_gen.get_state().cpu(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "config": dataclasses.asdict(c),
            "channels": dataset.channels,
        }

    def evaluate() -> None:
        """Held-out negative ELBO and its terms on a fixed batch of 256 images, and the disentanglement
        metrics (same seed at every step, so that only the model changes), logged as kind "eval"."""
        row = {"kind": "eval", "step": step, **held_out_terms(model, held_out, bf16=c.precision == "bf16")}
        if metric_names:
            t0 = time.perf_counter()
            encode = make_encoder(model, precision=c.precision)
            summary, _ = score(encode, dataset, metric_names, protocol=c.metric_protocol, seed=0)
            row.update(summary, metric_seconds=time.perf_counter() - t0)
            text = "  ".join(f"{k} {v:.3f}" for k, v in summary.items())
            message = f"step {step}: {text} ({row['metric_seconds']:.0f} s)"
            if bar is not None:
                bar.write(message)
            else:
                print(message, flush=True)
        run.append_metrics(row)
        for k, v in row.items():
            if k not in ("kind", "step"):
                writer.add_scalar(f"eval/{k}", v, step)

    def pictures() -> None:
        save_model_pictures(model, fixed, run.root, bf16=c.precision == "bf16")
        save_curves(run.root / "metrics.jsonl", run.root / "curves.png")

    one_step = make_step(
        model, opt, opt_d, batches, noise_gen, bf16=c.precision == "bf16", compile="inductor" if c.compile else None
    )
    status = {"state": "running", "step": step}
    run.write_json("status.json", status)
    bar = _progress(c.steps, step)
    model.train()
    with StopRequested() as stop:
        while step < c.steps and stop.signal is None:
            out = one_step()
            step += 1
            steps_since += 1
            terms = {k: v.detach().float() for k, v in out.items() if k != "z"}
            if term_names is None:
                term_names = list(terms)
                sums = torch.zeros(len(term_names), device=device)
            values = torch.stack([terms[k] for k in term_names])
            sums += values
            bad |= ~torch.isfinite(values).all()
            if step % c.log_every == 0 or step == c.steps:
                if bool(bad):  # one host synchronisation per logging interval
                    bad_terms = [k for k, v in zip(term_names, values.tolist(), strict=True) if not math.isfinite(v)]
                    status = {
                        "state": "failed",
                        "step": step,
                        "error": f"non-finite loss within steps {step - steps_since + 1}..{step} "
                        f"(terms now non-finite: {', '.join(bad_terms) or 'earlier in the interval'}); "
                        f"last good checkpoint: {last_good}",
                    }
                    run.write_json("status.json", status)
                    print(f"error: {status['error']}", file=sys.stderr)
                    break
                now = time.perf_counter()
                row = {
                    "kind": "train",
                    "step": step,
                    **{k: v / steps_since for k, v in zip(term_names, sums.tolist(), strict=True)},
                    "steps_per_s": steps_since / (now - t_last),
                }
                if c.model == "chyvae" and c.learn_nu:
                    row["nu"] = float(model.nu.detach())
                run.append_metrics(row)
                for k, v in row.items():
                    if k not in ("kind", "step"):
                        writer.add_scalar(f"train/{k}", v, step)
                if bar is not None:
                    bar.update(steps_since)
                    bar.set_postfix(loss=f"{row['loss']:.1f}", steps_s=f"{row['steps_per_s']:.1f}")
                else:
                    print(
                        f"step {step}/{c.steps}  loss {row['loss']:.2f}  recon {row['recon']:.2f}  "
                        f"{row['steps_per_s']:.1f} steps/s",
                        flush=True,
                    )
                sums.zero_()
                t_last, steps_since = now, 0
            if step % c.ckpt_every == 0 or step == c.steps:
                last_good = run.save_checkpoint(checkpoint_state(), step, c.keep_checkpoints)
            if step % c.eval_every == 0 or step == c.steps:
                evaluate()
                pictures()
        if status["state"] != "failed":
            if stop.signal is not None:
                last_good = run.save_checkpoint(checkpoint_state(), step, c.keep_checkpoints)
                status = {
                    "state": "interrupted",
                    "step": step,
                    "signal": signal.Signals(stop.signal).name,
                    "checkpoint": str(last_good),
                }
                print(
                    f"stopped by {status['signal']} at step {step}; checkpoint {last_good}; "
                    f"continue with: python -m chyvae_ext.train --resume {run.root}",
                    file=sys.stderr,
                )
            else:
                status = {"state": "finished", "step": step, "checkpoint": str(last_good)}
            run.write_json("status.json", status)
    if bar is not None:
        bar.close()
    writer.close()
    if status["state"] == "finished":
        pictures()
    return status


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m chyvae_ext.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = TrainConfig()
    parser.add_argument("--config", help="YAML or JSON file of options; flags override it")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--dataset")
    parser.add_argument("--data-root", dest="data_root")
    parser.add_argument("--z-dim", dest="z_dim", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--nu", type=float, help=f"CHyVAE inverse-Wishart degrees of freedom (default {d.nu})")
    parser.add_argument("--learn-nu", dest="learn_nu", action="store_true", default=None)
    parser.add_argument("--num-samples", dest="num_samples", type=int, help="K samples for the regulariser")
    parser.add_argument("--beta", type=float, help=f"beta-VAE weight (default {d.beta})")
    parser.add_argument("--gamma", type=float, help=f"FactorVAE TC weight (default {d.gamma})")
    parser.add_argument("--steps", type=int, help=f"(default {d.steps})")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help=f"(default {d.batch_size})")
    parser.add_argument("--lr", type=float, help=f"(default {d.lr})")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--impl", choices=("auto", "fused", "reference"))
    parser.add_argument("--out", help="run directory (default runs/<model>-<dataset>-seed<seed>)")
    parser.add_argument("--log-every", dest="log_every", type=int)
    parser.add_argument("--eval-every", dest="eval_every", type=int)
    parser.add_argument("--ckpt-every", dest="ckpt_every", type=int)
    parser.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int)
    parser.add_argument(
        "--metrics",
        help="disentanglement metrics at each evaluation: factor_vae, mig, sap, dci, all or none "
        f"(default {d.metrics}; only on datasets with ground-truth factors)",
    )
    parser.add_argument("--metric-protocol", dest="metric_protocol", choices=tuple(PROTOCOLS))
    parser.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="run the training step under torch.compile (CUDA graphs on a GPU); the first steps compile",
    )
    args = vars(parser.parse_args(argv))
    config_file, resume = args.pop("config"), args.pop("resume")
    values: dict = {}
    if resume is not None:
        if not (resume / "config.json").is_file():
            raise ValueError(f"--resume {resume}: no config.json there (not a run directory)")
        values.update(json.loads((resume / "config.json").read_text()))
        values["out"] = str(resume)
    if config_file:
        values.update(load_config_file(config_file))
    values.update({k: v for k, v in args.items() if v is not None})
    return TrainConfig(**values), resume


def main(argv: list[str] | None = None) -> int:
    try:
        config, resume = parse_args(argv)
        status = train(config, resume=resume)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if status["state"] == "finished":
        print(f"finished {status['step']} steps; run directory: {config.resolved().out}")
        return 0
    return 130 if status["state"] == "interrupted" else 1


if __name__ == "__main__":
    raise SystemExit(main())
