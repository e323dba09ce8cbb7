"""Input generators shared by the tests."""

import pytest
import torch


def make_inputs(n, d, k=1, *, dtype=torch.float64, device="cpu", seed=0, diag_floor=1e-4):
    """Random mu, L (lower-triangular, positive diagonal as the encoder makes it) and z (N, K, d)."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=gen, dtype=torch.float64)
    a = torch.randn(n, d, d, generator=gen, dtype=torch.float64) * 0.5
    diag = torch.nn.functional.softplus(torch.diagonal(a, dim1=-2, dim2=-1)) + diag_floor
    L = torch.tril(a, -1) + torch.diag_embed(diag)
    z = mu[:, None, :] + (L[:, None] @ torch.randn(n, k, d, 1, generator=gen, dtype=torch.float64)).squeeze(-1)
    return tuple(t.to(dtype=dtype, device=device) for t in (mu, L, z))


def random_spd(d, *, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return (b @ b.T / d + 0.5 * torch.eye(d, dtype=torch.float64)).to(dtype)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
