"""From a configuration to what a run works on: its model (through the model registry,
chyvae_ext.models.registry), its dataset, the fixed batches its pictures and held-out ELBO use,
and the held-out terms on them. Training, evaluate, explore, collect and the benchmarks build
through here, so a run and its later readers see the same model and the same images.
"""

from __future__ import annotations

import torch

from .config import SHAPE_DATASETS, TrainConfig, device_memory
from .data import DataError, get_dataset
from .data.fixed import fixed_sample
from .models.networks import initialise
from .models.registry import MODEL_KINDS

TRAINING_BYTES_PER_PARAMETER = 16  # float32: the weight, its gradient and Adam's two moments


def build_model(c: TrainConfig, channels: int) -> torch.nn.Module:
    """The configured lone model, initialised as ``c.init`` says (from torch's global generator). A model
    too large for ``c.device`` (``--z-dim``, ``--hidden``) is refused before any weight is allocated."""
    kind = MODEL_KINDS[c.model]
    check_model_size(c, channels)
    return initialise(kind.cls(c.z_dim, channels, c.hidden, **kind.options(c)), c.init)


def check_model_size(c: TrainConfig, channels: int) -> None:
    """Builds the model on the meta device (shapes, no memory) and refuses, naming --z-dim and --hidden, one
    that cannot be built or whose training state cannot fit in the device's memory."""
    kind = MODEL_KINDS[c.model]
    sizes = f"--z-dim {c.z_dim} --hidden {c.hidden}"
    try:
        with torch.device("meta"):
            model = kind.cls(c.z_dim, channels, c.hidden, **kind.options(c))
    except (RuntimeError, OverflowError, ValueError, TypeError, MemoryError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{sizes}: the {c.model} model cannot be built ({reason[:200]})") from None
    n = sum(p.numel() for p in model.parameters())
    total = device_memory(c.device)
    if total is not None and n * TRAINING_BYTES_PER_PARAMETER > total:
        need = n * TRAINING_BYTES_PER_PARAMETER
        raise ValueError(f"{sizes}: the {c.model} model's {n:,} parameters need about {need / 2**30:,.0f} GiB to train "
                         f"(weights, gradients and Adam's moments), more than the {total / 2**30:,.0f} GiB of "
                         f"--device {c.device}; use a smaller --z-dim or --hidden")


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
