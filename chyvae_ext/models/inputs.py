"""The images and codes a model's public methods take (encode, decode, reconstruct, traverse)."""

from __future__ import annotations

import numpy as np
import torch

IMAGE_SIZE = 64


def as_images(images, channels: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``images`` as the (N, C, 64, 64) float batch a model takes, in [0, 1], on ``device`` in ``dtype``.

    Accepts a torch tensor or a NumPy array; uint8 pixels (0..255) are scaled to [0, 1], floats taken as
    they are (already in [0, 1]). Shapes: (64, 64) one gray image; (N, 64, 64) gray images; (64, 64, C)
    one image channels-last; (N, C, 64, 64) or (N, 64, 64, C) a batch. A float tensor of 4 or more
    dimensions is passed through unchanged (an ensemble's (M, N, C, 64, 64) included). A ValueError
    names the shape or dtype it cannot read.
    """
    if isinstance(images, np.ndarray):
        if images.dtype == object or not (np.issubdtype(images.dtype, np.number) or images.dtype == bool):
            raise ValueError(f"images must be numbers, got a NumPy array of dtype {images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch tensor or a NumPy array, got {type(images).__name__}")
    if images.is_floating_point() and images.dim() >= 4:
        return images.to(device=device, dtype=dtype)
    x = images
    s = IMAGE_SIZE
    if x.dim() == 2 and tuple(x.shape) == (s, s) and channels == 1:
        x = x[None, None]
    elif x.dim() == 3 and tuple(x.shape[1:]) == (s, s) and channels == 1:
        x = x[:, None]
    elif x.dim() == 3 and tuple(x.shape) == (s, s, channels):
        x = x.permute(2, 0, 1)[None]
    elif x.dim() == 3 and tuple(x.shape) == (channels, s, s):
        x = x[None]
    elif x.dim() == 4 and tuple(x.shape[1:]) == (s, s, channels) and x.shape[1] != channels:
        x = x.permute(0, 3, 1, 2)
    elif not (x.dim() == 4 and tuple(x.shape[1:]) == (channels, s, s)):
        raise ValueError(f"images must be ({s}, {s}), (N, {s}, {s}), ({s}, {s}, C), (N, C, {s}, {s}) or "
                         f"(N, {s}, {s}, C) with C = {channels} (the model's channels), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    elif x.dtype == torch.bool:
        x = x.to(torch.float32)
    elif not x.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or floating point (0..1), got dtype {x.dtype}")
    return x.to(device=device, dtype=dtype).contiguous()


DEFAULT_TRAVERSAL = tuple(np.linspace(-3.0, 3.0, 9).tolist())  # about the prior's +-3 standard deviations


def as_codes(z, latent_dim: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``z`` (a tensor, NumPy array or sequence of numbers) as a float batch of codes (..., latent_dim) on
    ``device`` in ``dtype``; one code (latent_dim,) becomes a batch of one."""
    z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z)
    if not (z.is_floating_point() or z.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"z must be numbers, got dtype {z.dtype}")
    if z.dim() == 0 or z.shape[-1] != latent_dim:
        raise ValueError(f"z must end in the model's {latent_dim} latent dimensions, got shape {tuple(z.shape)}")
    return (z[None] if z.dim() == 1 else z).to(device=device, dtype=dtype)
