"""One run across processes: the distributed parts of the training loop, in one place.

``torchrun --nproc-per-node N -m chyvae_ext.train ...`` starts N processes; each builds a
:class:`chyvae_ext.train.Trainer` as a lone run (or an ensemble) does, and :class:`Distributed`
says what differs:

- the process group: gloo on the CPU, nccl on GPUs (each process on ``cuda:LOCAL_RANK``);
- the batch: ``--batch-size`` is the global batch, ``batch_size / world_size`` per process;
- the randomness: process ``rank`` draws its batches and noise from generators seeded by
  :func:`rank_seed` (rank 0 from the run's own seeds, so a one-process run is unchanged);
- the gradients: averaged across processes by DistributedDataParallel, so a step equals a
  one-process step on the union of the processes' batches and noise (the losses are means);
- the files: rank 0 alone writes the run directory; the others wait for it at each evaluation;
- stopping: a signal to any process stops every process after the same step.

FactorVAE under torchrun: each process permutes its own codes (``permute_dims`` over its local
batch) and its discriminator sees its own batch; the discriminator's gradients are averaged
across processes like the VAE's.

Without torchrun (``WORLD_SIZE`` unset or 1) every method here is a no-op for one process.
"""

from __future__ import annotations

import datetime
import inspect
import os

import torch

# A rank waits for rank 0's evaluation (minutes at paper scale on a CPU) at a barrier.
BARRIER_TIMEOUT = datetime.timedelta(hours=6)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s generator for a run generator seeded ``seed`` (rank 0: ``seed`` itself)."""
    if rank == 0:
        return seed
    return (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9) % 2**63  # a fixed mix: same on every machine


class _Loss(torch.nn.Module):
    """model.loss as a forward, so that DistributedDataParallel sees the step's forward pass."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, noise):
        return self.model.loss(x, noise=noise)


class _DiscriminatorLoss(torch.nn.Module):
    """FactorVAE's discriminator terms (loss, accuracy) as a forward (its own DistributedDataParallel)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z1, z2, generator):
        return self.model.discriminator_terms(z1, z2, generator=generator)


class Distributed:
    """This process's place in the run: ``world_size``, ``rank``, ``is_main``, and the collectives."""

    def __init__(self, world_size: int = 1, rank: int = 0, local_rank: int = 0):
        self.world_size, self.rank, self.local_rank = world_size, rank, local_rank
        self.is_main = rank == 0
        self.active = world_size > 1

    @classmethod
    def from_env(cls, device: str) -> Distributed:
        """One process, or (under torchrun: WORLD_SIZE > 1) this process joined to the group."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        return cls(world, rank, local_rank)

    def device(self, device: str) -> str:
        """The configured device, or this process's own GPU (``cuda:LOCAL_RANK``) under torchrun."""
        if self.active and torch.device(device).type == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true in any process (every process gets the same answer)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=self._collective_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged over the processes, in place."""
        if self.active:
            torch.distributed.all_reduce(t)
            t /= self.world_size
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t

    def gather(self, obj) -> list:
        """Every process's ``obj``, in rank order (picklable objects)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` in every process."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def wrap_loss(self, model: torch.nn.Module):
        """``model.loss(x, noise=...)`` as a callable ``(x, noise)``: under torchrun through
        DistributedDataParallel (gradients averaged across processes; FactorVAE's discriminator left
        to :meth:`wrap_discriminator_loss`)."""
        if not self.active:
            return lambda x, noise: model.loss(x, noise=noise)
        module = _Loss(model)
        ignore = [f"model.{n}" for n, _ in model.named_parameters() if n.startswith("discriminator.")]
        return self._ddp(module, ignore)

    def wrap_discriminator_loss(self, model: torch.nn.Module):
        """``model.discriminator_terms(z1, z2, generator=...)`` (loss, accuracy) as a callable ``(z1, z2,
        generator)``: under torchrun its discriminator's gradients averaged across processes."""
        if not self.active:
            return lambda z1, z2, generator: model.discriminator_terms(z1, z2, generator=generator)
        module = _DiscriminatorLoss(model)
        ignore = [f"model.{n}" for n, _ in model.named_parameters() if not n.startswith("discriminator.")]
        return self._ddp(module, ignore)

    def _ddp(self, module: torch.nn.Module, ignore: list[str]):
        from torch.nn.parallel import DistributedDataParallel as DDP

        DDP._set_params_and_buffers_to_ignore_for_model(module, ignore)
        device = next(module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # The buffers (CHyVAE's prior) are the same in every process and never change: no sync per step.
        # The option's name depends on the torch (newer ones call broadcast_buffers forward_sync_buffers).
        params = inspect.signature(DDP.__init__).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return DDP(module, device_ids=ids, **no_sync)

    def _collective_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
