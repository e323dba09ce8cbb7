"""Training configuration: :class:`TrainConfig`, its checks, config files, the CPU's bf16 flags and
the training command line (argv, config files and run directories to validated configurations).

Nothing here builds or trains anything: chyvae_ext.build turns a configuration into its model and
data, chyvae_ext.train runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

import torch

from . import runfiles
from ._checks import ArgumentParser, check_int, check_non_negative
from ._memory import device_memory
from .metrics import METRICS, PROTOCOLS, parse_metrics
from .models.networks import INITS
from .models.registry import MODEL_KINDS

MODELS = tuple(MODEL_KINDS)  # chyvae, betavae, factorvae, vae, betatcvae, dipvae1, dipvae2, annealedvae
BETA_MODELS = ("betavae", "betatcvae")  # the models --beta applies to ("vae" is beta = 1)
GAMMA_DEFAULTS = {"factorvae": 10.0, "annealedvae": 1000.0}  # --gamma: FactorVAE's TC weight, AnnealedVAE's
DIP_D_FACTOR = {"dipvae1": 10.0, "dipvae2": 1.0}  # disentanglement_lib's study (docs/math.md 6)
SYNTHETIC = ("shapes2d", "dsprites", "correlated_ellipses")
SHAPE_DATASETS = ("dsprites", "shapes2d")  # the sets with a discrete shape factor (include_shape)


@dataclasses.dataclass
class TrainConfig:
    model: str = "chyvae"
    dataset: str = "correlated_ellipses"
    data_root: str | None = None
    dataset_size: int | None = None  # a fixed set of N images drawn once (seed 0) from a procedural dataset
    include_shape: bool = True  # dsprites / shapes2d: whether the metrics count shape as a factor
    z_dim: int | None = None  # default: 10 for the synthetic sets, 32 otherwise (docs/math.md 2)
    hidden: int | None = None  # default: 128 for the synthetic sets, 256 otherwise
    nu: float = 200.0
    learn_nu: bool = False
    num_samples: int = 1
    posterior_jitter: float = 0.0  # chyvae: C = L L^T + EPS * I (the original code's floor: 1e-4); 0: C = L L^T
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
    training step is slower than in fp32 (benchmarks/RESULTS.md): where the CPU's flags can be read,
    they decide. A device that is not one (``--device foo``) has none: check_config names it.
    """
    if not isinstance(device, str):
        return False
    try:
        dev = torch.device(device)
    except RuntimeError:
        return False
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


BOOL_OPTIONS = ("learn_nu", "compile")  # include_shape is checked with --no-shape-factor's message
STR_OPTIONS = ("model", "dataset", "device", "precision", "impl", "init", "metrics", "metric_protocol")
OPTIONAL_STR_OPTIONS = ("data_root", "out")
FLOAT_OPTIONS = ("nu", "posterior_jitter", "beta", "gamma", "lambda_od", "lambda_d_factor", "c_max", "lr")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def check_types(c: TrainConfig) -> None:
    """Each option's type (a config file can hold anything): booleans are true or false, names are
    strings, the seed an integer below 2**63."""
    for name in BOOL_OPTIONS:
        v = getattr(c, name)
        if not isinstance(v, bool):
            raise ValueError(f"{_flag(name)} must be true or false, got {v!r}")
    for name in STR_OPTIONS + OPTIONAL_STR_OPTIONS:
        v = getattr(c, name)
        if not isinstance(v, str) and not (v is None and name in OPTIONAL_STR_OPTIONS):
            raise ValueError(f"{_flag(name)} must be a string, got {v!r} ({type(v).__name__})")
    check_int("--seed", c.seed)
    if c.seed >= 2**63:
        raise ValueError(f"--seed must be below 2**63 (torch's generators take 64-bit seeds), got {c.seed}")


def read_numbers(values: dict, where: str) -> dict:
    """``values`` with a string that reads as a number taken as that number for a numeric option: YAML
    1.1 (PyYAML) reads ``1e-3`` as a string (it wants ``1.0e-3``)."""
    out = dict(values)
    for name in FLOAT_OPTIONS:
        v = out.get(name)
        if isinstance(v, str):
            try:
                out[name] = float(v)
            except ValueError:
                raise ValueError(f"{where}: {name} must be a number, got {v!r}") from None
    return out


def check_config(c: TrainConfig, *, check_device: bool = True) -> None:
    """Every invalid option or combination, before anything is built (``check_device``: also that the
    device is there, which a sweep leaves to the machine each run trains on)."""
    check_types(c)
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
        raise ValueError(f"include_shape (--no-shape-factor) must be true or false, got {c.include_shape!r}")
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
        if v > FLOAT32_MAX:
            raise ValueError(f"--{name.replace('_', '-')} must be at most {FLOAT32_MAX:.4g} (the largest float32: "
                             f"the model and its optimiser compute in float32), got {v!r}")
    if c.model == "vae" and c.beta not in (None, 1.0):
        raise ValueError(f"--model vae is the plain VAE (beta = 1); --beta {c.beta} applies to "
                         f"{' and '.join(BETA_MODELS)}")
    check_non_negative("--posterior-jitter", c.posterior_jitter)
    if c.posterior_jitter and c.model != "chyvae":
        raise ValueError(f"--posterior-jitter is CHyVAE's posterior floor; --model {c.model} has no full "
                         f"posterior covariance (got --posterior-jitter {c.posterior_jitter})")
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
    if check_device and dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {c.device}: no CUDA GPU is available")
    if check_device:
        check_memory(c)


