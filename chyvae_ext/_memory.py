"""How much memory a device has (the size checks of config, build and the pixel table ask it)."""

from __future__ import annotations

import os

import torch


def device_memory(device: str) -> int | None:
    """The bytes of memory on ``device``: the machine's RAM for the CPU, the GPU's own for CUDA; None
    where that cannot be read."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(dev.index or 0).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
