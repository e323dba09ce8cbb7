"""Small CUDA calls of every kernel path (for compute-sanitizer): d = 10 and 32 fast paths, a
run-time d, K = 3, a full prior, float32 and float64, forward and backward (saved and recomputed),
the K = 1 isotropic paths with a thread and with a warp per datapoint.
Compares each with the CPU op and exits non-zero on a mismatch."""

from __future__ import annotations

import sys

import torch

import chyvae_ext
from chyvae_ext import chyvae_regularizer


def inputs(n, d, k, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    a = torch.randn(n, d, d, generator=g, dtype=torch.float64) * 0.3
    L = torch.tril(a, -1) + torch.diag_embed(torch.nn.functional.softplus(a.diagonal(dim1=-2, dim2=-1)) + 0.1)
    z = torch.randn(n, k, d, generator=g, dtype=torch.float64) if k > 1 else torch.randn(n, d, generator=g,
                                                                                         dtype=torch.float64)
    return [t.to(dtype) for t in (mu, L, z)]


def main() -> int:
    worst = 0.0
    cases = [(d, k, full, v) for d, k, full in ((10, 1, False), (32, 1, False), (5, 1, False), (7, 3, False),
                                               (6, 1, True), (4, 2, True))
             for v in (("thread", "warp", "unrolled") if k == 1 and not full else ("auto",))]
    for dtype in (torch.float32, torch.float64):
        for d, k, full, variant in cases:
            chyvae_ext._C.set_cuda_kernel_variant(variant)
            n = 131  # not a multiple of the block
            cpu = inputs(n, d, k, dtype, seed=d * 10 + k)
            cov = None
            if full:
                b = torch.randn(d, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
                cov = (b @ b.T / d + torch.eye(d, dtype=torch.float64)).to(dtype)
            gpu = [t.cuda().requires_grad_() for t in cpu]
            cpu = [t.requires_grad_() for t in cpu]
            nu = float(d + 4)
            out_g = chyvae_regularizer(*gpu, nu, None if cov is None else cov.cuda(), impl="fused")
            out_c = chyvae_regularizer(*cpu, nu, cov, impl="fused")
            grads_g = torch.autograd.grad(out_g.sum(), gpu)
            grads_c = torch.autograd.grad(out_c.sum(), cpu)
            for a, b in zip((out_g, *grads_g), (out_c, *grads_c), strict=True):
                err = float((a.detach().cpu().double() - b.detach().double()).norm() / b.detach().double().norm())
                worst = max(worst, err)
            with torch.no_grad():  # the forward that saves nothing
                chyvae_regularizer(*gpu, nu, None if cov is None else cov.cuda(), impl="fused")
    chyvae_ext._C.set_cuda_kernel_variant("auto")
    torch.cuda.synchronize()
    print("cuda_smoke: every path ran (the three layouts of the K = 1 isotropic kernels); "
          f"worst relative difference to the CPU op {worst:.3g}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    print(chyvae_ext.build_info())
    sys.exit(main())