FLOAT32_MAX = float(torch.finfo(torch.float32).max)
STEP_BYTES_PER_PIXEL = 190  # a training step's peak memory per image pixel (fp32 CHyVAE, hidden 128, 64x64 gray:
# 0.77 MB an image, measured from the process's peak RSS at batch 50 and 1050)
RGB_DATASETS = ("3dchairs", "celeba")  # 3-channel images; the generic sets (folder, npz, hdf5) are counted as gray


def _gib(n: float) -> str:
    return f"{n / 2**30:,.0f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def check_memory(c: TrainConfig) -> None:
    """Refuses a ``--batch-size`` or ``--dataset-size`` that cannot fit in the device's memory at all (before
    anything is allocated, so that no MemoryError half-way through says it). The estimate is a lower bound
    for other options than the measured ones (rgb images, wider networks need more)."""
    total = device_memory(c.device)
    if total is None:
        return
    pixels = 64 * 64 * (3 if c.dataset in RGB_DATASETS else 1)
    step = c.batch_size * pixels * STEP_BYTES_PER_PIXEL
    if step > total:
        raise ValueError(f"--batch-size {c.batch_size}: a training step needs about {_gib(step)} (about "
                         f"{pixels * STEP_BYTES_PER_PIXEL / 2**20:.2f} MiB an image), more than the "
                         f"{_gib(total)} of --device {c.device}; use a smaller --batch-size")
    noise = c.batch_size * c.num_samples * (c.z_dim or 32) * 4  # the K samples' float32 noise alone
    if noise > total:
        raise ValueError(f"--num-samples {c.num_samples}: the samples of one batch need at least {_gib(noise)}, "
                         f"more than the {_gib(total)} of --device {c.device}; use a smaller --num-samples")
    stored = (c.dataset_size or 0) * pixels  # uint8 pixels, on the host and on the device
    if stored > total:
        raise ValueError(f"--dataset-size {c.dataset_size}: the fixed set's images need {_gib(stored)}, more than "
                         f"the {_gib(total)} of --device {c.device}; use a smaller --dataset-size")


def read_mapping_file(p: Path, what: str):
    """A YAML (.yaml, .yml) or JSON file's contents; a syntax error is a ValueError naming the file and
    the line."""
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ValueError(f"{what} {p}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {p}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def check_option_names(options: dict, where: str) -> None:
    """Refuses keys that are not TrainConfig options, naming them and ``where`` (the file they came from):
    an option this version does not know is not dropped in silence."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(map(str, unknown))} (written by another version of "
                         f"chyvae_ext?); known: {', '.join(sorted(known))}")


def run_options(run_dir: str | Path, *, what: str = "RUN_DIR") -> dict:
    """The options recorded in a run directory's config.json, each a TrainConfig option (a ValueError
    naming the file and the key otherwise)."""
    options = runfiles.read_config(run_dir, what=what)
    check_option_names(options, f"{what} {Path(run_dir) / runfiles.CONFIG}")
    return options


def run_config(run_dir: str | Path, *, what: str = "RUN_DIR") -> TrainConfig:
    """The run directory's TrainConfig, from its config.json (see :func:`run_options`)."""
    return TrainConfig(**run_options(run_dir, what=what))


RESUME_FIXED = ("model", "dataset", "dataset_size", "z_dim", "hidden", "learn_nu")  # a resumed run keeps these


def check_resume_changes(recorded: dict, given: dict, run_dir: str | Path) -> None:
    """Refuses options given to ``--resume`` that would change the run's model or data (RESUME_FIXED),
    naming the option and both values; the schedule, the evaluations and the device may change."""
    for name in RESUME_FIXED:
        if name in given and name in recorded and given[name] != recorded[name]:
            raise ValueError(f"--resume {run_dir}: {_flag(name)} {given[name]!r} would change the run, trained "
                             f"with {_flag(name)} {recorded[name]!r}; leave it out, or start a new run with --out")


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config: no file at {p}")
    data = read_mapping_file(p, "--config")
    if not isinstance(data, dict):
        raise ValueError(f"--config {p}: expected a mapping of options, got {type(data).__name__}")
    check_option_names(data, f"--config {p}")
    return read_numbers(data, f"--config {p}")


ENSEMBLE_SHARED = (
    "model", "dataset", "data_root", "dataset_size", "include_shape", "z_dim", "hidden", "learn_nu", "num_samples",
    "posterior_jitter", "c_iters",
    "steps", "batch_size", "lr", "device", "precision", "impl", "log_every", "eval_every", "metrics",
    "metric_protocol", "ckpt_every", "keep_checkpoints", "compile",
)  # what an ensemble's members must share; each has its own seed, out and hyperparameters (nu, beta, gamma, ...)


