"""The CUDA op against the CPU op and the float64 reference; runs only where a GPU is present."""

import pytest
import torch
from helpers import make_inputs, random_spd, requires_cuda

import chyvae_ext
from chyvae_ext import chyvae_regularizer, chyvae_regularizer_ref

pytestmark = [
    requires_cuda,
    pytest.mark.skipif(not chyvae_ext.build_info()["cuda"], reason="built without CUDA kernels"),
]


def rel(a, b):
    return float(((a.double().cpu() - b.double().cpu()).abs() / b.double().cpu().abs()).max())


@pytest.mark.parametrize(("dtype", "d", "tol"), [
    (torch.float64, 10, 1e-10), (torch.float64, 32, 1e-10), (torch.float32, 10, 1e-5), (torch.float32, 32, 1e-4),
])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("prior_kind", ["identity", "full"])
def test_cuda_matches_cpu_and_reference(dtype, d, tol, k, prior_kind):
    cov = None if prior_kind == "identity" else random_spd(d, seed=d, dtype=dtype)
    for seed in range(3):
        mu, L, z = make_inputs(300, d, k, seed=seed, dtype=dtype)
        args = [t.cuda().requires_grad_() for t in (mu, L, z)]
        nu = torch.tensor(d + 5.0, dtype=torch.float64, requires_grad=True)
        out = chyvae_regularizer(*args, nu, None if cov is None else cov.cuda(), impl="fused")
        assert out.is_cuda and out.dtype == dtype
        cpu_args = [t.clone().requires_grad_() for t in (mu, L, z)]
        nu_cpu = nu.detach().clone().requires_grad_()
        cpu = chyvae_regularizer(*cpu_args, nu_cpu, cov, impl="fused")
        ref = chyvae_regularizer_ref(mu.double(), L.double(), z.double(), d + 5.0,
                                     None if cov is None else cov.double())
        assert rel(out, ref) <= tol and rel(out, cpu) <= tol
        w = torch.randn(300, dtype=dtype)
        g_cuda = torch.autograd.grad((out * w.cuda()).sum(), [*args, nu])
        g_cpu = torch.autograd.grad((cpu * w).sum(), [*cpu_args, nu_cpu])
        for a, b in zip(g_cuda, g_cpu, strict=True):
            assert float((a.double().cpu() - b.double()).norm() / b.double().norm()) <= tol


def test_cuda_empty_batch_and_noncontiguous():
    mu, L, z = (t.cuda() for t in make_inputs(0, 4, 2))
    assert chyvae_regularizer(mu, L, z, 6.0).shape == (0,)
    mu, L, z = make_inputs(50, 4, seed=3)
    expected = chyvae_regularizer(mu, L, z, 6.0)
    got = chyvae_regularizer(mu.cuda().T.contiguous().T, L.cuda().mT.contiguous().mT, z.cuda(), 6.0)
    assert rel(got, expected) <= 1e-12


def test_cuda_opcheck():
    mu, L, z = (t.cuda() for t in make_inputs(8, 5, 2, dtype=torch.float32))
    nu = torch.tensor(9.0, dtype=torch.float64)
    ops = torch.ops.chyvae_ext
    for z_in in (z, z[:, :1]):  # K = 2 (general path) and K = 1 (fast path, with saved state)
        args = (mu, L, z_in, nu, None, 1.0, 0.0, True)
        torch.library.opcheck(ops.regularizer, args)
        torch.library.opcheck(ops.regularizer_forward, args)
        _, saved = ops.regularizer_forward(*args)
        grad = torch.randn(8, device="cuda")
        torch.library.opcheck(ops.regularizer_backward, (grad, *args))
        torch.library.opcheck(ops.regularizer_backward, (grad, *args, saved))
