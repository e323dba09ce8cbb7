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
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float(((a - b).abs() / b.abs()).max())


@pytest.mark.parametrize(("dtype", "d", "tol"), [
    (torch.float64, 10, 1e-10), (torch.float64, 32, 1e-10), (torch.float32, 10, 1e-5), (torch.float32, 32, 1e-4),
])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("prior_kind", ["identity", "full"])
@pytest.mark.parametrize("nu_device", ["cpu", "cuda"])  # scalars from the host, or computed in the kernels
def test_cuda_matches_cpu_and_reference(dtype, d, tol, k, prior_kind, nu_device):
    cov = None if prior_kind == "identity" else random_spd(d, seed=d, dtype=dtype)
    for seed in range(3):
        mu, L, z = make_inputs(300, d, k, seed=seed, dtype=dtype)
        args = [t.cuda().requires_grad_() for t in (mu, L, z)]
        nu = torch.tensor(d + 5.0, dtype=torch.float64, device=nu_device, requires_grad=True)
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
        assert g_cuda[3].device == nu.device
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


def test_nu_gradient_reaches_a_cuda_float32_parameter():
    mu, L, z = (t.cuda() for t in make_inputs(5, 3, seed=1))
    nu = torch.tensor(7.0, dtype=torch.float32, device="cuda", requires_grad=True)
    chyvae_regularizer(mu, L, z, nu).sum().backward()
    nu64 = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    chyvae_regularizer_ref(mu.cpu(), L.cpu(), z.cpu(), nu64).sum().backward()
    assert nu.grad.dtype == torch.float32 and nu.grad.is_cuda
    assert abs(float(nu.grad) - float(nu64.grad)) <= 1e-6 * abs(float(nu64.grad))


def test_cuda_step_has_no_host_synchronisation_and_replays_in_a_graph():
    # torch.cuda.set_sync_debug_mode("error") raises on any synchronising call: none may happen in a
    # warmed-up step of CHyVAE with learned nu and a full prior. Then the same step is captured in a
    # CUDA graph; after nu changes (an optimiser step), a replay must use the new nu.
    from chyvae_ext.models import CHyVAE

    torch.manual_seed(0)
    d = 10
    model = CHyVAE(d, 1, 32, nu=30.0, learn_nu=True, prior_cov=random_spd(d, seed=2).float(), num_samples=2).cuda()
    x = torch.rand(16, 1, 64, 64, device="cuda")
    noise = model.sample_noise(16, "cuda", torch.Generator(device="cuda").manual_seed(0))
    params = list(model.parameters())

    def step():
        out = model.loss(x, noise=noise)
        return out["loss"], torch.autograd.grad(out["loss"], params)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, grads = step()
    graph.replay()
    torch.cuda.synchronize()
    before = float(loss)
    with torch.no_grad():
        model.nu_raw.add_(1.0)  # nu changes in place, as an optimiser step would change it
    graph.replay()
    eager_loss, _ = step()
    torch.cuda.synchronize()
    assert float(loss) != before
    assert abs(float(loss) - float(eager_loss)) <= 1e-5 * abs(float(eager_loss))


@pytest.mark.parametrize("d", [10, 32])
def test_cuda_large_batch_uses_a_grid_smaller_than_the_batch(d):
    # 300,000 datapoints: more blocks than stay resident, so the grid-stride loops do the rest.
    n = 300_000 if d == 10 else 60_000
    mu, L, z = make_inputs(n, d, 1, seed=4, dtype=torch.float32)
    nu = float(d + 30)
    got = chyvae_regularizer(mu.cuda(), L.cuda(), z[:, 0].cuda(), nu, impl="fused")
    expected = chyvae_regularizer(mu, L, z[:, 0], nu, impl="fused")
    assert rel(got, expected) <= 1e-5


@pytest.mark.parametrize("variant", ["thread", "warp", "unrolled"])
@pytest.mark.parametrize("d", [5, 10, 32])
def test_cuda_every_layout_of_the_fast_path_matches_the_cpu_op(variant, d):
    mu, L, z = make_inputs(333, d, 1, seed=7)
    args = [t.cuda().requires_grad_() for t in (mu, L, z[:, 0])]
    cpu_args = [t.clone().requires_grad_() for t in (mu, L, z[:, 0])]
    chyvae_ext._C.set_cuda_kernel_variant(variant)
    try:
        out = chyvae_regularizer(*args, float(d + 4), impl="fused")
        grads = torch.autograd.grad(out.sum(), args)
    finally:
        chyvae_ext._C.set_cuda_kernel_variant("auto")
    cpu = chyvae_regularizer(*cpu_args, float(d + 4), impl="fused")
    cpu_grads = torch.autograd.grad(cpu.sum(), cpu_args)
    assert rel(out, cpu) <= 1e-10
    for a, b in zip(grads, cpu_grads, strict=True):
        assert float((a.double().cpu() - b.double()).norm() / b.double().norm()) <= 1e-10


@pytest.mark.parametrize("variant", ["thread", "warp", "unrolled"])
@pytest.mark.parametrize(("d", "k"), [(10, 1), (32, 1), (6, 3)])
def test_cuda_per_datapoint_nu_matches_the_cpu_op(variant, d, k):
    mu, L, z = make_inputs(257, d, k, seed=3)
    nu = torch.tensor([d - 0.5, d + 1.5, d + 7.0, 200.0], dtype=torch.float64).repeat_interleave(65)[:257]
    gpu = [t.cuda().requires_grad_() for t in (mu, L, z, nu)]
    cpu = [t.clone().requires_grad_() for t in (mu, L, z, nu)]
    chyvae_ext._C.set_cuda_kernel_variant(variant)
    try:
        out = chyvae_regularizer(*gpu, impl="fused")
        grads = torch.autograd.grad(out.sum(), gpu)
    finally:
        chyvae_ext._C.set_cuda_kernel_variant("auto")
    ref = chyvae_regularizer(*cpu, impl="fused")
    ref_grads = torch.autograd.grad(ref.sum(), cpu)
    assert rel(out, ref) <= 1e-10
    for a, b in zip(grads, ref_grads, strict=True):
        assert float((a.double().cpu() - b.double()).norm() / b.double().norm()) <= 1e-10


@pytest.mark.parametrize("conv_mode", ["grouped", "members"])
def test_cuda_ensemble_first_step_equals_the_lone_runs(conv_mode):
    from chyvae_ext.models import CHyVAE
    from chyvae_ext.models.ensemble import stack_models

    lones = []
    for seed, nu in enumerate((12.0, 200.0, 40.5)):
        torch.manual_seed(seed)
        lones.append(CHyVAE(10, 1, 64, nu=nu).cuda())
    ens = stack_models(lones)
    ens.encoder.conv_mode = ens.decoder.conv_mode = conv_mode
    x = (torch.rand(3, 16, 1, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(0)) > 0.5).float()
    noise = ens.sample_noise(16, "cuda", [torch.Generator("cuda").manual_seed(i) for i in range(3)])
    out = ens.loss(x, noise=noise)
    out["loss"].sum().backward()
    stacked = dict(ens.named_parameters())
    for i, lone in enumerate(lones):
        alone = lone.loss(x[i], noise=tuple(t[i] for t in noise))
        alone["loss"].backward()
        assert abs(float(out["loss"][i]) - float(alone["loss"])) <= 1e-5 * abs(float(alone["loss"]))
        for name, p in lone.named_parameters():
            g = stacked[name].grad[i]
            assert float((g - p.grad).abs().max()) <= 1e-4 * float(p.grad.abs().max()) + 1e-12, name