def ensemble_key(config: TrainConfig) -> tuple:
    """The options that must agree for runs to train together as one ensemble."""
    c = config.resolved()
    return tuple(getattr(c, k) for k in ENSEMBLE_SHARED)


def check_ensemble(configs: list[TrainConfig]) -> None:
    """Resolved configurations that may train together as one ensemble: the same ENSEMBLE_SHARED
    options, distinct run directories."""
    first = configs[0]
    for cfg in configs[1:]:
        diff = [k for k in ENSEMBLE_SHARED if getattr(cfg, k) != getattr(first, k)]
        if diff:
            raise ValueError(
                f"ensemble members must share {', '.join(diff)}: {cfg.out} has "
                + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in diff)
                + f" where {first.out} has " + ", ".join(f"{k}={getattr(first, k)!r}" for k in diff)
            )
    outs = [cfg.out for cfg in configs]
    if len(set(outs)) != len(outs):
        raise ValueError(f"ensemble members must have distinct --out directories, got {outs}")


def make_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The training command line's parser (``description``: the help text's opening, train's docstring)."""
    parser = ArgumentParser(
        prog="python -m chyvae_ext.train", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = TrainConfig()
    _add_model_options(parser, d)
    _add_run_options(parser, d)
    return parser


def _add_model_options(parser: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Where the options come from, the data and the model's options."""
    parser.add_argument("--config", help="YAML or JSON file of options; flags override it")
    parser.add_argument("--resume", nargs="?", const=True, type=Path, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR (with --ensemble: continue the ensemble's runs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="a fresh start into an --out that holds a run: remove that run's files first "
                        "(without it, such an --out is refused)")
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
    parser.add_argument("--posterior-jitter", dest="posterior_jitter", type=float, nargs="?", const=1e-4,
                        metavar="EPS", help="CHyVAE: the posterior covariance is L L^T + EPS * I, the original "
                        "code's floor (EPS 1e-4 when the flag is given alone); default 0: L L^T, floored in L's "
                        "diagonal")
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


def _add_run_options(parser: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The schedule, the device, the run directory and the evaluations."""
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


def parse_args(argv: list[str] | None, *, description: str | None = None
               ) -> tuple[list[TrainConfig], bool, bool, bool]:
    """(configs, resume, ensemble, overwrite): one config for a lone run, one per RUN_DIR with
    --ensemble. Options come from a run directory (``--resume``, ``--ensemble``), then ``--config``,
    then the flags."""
    args = vars(make_parser(description).parse_args(argv))
    config_file, resume, ensemble = args.pop("config"), args.pop("resume"), args.pop("ensemble")
    overwrite = bool(args.pop("overwrite"))
    if overwrite and resume is not None:
        raise ValueError("--overwrite replaces a run and --resume continues it: give one of them")
    flags = {k: v for k, v in args.items() if v is not None}
    extra = load_config_file(config_file) if config_file else {}
    if ensemble is not None:
        if isinstance(resume, Path):
            raise ValueError("--resume takes no RUN_DIR with --ensemble (the ensemble's RUN_DIRs are resumed)")
        if "out" in flags:
            raise ValueError("--out cannot be given with --ensemble: each member's RUN_DIR is its output")
        configs = []
        for d in ensemble:
            member = _member_options(d, bool(resume))
            if resume:
                check_resume_changes(member, {**extra, **flags}, d)
            configs.append(TrainConfig(**{**member, **extra, **flags, "out": str(d)}))
        return configs, bool(resume), True, overwrite
    if resume is True:
        raise ValueError("--resume needs a RUN_DIR (or --ensemble RUN_DIR ...)")
    values: dict = {}
    if resume is not None:
        values.update(run_options(resume, what="--resume"))
        check_resume_changes(values, {**extra, **flags}, resume)
        if "out" in flags and Path(flags["out"]).resolve() != Path(resume).resolve():
            raise ValueError(f"--resume {resume} continues that run in its own directory; --out {flags['out']} "
                             "cannot go with it (to branch a run, copy its directory and resume the copy)")
        values["out"] = str(resume)
    values.update(extra)
    values.update(flags)
    return [TrainConfig(**values)], resume is not None, False, overwrite


def _member_options(run_dir: Path, resume: bool) -> dict:
    """An ensemble member's options from its RUN_DIR: config.json to resume, else sweep_options.json."""
    name = runfiles.CONFIG if resume else runfiles.SWEEP_OPTIONS
    if not (run_dir / name).is_file():
        what = "a run directory to resume" if resume else "the run's options (the sweep writes them)"
        raise ValueError(f"--ensemble {run_dir}: no {name} there ({what})")
    if resume:
        options = run_options(run_dir, what="--ensemble")
    else:
        options = runfiles.read_sweep_options(run_dir, what="--ensemble")
        check_option_names(options, f"--ensemble {run_dir / name}")
    options = read_numbers(options, f"--ensemble {run_dir / name}")
    options.pop("out", None)
    return options


