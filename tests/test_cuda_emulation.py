"""The CUDA kernels, compiled as host C++ under csrc/cuda/cuda_emulation.h (blocks and threads as
cooperative fibers, barriers and shared memory as on the device), against the CPU op on every
path. This is how indexing, grid-stride and workspace bugs are caught before a GPU runs the code.

The emulated module is built once per session with torch.utils.cpp_extension (about a minute on
two cores) from the same regularizer_launch.h glue the CUDA backend uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import make_inputs, random_spd

import chyvae_ext  # noqa: F401  (registers the CPU op)

ROOT = Path(__file__).resolve().parents[1]
OPS = torch.ops.chyvae_ext


@pytest.fixture(scope="module")
def emu():
    from torch.utils.cpp_extension import load

    build = ROOT / "build" / "cuda_emulation"
    build.mkdir(parents=True, exist_ok=True)
    return load(
        name="chyvae_cuda_emulation",
        sources=[str(ROOT / "tests" / "emulation" / "emu_module.cpp"), str(ROOT / "csrc" / "regularizer_host.cpp")],
        extra_cflags=["-O1", "-std=c++17"],
        build_directory=str(build),
        verbose=bool(os.environ.get("CHYVAE_EXT_VERBOSE_BUILD")),
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = float(b[torch.isfinite(b)].norm()) if b.numel() else 0.0
    return float((a - b).norm()) / max(scale, 1e-300) if b.numel() else 0.0


def case(d, k, prior, dtype, n=131, seed=0, nan_above=False):
    mu, L, z = make_inputs(n, d, k, dtype=dtype, seed=seed)
    if k == 1 and seed % 2 == 0:
        z = z[:, 0]  # (N, d) as well as (N, 1, d)
    if nan_above:
        L = L.clone()
        iu = torch.triu_indices(d, d, 1)
        L[:, iu[0], iu[1]] = float("nan")
    if prior == "full":
        cov = random_spd(d, seed=d)
        chol = torch.linalg.cholesky(cov)
        prec, scale, logdet = torch.cholesky_inverse(chol), 1.0, float(2 * chol.diagonal().log().sum())
    else:
        prec, scale, logdet = None, (0.7 if prior == "scalar" else 1.0), 0.0
    return mu, L, z, prec, scale, logdet


PATHS = [
    # (d, K, prior): the d = 10 fast path (d fixed at compile time), d = 32 and a run-time d on the
    # fast path, K = 3 on the general path, scalar and full priors.
    (10, 1, "identity"), (32, 1, "identity"), (7, 1, "scalar"), (10, 3, "identity"), (5, 3, "scalar"),
    (6, 1, "full"), (4, 3, "full"),
]


VARIANTS = {"thread": 1, "warp": 2, "unrolled": 3}


@pytest.fixture(params=list(VARIANTS))
def variant(request, emu):
    # The K = 1 isotropic path has three layouts (a thread per datapoint; a warp per datapoint, row
    # after row or with the rows unrolled in registers); the others one.
    emu.set_variant(VARIANTS[request.param])
    yield request.param
    emu.set_variant(0)


# Every path with the thread-per-datapoint layout; the K = 1 isotropic ones with the warp layouts too.
LAYOUTS = [(*path, "thread") for path in PATHS] + [
    (*p, layout) for layout in ("warp", "unrolled") for p in PATHS if p[1] == 1 and p[2] != "full"
]


@pytest.mark.parametrize(("d", "k", "prior", "layout"), LAYOUTS)
@pytest.mark.parametrize("constants", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_emulated_kernels_match_cpu_op(emu, d, k, prior, layout, constants, dtype):
    emu.set_variant(VARIANTS[layout])
    try:
        check_paths(emu, d, k, prior, constants, dtype, n=131 if layout == "thread" else 37)
    finally:
        emu.set_variant(0)


@pytest.mark.parametrize(("d", "k", "prior", "layout"), [
    (10, 1, "identity", "warp"), (10, 1, "identity", "thread"), (32, 1, "identity", "warp"), (7, 1, "scalar", "warp"),
    (10, 3, "identity", "thread"), (4, 3, "full", "thread"), (10, 1, "identity", "unrolled"),
    (32, 1, "identity", "unrolled"), (7, 1, "scalar", "unrolled"),
])
@pytest.mark.parametrize("nu_dtype", [torch.float64, torch.float32])
def test_emulated_kernels_per_datapoint_nu_match_cpu_op(emu, d, k, prior, layout, nu_dtype):
    # nu (N,), runs of equal values as an ensemble lays them out: each thread or warp computes its
    # datapoint's scalars (recomputing when nu changes), against the CPU op's per-run scalars.
    emu.set_variant(VARIANTS[layout])
    try:
        check_paths(emu, d, k, prior, True, torch.float64, n=61, nu_rows=nu_dtype)
    finally:
        emu.set_variant(0)


def check_paths(emu, d, k, prior, constants, dtype, n, nu_rows=None):
    mu, L, z, prec, scale, logdet = case(d, k, prior, dtype, n=n, nan_above=(d == 10))
    nu = torch.tensor(d + 3.5, dtype=torch.float64)
    if nu_rows is not None:
        values = torch.tensor([d - 0.5, d + 1.5, d + 7.0, 200.0], dtype=nu_rows)
        nu = values.repeat_interleave((n + 3) // 4)[:n]
    args = (mu, L, z, nu, prec, scale, logdet, constants)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    out_cpu, saved_cpu = OPS.regularizer_forward(*args)
    grad = torch.randn(len(mu), dtype=dtype, generator=torch.Generator().manual_seed(1))
    g_cpu = OPS.regularizer_backward(grad, *args, saved_cpu)
    # A grid of whole blocks and one block striding over the batch; the scalars computed in the
    # kernels from nu (a GPU nu) and given by the host (a CPU nu).
    for max_blocks, host in ((64, False), (1, False), (64, True)):
        out, saved = emu.forward(*args, True, max_blocks, host)
        assert out.shape == out_cpu.shape and saved.shape == saved_cpu.shape
        assert rel(out, out_cpu) <= tol
        assert rel(saved, saved_cpu) <= tol
        assert rel(emu.forward(*args, False, max_blocks, host)[0], out_cpu) <= tol  # no saved state
        for with_saved in (saved, None):  # the saved-state and the recomputing backward
            got = emu.backward(grad, *args, with_saved, max_blocks, host)
            for name, a, b in zip(("mu", "L", "z", "nu"), got, g_cpu, strict=True):
                assert torch.isfinite(a).all(), name
                assert rel(a, b) <= tol, (name, max_blocks, host, with_saved is None)


def test_emulated_kernels_empty_batch(emu):
    mu, L, z, prec, scale, logdet = case(4, 1, "identity", torch.float64, n=0)
    nu = torch.tensor(8.0, dtype=torch.float64)
    out, saved = emu.forward(mu, L, z, nu, None, 1.0, 0.0, True, True, 64, False)
    assert out.shape == (0,) and saved.shape == (0, 10)
    g = emu.backward(torch.zeros(0, dtype=torch.float64), mu, L, z, nu, None, 1.0, 0.0, True, saved, 64, False)
    assert [t.shape for t in g] == [(0, 4), (0, 4, 4), (0, 4), (0,)]


@pytest.mark.parametrize("n", [1, 3, 4, 5, 127, 128, 129, 300])
def test_emulated_kernels_batch_not_a_multiple_of_the_block(emu, variant, n):
    # A block is 128 threads: 128 datapoints a thread each, or 4 a warp each.
    assert emu.threads_per_block() == 128
    mu, L, z, prec, scale, logdet = case(10, 1, "identity", torch.float64, n=n, seed=1)
    nu = torch.tensor(200.0, dtype=torch.float64)
    args = (mu, L, z, nu, None, 1.0, 0.0, True)
    for max_blocks in (1, 2, 1000):
        out, _ = emu.forward(*args, True, max_blocks, False)
        assert rel(out, OPS.regularizer(*args)) <= 1e-12


def test_emulated_kernels_read_nu_in_float32_and_its_memory(emu):
    # nu is read from the tensor's memory by the kernel (float32 or float64), so a new value in the
    # same tensor gives the new result: what a captured CUDA graph relies on.
    mu, L, z, _, _, _ = case(10, 1, "identity", torch.float64, n=20)
    for dtype in (torch.float32, torch.float64):
        nu = torch.tensor(50.0, dtype=dtype)
        for value in (50.0, 12.25):
            nu.fill_(value)
            out, _ = emu.forward(mu, L, z, nu, None, 1.0, 0.0, True, False, 4, False)
            ref = OPS.regularizer(mu, L, z, torch.tensor(value, dtype=torch.float64), None, 1.0, 0.0, True)
            assert rel(out, ref) <= 1e-10


def test_emulated_block_parameters_use_barriers_only_for_a_device_nu(emu):
    # From nu in device memory every block computes the call's scalars through shared memory (two
    # barriers); with the host's scalars (a CPU nu) no block waits at all.
    mu, L, z, _, _, _ = case(32, 1, "identity", torch.float64, n=256)
    nu = torch.tensor(40.0, dtype=torch.float64)
    before = emu.barriers()
    emu.forward(mu, L, z, nu, None, 1.0, 0.0, True, False, 2, False)
    assert emu.barriers() - before == 2 * 2
    before = emu.barriers()
    emu.forward(mu, L, z, nu, None, 1.0, 0.0, True, False, 2, True)
    assert emu.barriers() == before


@pytest.mark.parametrize(("layout", "d", "shuffles"), [
    ("warp", 32, 32 * (1 + 5)),  # a broadcast and a 5-step sum a row
    ("unrolled", 32, 32 + 31),  # a broadcast a row, then one reduce-scatter for all the row sums
    ("unrolled", 7, 7 + 31),
])
def test_emulated_warp_kernels_backward_shuffle_count(emu, layout, d, shuffles):
    # Shuffles a datapoint in the backward (two warp barriers each), so the emulator really ran that
    # layout's kernel: 4 datapoints.
    mu, L, z, _, _, _ = case(d, 1, "identity", torch.float64, n=4)
    nu = torch.tensor(40.0, dtype=torch.float64)
    emu.set_variant(VARIANTS[layout])
    try:
        _, saved = emu.forward(mu, L, z, nu, None, 1.0, 0.0, True, True, 1, True)
        before = emu.warp_barriers()
        emu.backward(torch.ones(4, dtype=torch.float64), mu, L, z, nu, None, 1.0, 0.0, True, saved, 1, True)
        assert emu.warp_barriers() - before == 4 * shuffles * 2
    finally:
        emu.set_variant(0)
