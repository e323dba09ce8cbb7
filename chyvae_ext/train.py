"""``python -m chyvae_ext.train``: train a model (``--model``: chyvae, betavae, factorvae, vae, betatcvae,
dipvae1, dipvae2, annealedvae) and write a run directory.

With no options it trains CHyVAE on procedural CorrelatedEllipses for a few minutes on a laptop
CPU. Everything a run produces lands in ``--out`` (default ``runs/<model>-<dataset>-seed<seed>``):

    config.json        the resolved configuration
    metrics.jsonl      one JSON object per logging interval (kind "train": losses and their terms,
                       steps/s, the time it was logged) and per evaluation (kind "eval": held-out
                       negative ELBO and terms, and the --metrics, by default the FactorVAE score,
                       on sets with ground-truth factors)
    status.json        running / finished / interrupted / failed, with the step
    tb/                TensorBoard event files
    checkpoints/       step_XXXXXXXX.pt, written atomically, the last few kept
    reconstructions.png, samples.png, traversals.png, traversals.gif, curves.png

``--resume RUN_DIR`` continues from the last checkpoint (model, optimisers, random states and data
order): on the CPU an interrupted and resumed run ends with the same parameters, bit for bit, as
one never interrupted. SIGINT or SIGTERM saves a checkpoint and exits with status 130.

``torchrun --nproc-per-node N -m -- chyvae_ext.train ...`` trains one run across N processes with
DistributedDataParallel (``--batch-size`` the global batch; see chyvae_ext.distributed).

``--ensemble RUN_DIR ...`` trains several runs as one batched model (``train_ensemble``; the sweep's
``--ensemble`` starts these): each RUN_DIR holds the run's options (``sweep_options.json``) or, with
``--resume``, its checkpoints, and ends up as the run directory its lone run writes. One loop,
:class:`Trainer`, runs both.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

from ._checks import check_int
from .data import DataError, get_dataset
from .data.base import GroundTruthDataset
from .data.fixed import fixed_sample
from .distributed import Distributed, rank_seed
from .metrics import METRICS, PROTOCOLS, SharedEncodings, make_encoder, parse_metrics, score
from .models import DIPVAE, AnnealedVAE, BetaTCVAE, BetaVAE, CHyVAE, FactorVAE
from .models.ensemble import (
    load_member_optimizer_states,
    load_member_state_dict,
    member_optimizer_state,
    member_state_dict,
    select_members,
    select_optimizer_members,
    stack_models,
)
from .models.networks import INITS, initialise
from .plots import save_curves, save_model_pictures
from .runfiles import read_metrics

MODELS = ("chyvae", "betavae", "factorvae", "vae", "betatcvae", "dipvae1", "dipvae2", "annealedvae")
BETA_MODELS = ("betavae", "betatcvae")  # the models --beta applies to ("vae" is beta = 1)
GAMMA_DEFAULTS = {"factorvae": 10.0, "annealedvae": 1000.0}  # --gamma: FactorVAE's TC weight, AnnealedVAE's
DIP_D_FACTOR = {"dipvae1": 10.0, "dipvae2": 1.0}  # disentanglement_lib's study (SPEC 6)
SYNTHETIC = ("shapes2d", "dsprites", "correlated_ellipses")
SHAPE_DATASETS = ("dsprites", "shapes2d")  # the sets with a discrete shape factor (include_shape)


@dataclasses.dataclass
class TrainConfig:
    model: str = "chyvae"
    dataset: str = "correlated_ellipses"
    data_root: str | None = None
    dataset_size: int | None = None  # a fixed set of N images drawn once (seed 0) from a procedural dataset
    include_shape: bool = True  # dsprites / shapes2d: whether the metrics count shape as a factor
    z_dim: int | None = None  # default: 10 for the synthetic sets, 32 otherwise (SPEC 2)
    hidden: int | None = None  # default: 128 for the synthetic sets, 256 otherwise
    nu: float = 200.0
    learn_nu: bool = False
    num_samples: int = 1
    beta: float | None = None  # betavae, betatcvae: default 4; vae: 1 (and only 1)
    gamma: float | None = None  # factorvae: TC weight, default 10; annealedvae: |KL - C| weight, default 1000
    lambda_od: float = 10.0  # dipvae1, dipvae2: the off-diagonal weight
    lambda_d_factor: float | None = None  # dipvae1, dipvae2: lambda_d / lambda_od, default 10 (I) or 1 (II)
    c_max: float = 25.0  # annealedvae: the final capacity, nats
    c_iters: int = 100000  # annealedvae: steps over which the capacity rises to c_max
    steps: int = 2500
    batch_size: int = 50
    lr: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 where the hardware has fast bf16)
    impl: str = "auto"
    init: str = "torch"  # torch (PyTorch's default) | glorot (Glorot-uniform weights, zero biases: the paper's TF code)
    out: str | None = None
    log_every: int = 50
    eval_every: int = 1250
    metrics: str = "factor_vae"  # at every evaluation, on datasets with ground-truth factors; "none" to skip
    metric_protocol: str = "chyvae"
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    compile: bool = False  # the training step under torch.compile (CUDA graphs on a GPU)
    world_size: int = 1  # processes training the run (torchrun); recorded, set from torchrun's environment

    def resolved(self) -> TrainConfig:
        c = dataclasses.replace(self)
        synthetic = c.dataset in SYNTHETIC
        c.z_dim = c.z_dim if c.z_dim is not None else (10 if synthetic else 32)
        c.hidden = c.hidden if c.hidden is not None else (128 if synthetic else 256)
        if c.beta is None:
            c.beta = 1.0 if c.model == "vae" else 4.0
        if c.gamma is None:
            c.gamma = GAMMA_DEFAULTS.get(c.model, 10.0)
        if c.lambda_d_factor is None:
            c.lambda_d_factor = DIP_D_FACTOR.get(c.model, 10.0)
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
        "c_iters",
    ):
        check_int(f"--{name.replace('_', '-')}", getattr(c, name), 1)
    if c.dataset_size is not None:
        check_int("--dataset-size", c.dataset_size, 1)
    check_int("world_size", c.world_size, 1)
    if c.batch_size % c.world_size:
        raise ValueError(
            f"--batch-size {c.batch_size} does not divide among {c.world_size} processes (torchrun "
            f"--nproc-per-node {c.world_size}): the global batch is split evenly; use a multiple of {c.world_size}"
        )
    if c.world_size > 1 and c.compile:
        raise ValueError(f"--compile is not supported with {c.world_size} processes (torchrun); train without it")
    if not isinstance(c.include_shape, bool):
        raise ValueError(f"include_shape must be true or false, got {c.include_shape!r}")
    if not c.include_shape and c.dataset not in SHAPE_DATASETS:
        raise ValueError(
            f"--no-shape-factor applies to {' and '.join(SHAPE_DATASETS)} only, got --dataset {c.dataset}"
        )
    for name in ("lr", "beta", "gamma", "nu", "lambda_od", "lambda_d_factor", "c_max"):
        v = getattr(c, name)
        if v is None and name in ("beta", "gamma", "lambda_d_factor"):
            continue  # the model's default (TrainConfig.resolved)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {v!r}")
    if c.model == "vae" and c.beta not in (None, 1.0):
        raise ValueError(f"--model vae is the plain VAE (beta = 1); --beta {c.beta} applies to "
                         f"{' and '.join(BETA_MODELS)}")
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
    if c.init not in INITS:
        raise ValueError(f"--init must be one of {', '.join(INITS)}, got {c.init!r}")
    try:
        dev = torch.device(c.device)
    except RuntimeError as exc:
        raise ValueError(f"--device {c.device!r} is not a device: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {c.device}: no CUDA GPU is available")


def build_model(c: TrainConfig, channels: int) -> torch.nn.Module:
    """The configured lone model, initialised as ``c.init`` says (from torch's global generator)."""
    if c.model == "chyvae":
        model = CHyVAE(
            c.z_dim, channels, c.hidden, nu=c.nu, learn_nu=c.learn_nu, num_samples=c.num_samples, impl=c.impl
        )
    elif c.model in ("betavae", "vae"):
        model = BetaVAE(c.z_dim, channels, c.hidden, beta=c.beta)
    elif c.model == "factorvae":
        model = FactorVAE(c.z_dim, channels, c.hidden, gamma=c.gamma)
    elif c.model == "betatcvae":
        model = BetaTCVAE(c.z_dim, channels, c.hidden, beta=c.beta, dataset_size=c.dataset_size)
    elif c.model in DIP_D_FACTOR:
        model = DIPVAE(c.z_dim, channels, c.hidden, kind="i" if c.model == "dipvae1" else "ii",
                       lambda_od=c.lambda_od, lambda_d_factor=c.lambda_d_factor)
    else:
        model = AnnealedVAE(c.z_dim, channels, c.hidden, gamma=c.gamma, c_max=c.c_max, c_iters=c.c_iters)
    return initialise(model, c.init)


def open_dataset(c: TrainConfig, *, fixed: bool = True):
    """The run's dataset: ``c.dataset`` from ``c.data_root`` (shape factor as ``c.include_shape`` says), as the
    fixed set of ``c.dataset_size`` images when that is set and ``fixed``; else the generator the metrics use.
    Raises ValueError naming the dataset."""
    options = {"include_shape": c.include_shape} if c.dataset in SHAPE_DATASETS else {}
    try:
        dataset = get_dataset(c.dataset, c.data_root, **options)
        if fixed and c.dataset_size is not None:
            dataset = fixed_sample(dataset, c.dataset_size)
    except (DataError, TypeError) as exc:
        raise ValueError(f"--dataset {c.dataset}: {exc}") from exc
    return dataset


def initial_model(c: TrainConfig, channels: int) -> torch.nn.Module:
    """The run's model at step 0: built as ``c`` says from its seed (what a run starts from, and the floor
    ``collect`` scores as "untrained")."""
    torch.manual_seed(c.seed)
    return build_model(c, channels)


def fixed_batches(dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(8 images for the pictures, 256 held-out images for the held-out ELBO), the same for every run on a dataset.

    A fixed set (``--dataset-size``) takes them from its generator: the same images as the stream's runs."""
    dataset = getattr(dataset, "generator", dataset)
    fixed = next(dataset.batches(8, device=device, generator=torch.Generator().manual_seed(1234)))
    held_out = next(dataset.batches(256, device=device, generator=torch.Generator().manual_seed(4321)))
    return fixed, held_out


def held_out_terms(model: torch.nn.Module, held_out: torch.Tensor, *, bf16: bool) -> dict[str, float]:
    """The model's loss terms (neg_elbo, recon, ...) on the held-out batch, in eval mode, with fixed noise."""
    return member_held_out_terms(model, held_out, bf16=bf16)[0]


def member_held_out_terms(model: torch.nn.Module, held_out: torch.Tensor, *, bf16: bool) -> list[dict[str, float]]:
    """held_out_terms for each member: a lone model's one dict; an ensemble's one per member, each
    member on the same images with the lone run's fixed noise (its own generator seeded 0)."""
    members = getattr(model, "members", None)
    device = held_out.device
    if members is None:
        x, generator = held_out, torch.Generator(device=device).manual_seed(0)
    else:
        x = held_out.unsqueeze(0).expand(members, *held_out.shape)
        generator = [torch.Generator(device=device).manual_seed(0) for _ in range(members)]
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model.loss(x, generator=generator)
    model.train(was_training)
    values = {k: v.float().reshape(-1).tolist() for k, v in out.items() if k not in ("z", "loss")}
    return [{k: v[i] for k, v in values.items()} for i in range(members or 1)]


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


def checkpoint_step_of(path: Path) -> int:
    """The step of a checkpoint file step_XXXXXXXX.pt."""
    return int(path.stem.split("_")[1])


def load_checkpoint(path: Path | None, device: torch.device) -> dict | None:
    """The checkpoint at ``path`` on ``device``; None (with a warning naming the file and the error) where it
    cannot be loaded: truncated, corrupt, or not a training checkpoint."""
    if path is None:
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch.load's failures on damaged files: RuntimeError, EOFError, UnpicklingError...
        warnings.warn(f"skipping checkpoint {path}: it cannot be loaded ({type(exc).__name__}: {exc})",
                      RuntimeWarning, stacklevel=2)
        return None
    if not isinstance(state, dict) or not {"model", "opt", "step"} <= state.keys():
        warnings.warn(f"skipping checkpoint {path}: not a training checkpoint", RuntimeWarning, stacklevel=2)
        return None
    return state


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

    def checkpoint(self, step: int | None = None) -> Path | None:
        """The last checkpoint, or the one of ``step``; None where there is none."""
        ckpts = [c for c in self.checkpoints() if step is None or checkpoint_step_of(c) == step]
        return ckpts[-1] if ckpts else None

    def save_checkpoint(self, state: dict, step: int, keep: int, keep_every: int | None = None) -> Path:
        """Writes the checkpoint of ``step``; removes all but the newest ``keep``, except those of steps that
        are multiples of ``keep_every`` (the evaluation steps: kept, so a run can be scored again there)."""
        path = self.ckpt_dir / f"step_{step:08d}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a reader never sees a half-written checkpoint
        for old in self.checkpoints()[:-keep]:
            if keep_every is None or checkpoint_step_of(old) % keep_every != 0:
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


class ReadOnlyRun(Run):
    """The run directory as a process other than rank 0 sees it under torchrun: read, never written."""

    def prepare(self) -> None:
        pass

    def write_json(self, name: str, data: dict) -> None:
        pass

    def save_checkpoint(self, state: dict, step: int, keep: int, keep_every: int | None = None) -> Path:
        return self.ckpt_dir / f"step_{step:08d}.pt"

    def append_metrics(self, row: dict) -> None:
        pass

    def truncate_metrics(self, step: int) -> None:
        pass


class _NoWriter:
    """TensorBoard's writer where rank 0 writes and this process does not."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


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


def make_step(model, opt, opt_d, batches, noise_gen, *, bf16: bool, compile: str | None = None,
              dist: Distributed | None = None):
    """One optimisation step (two for FactorVAE: the VAE, then its discriminator) as a closure.

    Returns the step's loss terms as tensors; nothing here waits for the device. For an ensemble
    (a model built with members=M), ``batches`` yields (M, N, C, H, W), ``noise_gen`` is a list of
    M generators (read at every step: the trainer shortens it in place when a member leaves), and
    the terms are (M,).

    compile: None (eager) or a torch.compile backend ("inductor"; "aot_eager" checks graph capture
    without generating code). Compiled, the noise is drawn outside the graph (model.sample_noise,
    same draws in the same order); for CHyVAE and beta-VAE the forward, backward and Adam update
    are one graph (fullgraph=True) where this torch can trace autograd (whole_step_compiles()),
    after one eager step that creates the optimiser's state; otherwise, and for FactorVAE, the
    loss is compiled (fullgraph=True, its backward through AOTAutograd) and the optimiser runs
    eagerly. On CUDA with inductor the graphs run as CUDA graphs (mode="reduce-overhead").

    dist: under torchrun, the loss (and FactorVAE's discriminator loss) run through
    DistributedDataParallel (chyvae_ext.distributed), which averages the gradients across processes.
    """
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    options = {"mode": "reduce-overhead"} if compile == "inductor" and device.type == "cuda" else {}
    cudagraphs = bool(options)
    dist = dist or Distributed()
    model_loss = dist.wrap_loss(model)
    disc_loss = dist.wrap_discriminator_loss(model) if opt_d is not None else None

    def next_batch():
        x = next(batches)
        # channels_last helps eager bf16 convolutions; compiled, Inductor chooses the layouts itself
        # (and torch 2.11's Inductor mis-strided a channels_last convolution backward in a CUDA graph).
        # An ensemble's (M, N, C, H, W) batches are laid out by its grouped convolutions.
        return x.contiguous(memory_format=torch.channels_last) if bf16 and compile is None and x.dim() == 4 else x

    def loss_fn(x, noise):
        with autocast:
            return model_loss(x, noise)

    def eager_update(out) -> None:
        opt.zero_grad(set_to_none=True)
        out["loss"].sum().backward()  # an ensemble's members' losses: each member's gradient is its own
        opt.step()

    if compile is not None and opt_d is None and whole_step_compiles():
        torch._dynamo.config.trace_autograd_ops = True
        params = [p for group in opt.param_groups for p in group["params"]]

        def whole(x, noise):
            out = loss_fn(x, noise)
            adam_update(params, torch.autograd.grad(out["loss"].sum(), params), opt)
            return {k: v.detach() for k, v in out.items()}

        compiled = torch.compile(whole, fullgraph=True, backend=compile, **options)

        def step() -> dict:
            x = next_batch()
            noise = model.sample_noise(x.shape[-4], device, noise_gen)
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
        noise = model.sample_noise(x.shape[-4], device, noise_gen)
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = loss(x, noise)
        eager_update(out)
        if opt_d is not None:
            x2 = next_batch()
            noise2 = model.sample_noise(x2.shape[-4], device, noise_gen)
            with torch.no_grad():
                z2 = loss(x2, noise2)["z"]
            d_loss = disc_loss(out["z"].float(), z2.float(), noise_gen)
            opt_d.zero_grad(set_to_none=True)
            d_loss.sum().backward()
            opt_d.step()
            out["disc_loss"] = d_loss
        return out

    return step


def _progress(total: int, initial: int):
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    return None


class Member:
    """One run inside a Trainer: its configuration, run directory, generators and where it stands."""

    def __init__(self, config: TrainConfig, device: torch.device, dist: Distributed):
        self.config = config
        self.run = Run(Path(config.out)) if dist.is_main else ReadOnlyRun(Path(config.out))
        self.data_gen = torch.Generator().manual_seed(rank_seed(config.seed, dist.rank))
        self.noise_gen = torch.Generator(device=device).manual_seed(rank_seed(config.seed + 1, dist.rank))
        self.last_good: Path | None = None
        self.status: dict = {"state": "running", "step": 0}
        self.writer = None
        self.batches = None

    @property
    def name(self) -> str:
        return self.run.root.name


ENSEMBLE_SHARED = (
    "model", "dataset", "data_root", "dataset_size", "include_shape", "z_dim", "hidden", "learn_nu", "num_samples",
    "c_iters",
    "steps", "batch_size", "lr", "device", "precision", "impl", "log_every", "eval_every", "metrics",
    "metric_protocol", "ckpt_every", "keep_checkpoints", "compile",
)  # what an ensemble's members must share; each has its own seed, out and hyperparameters (nu, beta, gamma, ...)


def ensemble_key(config: TrainConfig) -> tuple:
    """The options that must agree for runs to train together as one ensemble."""
    c = config.resolved()
    return tuple(getattr(c, k) for k in ENSEMBLE_SHARED)


@contextlib.contextmanager
def flush_denormals(device: torch.device):
    """On a CPU, float arithmetic flushes denormal numbers (below 1.2e-38 in float32) to zero while the
    block runs (``torch.set_flush_denormal``), and stops at its end (the process's default).

    A decoder that has learnt the background gives logits of -100 and below there; their sigmoid, and
    so the BCE's gradient, is denormal, and x86 cores take a slow path for every operation on a
    denormal: training steps ran at half speed after about 2,000 steps (``benchmarks/bench_denormals.py``).
    The values flushed are below 1.2e-38, far below anything the loss or its gradients resolve."""
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flush:
            torch.set_flush_denormal(False)


class Trainer:
    """The training loop, shared by a lone run and an ensemble. Phases: set-up (``__init__``), then
    per step ``step``, and at their intervals ``log``, ``checkpoint``, ``evaluate`` and ``pictures``;
    ``run`` drives them and ``finish`` writes the end state.

    A lone run is one member with a plain model. An ensemble (``ensemble=True``) holds its members
    in one model built with members=M (chyvae_ext.models.ensemble); each member writes the run
    directory its lone run writes (its checkpoints load as a lone run's). A member whose loss turns
    non-finite is marked failed and leaves the ensemble; the others go on.
    """

    def __init__(self, configs: list[TrainConfig], *, resume: bool = False, ensemble: bool | None = None):
        if not configs:
            raise ValueError("configs must hold at least one TrainConfig, got none")
        self.dist = Distributed.from_env(configs[0].device)
        self.configs = [dataclasses.replace(c.resolved(), world_size=self.dist.world_size) for c in configs]
        for c in self.configs:
            check_config(c)
        self.stacked = len(configs) > 1 if ensemble is None else bool(ensemble)
        if len(configs) > 1 and not self.stacked:
            raise ValueError("several configs train together only as an ensemble (ensemble=True)")
        c = self.c = self.configs[0]
        if self.stacked:
            self._check_ensemble()
        self.dataset = open_dataset(c)
        self.device = device = torch.device(self.dist.device(c.device))
        self.members = [Member(cfg, device, self.dist) for cfg in self.configs]
        for m in self.members:
            m.run.prepare()
        self.dist.barrier()  # rank 0 made the directories
        self.bf16 = c.precision == "bf16"
        self._build()
        self.step_count = 0
        if resume:
            self._resume()
        else:  # a fresh start (a retried job whose first attempt logged rows before its first checkpoint)
            for m in self.members:
                m.run.truncate_metrics(0)
        for m in self.members:
            m.run.write_json("config.json", dataclasses.asdict(m.config))
            m.batches = self.dataset.batches(c.batch_size // c.world_size, device=device, generator=m.data_gen)
        self.fixed, self.held_out = fixed_batches(self.dataset, device)
        self.metric_names = parse_metrics(c.metrics) if isinstance(self.dataset, GroundTruthDataset) else []
        from torch.utils.tensorboard import SummaryWriter

        for m in self.members:
            if self.dist.is_main:
                m.writer = SummaryWriter(str(m.run.root / "tb"), purge_step=self.step_count or None)
            else:
                m.writer = _NoWriter()
            m.last_good = m.run.checkpoint()
        self.noise_gens = [m.noise_gen for m in self.members]  # shortened in place when a member leaves
        self.one_step = self._make_step()
        self.term_names: list[str] | None = None
        self.sums = None
        self.bad = None
        self.t_last, self.steps_since = time.perf_counter(), 0
        self.bar = None

    # ---- set-up ------------------------------------------------------------------------------------------------
    def _make_step(self):
        return make_step(
            self.model,
            self.opt,
            self.opt_d,
            self._batches(),
            self.noise_gens if self.stacked else self.members[0].noise_gen,
            bf16=self.bf16,
            compile="inductor" if self.c.compile else None,
            dist=self.dist,
        )

    def _check_ensemble(self) -> None:
        first = self.configs[0]
        for cfg in self.configs[1:]:
            diff = [k for k in ENSEMBLE_SHARED if getattr(cfg, k) != getattr(first, k)]
            if diff:
                raise ValueError(
                    f"ensemble members must share {', '.join(diff)}: {cfg.out} has "
                    + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in diff)
                    + f" where {first.out} has " + ", ".join(f"{k}={getattr(first, k)!r}" for k in diff)
                )
        outs = [cfg.out for cfg in self.configs]
        if len(set(outs)) != len(outs):
            raise ValueError(f"ensemble members must have distinct --out directories, got {outs}")

    def _lone_model(self, cfg: TrainConfig) -> torch.nn.Module:
        return initial_model(cfg, self.dataset.channels)  # the lone run's initial parameters

    def _build(self) -> None:
        c, device = self.c, self.device
        if self.stacked:
            self.model = stack_models([self._lone_model(cfg) for cfg in self.configs]).to(device)
        else:
            self.model = self._lone_model(c).to(device)
            if self.bf16 and not c.compile:
                self.model = self.model.to(memory_format=torch.channels_last)
        vae_params = [p for n, p in self.model.named_parameters() if not n.startswith("discriminator.")]
        self.opt = torch.optim.Adam(vae_params, lr=c.lr, betas=(0.9, 0.999), **adam_options(c.compile, device))
        self.opt_d = (
            torch.optim.Adam(self.model.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
            if c.model == "factorvae"
            else None
        )

    def _resume(self) -> None:
        states = []
        common, error, loaded = None, None, [None] * len(self.members)
        if self.dist.is_main:  # rank 0 decides (and sets damaged checkpoints aside); every rank loads that step
            try:
                newest, loaded = zip(*(self._newest_loadable(m) for m in self.members), strict=True)
                if len(set(newest)) > 1:
                    at = ", ".join(f"{m.name} at {s}" for m, s in zip(self.members, newest, strict=True))
                    raise ValueError(
                        f"an ensemble resumes together: its members' checkpoints must be at one step, got {at}"
                    )
                common = newest[0]
            except ValueError as exc:
                error = str(exc)
        common, error = self.dist.broadcast((common, error))
        if error is not None:
            raise ValueError(error)
        for m, state in zip(self.members, loaded, strict=True):
            if state is None:  # rank 0 loaded it while choosing the step; the other ranks load it here
                state = load_checkpoint(m.run.checkpoint(common), self.device)
            if state is None:
                raise ValueError(f"--resume {m.run.root}: its checkpoint of step {common} in {m.run.ckpt_dir} "
                                 "cannot be loaded (the warning says why)")
            trained_on = state.get("channels", self.dataset.channels)
            if trained_on != self.dataset.channels:
                raise ValueError(
                    f"--dataset {self.c.dataset} has {self.dataset.channels}-channel images, but the run in "
                    f"{m.run.root} was trained on {trained_on}-channel images"
                )
            written_by = state.get("world_size", 1)
            if written_by != self.dist.world_size:
                raise ValueError(
                    f"--resume {m.run.root}: its checkpoint was written by {written_by} process(es) and this run has "
                    f"{self.dist.world_size}; resume with the same number (torchrun --nproc-per-node {written_by}"
                    + (")" if written_by > 1 else ", or without torchrun)")
                )
            states.append(state)
        if self.stacked:
            for i, state in enumerate(states):
                load_member_state_dict(self.model, i, state["model"])
            load_member_optimizer_states(self.opt, [s["opt"] for s in states])
            if self.opt_d is not None:
                load_member_optimizer_states(self.opt_d, [s["opt_d"] for s in states])
        else:
            self.model.load_state_dict(states[0]["model"])
            self.opt.load_state_dict(states[0]["opt"])
            if self.opt_d is not None:
                self.opt_d.load_state_dict(states[0]["opt_d"])
        for m, state in zip(self.members, states, strict=True):
            gens = state["ranks"][self.dist.rank] if self.dist.active else state
            m.data_gen.set_state(gens["data_gen"])
            m.noise_gen.set_state(gens["noise_gen"].to(m.noise_gen.get_state().device))
        torch.set_rng_state(states[0]["torch_rng"])
        self.step_count = states[0]["step"]
        for m in self.members:
            m.run.truncate_metrics(self.step_count)

    def _newest_loadable(self, m: Member) -> tuple[int, dict]:
        """(step, state) of the member's newest checkpoint that loads (rank 0 alone calls this); damaged newer
        ones are skipped with a warning and set aside."""
        ckpts = m.run.checkpoints()
        if not ckpts:
            raise ValueError(f"--resume {m.run.root}: no checkpoint in {m.run.ckpt_dir}")
        for path in reversed(ckpts):
            state = load_checkpoint(path, self.device)
            if state is not None:
                return checkpoint_step_of(path), state
            path.replace(path.with_suffix(".pt.damaged"))  # nothing else (scores, collect, a resume) takes it
        raise ValueError(f"--resume {m.run.root}: none of the {len(ckpts)} checkpoint(s) in {m.run.ckpt_dir} can be "
                         "loaded (each one's warning says why)")

    def _batches(self):
        """Each member's batch from its own data order: (N, ...) alone, stacked (M, N, ...) in an ensemble."""
        if not self.stacked:
            yield from self.members[0].batches
        while True:
            yield torch.stack([next(m.batches) for m in self.members])

    # ---- the phases ---------------------------------------------------------------------------------------------
    def step(self) -> None:
        """One optimisation step for every member; the terms add up on the device (no host wait)."""
        out = self.one_step()
        self.step_count += 1
        self.steps_since += 1
        terms = {k: v.detach().float() for k, v in out.items() if k != "z"}
        if self.term_names is None:
            self.term_names = list(terms)
            self.sums = torch.zeros(len(self.members), len(self.term_names), device=self.device)
            self.bad = torch.zeros(len(self.members), dtype=torch.bool, device=self.device)
        values = torch.stack([terms[k] for k in self.term_names], -1).reshape(len(self.members), -1)
        self.sums += values
        self.bad |= ~torch.isfinite(values).all(-1)

    def log(self) -> None:
        """A train row per member (one host synchronisation per interval); members whose loss turned
        non-finite in the interval are marked failed and leave."""
        step, since = self.step_count, self.steps_since
        if self.dist.active:  # the global batch's terms; a member fails in every process at once
            self.dist.mean_(self.sums)
            self.bad = self.dist.max_(self.bad.to(torch.uint8)).bool()
        bad = self.bad.tolist()
        if any(bad):
            self._fail([i for i, b in enumerate(bad) if b])
            if not self.members:
                return
        now = time.perf_counter()
        rate = since / (now - self.t_last)
        nus = None
        if self.c.model == "chyvae" and self.c.learn_nu:
            nus = torch.as_tensor(self.model.nu).detach().float().reshape(-1).tolist()
        all_sums = self.sums.tolist()  # one transfer for the rows, the bar and the line
        for i, (m, sums) in enumerate(zip(self.members, all_sums, strict=True)):
            row = {
                "kind": "train",
                "step": step,
                **{k: v / since for k, v in zip(self.term_names, sums, strict=True)},
                "steps_per_s": rate,
                "time": round(time.time(), 3),  # when it was logged (which attempt of a retried run)
            }
            if nus is not None:
                row["nu"] = nus[i]
            m.run.append_metrics(row)
            for k, v in row.items():
                if k not in ("kind", "step"):
                    m.writer.add_scalar(f"train/{k}", v, step)
        losses = [s[self.term_names.index("loss")] / since for s in all_sums]
        if self.bar is not None:
            self.bar.update(since)
            self.bar.set_postfix(loss=_span(losses, 1), steps_s=f"{rate:.1f}")
        elif self.dist.is_main:
            who = f"  {len(self.members)} members" if self.stacked else ""
            recon = all_sums[0][self.term_names.index("recon")] / since
            detail = f"  loss {_span(losses, 2)}" + ("" if self.stacked else f"  recon {recon:.2f}")
            print(f"step {step}/{self.c.steps}{who}{detail}  {rate:.1f} steps/s", flush=True)
        self.sums.zero_()
        self.t_last, self.steps_since = now, 0

    def _fail(self, failed: list[int]) -> None:
        step, since = self.step_count, self.steps_since
        values = self.sums  # the interval's sums: which terms are non-finite now
        for i in failed:
            m = self.members[i]
            bad_terms = [k for k, v in zip(self.term_names, values[i].tolist(), strict=True) if not math.isfinite(v)]
            m.status = {
                "state": "failed",
                "step": step,
                "error": f"non-finite loss within steps {step - since + 1}..{step} "
                f"(terms now non-finite: {', '.join(bad_terms) or 'earlier in the interval'}); "
                f"last good checkpoint: {m.last_good}",
            }
            m.run.write_json("status.json", m.status)
            m.writer.close()
            if self.dist.is_main:
                print(f"error: {m.name}: {m.status['error']}" if self.stacked else f"error: {m.status['error']}",
                      file=sys.stderr)
        keep = [i for i in range(len(self.members)) if i not in failed]
        if keep and self.stacked:  # the others go on without them
            select_optimizer_members(self.opt, keep)  # first: it reads the parameters' shapes
            if self.opt_d is not None:
                select_optimizer_members(self.opt_d, keep)
            select_members(self.model, keep)  # the discriminator's parameters with the rest
            self.sums, self.bad = self.sums[keep], self.bad[keep]
        self.members = [self.members[i] for i in keep]
        self.noise_gens[:] = [m.noise_gen for m in self.members]
        if keep and self.dist.active:  # DistributedDataParallel holds the parameters it was given
            self.one_step = self._make_step()

    def member_state(self, i: int, ranks: list | None = None) -> dict:
        """Member i's checkpoint, exactly a lone run's. Under torchrun also every process's generators
        (``ranks``, in rank order: each process resumes its own)."""
        m = self.members[i]
        if self.stacked:
            model = member_state_dict(self.model, i)
            opt = member_optimizer_state(self.opt, i)
            opt_d = member_optimizer_state(self.opt_d, i) if self.opt_d is not None else None
        else:
            model, opt = self.model.state_dict(), self.opt.state_dict()
            opt_d = self.opt_d.state_dict() if self.opt_d is not None else None
        return {
            "model": model,
            "opt": opt,
            "opt_d": opt_d,
            "data_gen": m.data_gen.get_state(),
            "noise_gen": m.noise_gen.get_state().cpu(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step_count,
            "config": dataclasses.asdict(m.config),
            "channels": self.dataset.channels,
            "world_size": self.dist.world_size,
            **({"ranks": [r[i] for r in ranks]} if ranks is not None else {}),
        }

    def checkpoint(self) -> None:
        """Every member's checkpoint of this step (rank 0 writes; under torchrun every process takes part)."""
        ranks = None
        if self.dist.active:
            ranks = self.dist.gather(
                [{"data_gen": m.data_gen.get_state(), "noise_gen": m.noise_gen.get_state().cpu()} for m in self.members]
            )
        for i, m in enumerate(self.members):
            state = self.member_state(i, ranks) if self.dist.is_main else {}
            m.last_good = m.run.save_checkpoint(
                state, self.step_count, m.config.keep_checkpoints, keep_every=m.config.eval_every
            )

    def member_model(self, i: int) -> torch.nn.Module:
        """Member i as a lone model (a copy) on the device."""
        if not self.stacked:
            return self.model
        model = build_model(self.members[i].config, self.dataset.channels).to(self.device)
        model.load_state_dict(member_state_dict(self.model, i))
        return model

    def evaluate(self) -> None:
        """Held-out negative ELBO and its terms on a fixed batch of 256 images, and the disentanglement
        metrics (same seed at every step, so that only the model changes), logged as kind "eval". An
        ensemble encodes every image once for all its members (SharedEncodings)."""
        step = self.step_count
        rows = [
            {"kind": "eval", "step": step, **terms}
            for terms in member_held_out_terms(self.model, self.held_out, bf16=self.bf16)
        ]
        if self.metric_names:
            if self.stacked:
                shared = SharedEncodings(self.model, precision=self.c.precision)
                encoders = [shared.encoder(i) for i in range(len(self.members))]
            else:
                encoders = [make_encoder(self.model, precision=self.c.precision)]
            for m, row, encode in zip(self.members, rows, encoders, strict=True):
                t0 = time.perf_counter()
                summary, _ = score(encode, self.dataset, self.metric_names, protocol=self.c.metric_protocol, seed=0)
                row.update(summary, metric_seconds=time.perf_counter() - t0)
                text = "  ".join(f"{k} {v:.3f}" for k, v in summary.items())
                who = f"{m.name}: " if self.stacked else ""
                message = f"step {step}: {who}{text} ({row['metric_seconds']:.0f} s)"
                if self.bar is not None:
                    self.bar.write(message)
                else:
                    print(message, flush=True)
        for m, row in zip(self.members, rows, strict=True):
            m.run.append_metrics(row)
            for k, v in row.items():
                if k not in ("kind", "step"):
                    m.writer.add_scalar(f"eval/{k}", v, step)

    def pictures(self) -> None:
        for i, m in enumerate(self.members):
            save_model_pictures(self.member_model(i), self.fixed, self.held_out, m.run.root, bf16=self.bf16)
            save_curves(m.run.root / "metrics.jsonl", m.run.root / "curves.png")

    # ---- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Trains to the configured steps (or a signal, or every member failing); returns each
        member's final status, in the order of the configs."""
        c = self.c
        order = list(self.members)
        for m in self.members:
            m.status = {"state": "running", "step": self.step_count}
            m.run.write_json("status.json", m.status)
        self.bar = _progress(c.steps, self.step_count) if self.dist.is_main else None
        self.model.train()
        self.t_last, self.steps_since = time.perf_counter(), 0
        self.started_at = self.step_count
        with StopRequested() as stop, flush_denormals(self.device):
            while self.step_count < c.steps and not self._stopping(stop) and self.members:
                self.step()
                step = self.step_count
                if step % c.log_every == 0 or step == c.steps:
                    self.log()
                    if not self.members:
                        break
                if step % c.ckpt_every == 0 or step % c.eval_every == 0 or step == c.steps:
                    self.checkpoint()  # at every evaluation step too (kept: scored again there by collect)
                if step % c.eval_every == 0 or step == c.steps:
                    if self.dist.is_main:
                        self.evaluate()
                        self.pictures()
                    self.dist.barrier()  # the other processes wait for rank 0's evaluation
            self.finish(stop.signal if stop.signal is not None or not self._stopped_elsewhere else signal.SIGTERM)
        self.dist.close()
        if self.bar is not None:
            self.bar.close()
        return [m.status for m in order]

    def _stopping(self, stop: StopRequested) -> bool:
        """Whether a signal came (to any process under torchrun: every process stops after the same step)."""
        if not self.dist.active:
            return stop.signal is not None
        self._stopped_elsewhere = self.dist.any(stop.signal is not None)
        return self._stopped_elsewhere

    _stopped_elsewhere = False

    def finish(self, signum: int | None) -> None:
        """Writes each remaining member's end state: interrupted (with a checkpoint) or finished."""
        if signum is not None and self.members:
            self.checkpoint()
        for m in self.members:
            if signum is not None:
                m.status = {
                    "state": "interrupted",
                    "step": self.step_count,
                    "signal": signal.Signals(signum).name,
                    "checkpoint": str(m.last_good),
                }
                if self.dist.is_main:
                    n = self.dist.world_size
                    launcher = f"torchrun --nproc-per-node {n} -m" if self.dist.active else "python -m"
                    print(
                        f"stopped by {m.status['signal']} at step {self.step_count}; checkpoint {m.last_good}; "
                        f"continue with: {launcher} chyvae_ext.train --resume {m.run.root}",
                        file=sys.stderr,
                    )
            else:
                m.status = {"state": "finished", "step": self.step_count, "checkpoint": str(m.last_good)}
            m.run.write_json("status.json", m.status)
            m.writer.close()
        if signum is None and self.step_count == self.started_at and self.dist.is_main:
            self.pictures()  # a step run here drew them at its end


def _span(values: list[float], digits: int) -> str:
    """One value, or the range over an ensemble's members."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{min(values):.{digits}f}..{max(values):.{digits}f}"


def train(config: TrainConfig, *, resume: Path | None = None) -> dict:
    """Train as configured; returns the final status dict. Raises ValueError for bad options."""
    if resume is not None:
        config = dataclasses.replace(config, out=str(resume))
    return Trainer([config], resume=resume is not None).run()[0]


def train_ensemble(configs: list[TrainConfig], *, resume: bool = False) -> list[dict]:
    """Train the runs ``configs`` as one ensemble (see Trainer); returns each run's final status.

    They must agree on every option of ENSEMBLE_SHARED; each keeps its seed, hyperparameters and
    run directory. ``resume``: every member continues from its last checkpoint (all at one step).
    """
    return Trainer(configs, resume=resume, ensemble=True).run()


def parse_args(argv: list[str] | None) -> tuple[list[TrainConfig], bool, bool]:
    """(configs, resume, ensemble): one config for a lone run, one per RUN_DIR with --ensemble."""
    parser = argparse.ArgumentParser(
        prog="python -m chyvae_ext.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = TrainConfig()
    parser.add_argument("--config", help="YAML or JSON file of options; flags override it")
    parser.add_argument("--resume", nargs="?", const=True, type=Path, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR (with --ensemble: continue the ensemble's runs)")
    parser.add_argument(
        "--ensemble",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="train these runs as one ensemble: each RUN_DIR holds sweep_options.json (its options, as the "
        "sweep writes them) or, with --resume, a checkpointed run; other flags apply to every member",
    )
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--dataset")
    parser.add_argument("--data-root", dest="data_root")
    parser.add_argument(
        "--dataset-size",
        dest="dataset_size",
        type=int,
        help="train on a fixed set of N images of a procedural dataset, drawn once from seed 0 and cached on disk "
        "(the paper: 200000 for correlated_ellipses); default: an endless stream",
    )
    parser.add_argument(
        "--no-shape-factor",
        dest="include_shape",
        action="store_false",
        default=None,
        help="dsprites / shapes2d: the metrics leave the discrete shape out of the factors (it varies at random)",
    )
    parser.add_argument("--z-dim", dest="z_dim", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--nu", type=float, help=f"CHyVAE inverse-Wishart degrees of freedom (default {d.nu})")
    parser.add_argument("--learn-nu", dest="learn_nu", action="store_true", default=None)
    parser.add_argument("--num-samples", dest="num_samples", type=int, help="K samples for the regulariser")
    parser.add_argument("--beta", type=float, help="beta-VAE's KL weight, beta-TCVAE's TC weight (default 4)")
    parser.add_argument("--gamma", type=float,
                        help="FactorVAE's TC weight (default 10); AnnealedVAE's |KL - C| weight (default 1000)")
    parser.add_argument("--lambda-od", dest="lambda_od", type=float,
                        help=f"DIP-VAE's off-diagonal weight (default {d.lambda_od})")
    parser.add_argument("--lambda-d-factor", dest="lambda_d_factor", type=float,
                        help="DIP-VAE's diagonal weight over the off-diagonal one "
                        "(default 10 for dipvae1, 1 for dipvae2)")
    parser.add_argument("--c-max", dest="c_max", type=float, help=f"AnnealedVAE's final capacity (default {d.c_max})")
    parser.add_argument("--c-iters", dest="c_iters", type=int,
                        help=f"AnnealedVAE's steps to reach --c-max (default {d.c_iters})")
    parser.add_argument("--steps", type=int, help=f"(default {d.steps})")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help=f"(default {d.batch_size})")
    parser.add_argument("--lr", type=float, help=f"(default {d.lr})")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--impl", choices=("auto", "fused", "reference"))
    parser.add_argument(
        "--init", choices=INITS, help="the layers' initialisation: torch (default) or glorot (as the paper's TF code)"
    )
    parser.add_argument("--out", help="run directory (default runs/<model>-<dataset>-seed<seed>)")
    parser.add_argument("--log-every", dest="log_every", type=int)
    parser.add_argument("--eval-every", dest="eval_every", type=int)
    parser.add_argument("--ckpt-every", dest="ckpt_every", type=int)
    parser.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int)
    parser.add_argument(
        "--metrics",
        help=f"disentanglement metrics at each evaluation: {', '.join(METRICS)}, all or none "
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
    config_file, resume, ensemble = args.pop("config"), args.pop("resume"), args.pop("ensemble")
    flags = {k: v for k, v in args.items() if v is not None}
    extra = load_config_file(config_file) if config_file else {}
    if ensemble is not None:
        if isinstance(resume, Path):
            raise ValueError("--resume takes no RUN_DIR with --ensemble (the ensemble's RUN_DIRs are resumed)")
        if "out" in flags:
            raise ValueError("--out cannot be given with --ensemble: each member's RUN_DIR is its output")
        configs = [TrainConfig(**{**_member_options(d, bool(resume)), **extra, **flags, "out": str(d)})
                   for d in ensemble]
        return configs, bool(resume), True
    if resume is True:
        raise ValueError("--resume needs a RUN_DIR (or --ensemble RUN_DIR ...)")
    values: dict = {}
    if resume is not None:
        if not (resume / "config.json").is_file():
            raise ValueError(f"--resume {resume}: no config.json there (not a run directory)")
        values.update(json.loads((resume / "config.json").read_text()))
        values["out"] = str(resume)
    values.update(extra)
    values.update(flags)
    return [TrainConfig(**values)], resume is not None, False


def _member_options(run_dir: Path, resume: bool) -> dict:
    """An ensemble member's options from its RUN_DIR: config.json to resume, else sweep_options.json."""
    name = "config.json" if resume else "sweep_options.json"
    path = run_dir / name
    if not path.is_file():
        what = "a run directory to resume" if resume else "the run's options (the sweep writes them)"
        raise ValueError(f"--ensemble {run_dir}: no {name} there ({what})")
    options = json.loads(path.read_text())
    options.pop("out", None)
    return options


def main(argv: list[str] | None = None) -> int:
    try:
        configs, resume, ensemble = parse_args(argv)
        if ensemble:
            statuses = train_ensemble(configs, resume=resume)
        else:
            statuses = [train(configs[0], resume=Path(configs[0].out) if resume else None)]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for config, status in zip(configs, statuses, strict=True):
        if status["state"] == "finished" and int(os.environ.get("RANK", "0")) == 0:
            print(f"finished {status['step']} steps; run directory: {config.resolved().out}")
    states = {s["state"] for s in statuses}
    if states == {"finished"}:
        return 0
    return 130 if "interrupted" in states else 1


if __name__ == "__main__":
    raise SystemExit(main())
