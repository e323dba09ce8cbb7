"""The fused regulariser against the reference, scipy, finite differences and opcheck."""

import math
from functools import partial

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from helpers import make_inputs, random_spd

from chyvae_ext import chyvae_regularizer, chyvae_regularizer_ref
from chyvae_ext.reference import multivariate_digamma


def rel_err(a, b):
    return float(((a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-300)).max())


def prior(kind, d):
    return {"identity": None, "scaled": 2.5, "full": random_spd(d, seed=d)}[kind]


@pytest.mark.parametrize("d", [1, 3, 10, 32])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("prior_kind", ["identity", "scaled", "full"])
@pytest.mark.parametrize("constants", [True, False])
def test_fused_matches_reference_float64(d, k, prior_kind, constants):
    cov = prior(prior_kind, d)
    for i, nu in enumerate([d - 0.5, d + 2.0, 50.0, 200.0]):
        mu, L, z = make_inputs(17, d, k, seed=100 * d + 10 * k + i)
        fused = chyvae_regularizer(mu, L, z, nu, cov, constants=constants, impl="fused")
        ref = chyvae_regularizer_ref(mu, L, z, nu, cov, constants=constants)
        assert fused.dtype == torch.float64 and fused.shape == (17,)
        assert rel_err(fused, ref) <= 1e-10


@pytest.mark.parametrize(("d", "tol"), [(10, 1e-5), (32, 1e-4)])
@pytest.mark.parametrize("nu", [None, 200.0])
def test_fused_float32_against_float64_reference(d, tol, nu):
    nu = d + 2.0 if nu is None else nu
    for seed in range(3):
        mu, L, z = make_inputs(256, d, seed=seed, dtype=torch.float32)
        fused = chyvae_regularizer(mu, L, z, nu, impl="fused")
        ref = chyvae_regularizer_ref(mu.double(), L.double(), z.double(), nu)
        assert fused.dtype == torch.float32
        assert rel_err(fused, ref) <= tol


def test_float32_gradients_against_float64_reference():
    mu, L, z = make_inputs(64, 10, seed=5, dtype=torch.float32)
    grads = []
    for dtype in (torch.float32, torch.float64):
        args = [t.to(dtype).requires_grad_() for t in (mu, L, z)]
        out = chyvae_regularizer(*args, 12.0, impl="fused" if dtype == torch.float32 else "reference")
        grads.append(torch.autograd.grad(out.sum(), args))
    for g32, g64 in zip(*grads, strict=True):
        assert g32.dtype == torch.float32
        assert float((g32.double() - g64).norm() / g64.norm()) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_half_inputs_computed_in_float32(dtype, impl):
    mu, L, z = (t.to(dtype) for t in make_inputs(8, 4, seed=3))
    out = chyvae_regularizer(mu, L, z, 6.0, impl=impl)
    assert out.dtype == dtype
    expected = chyvae_regularizer_ref(mu.double(), L.double(), z.double(), 6.0)
    assert torch.allclose(out.double(), expected, rtol=1e-2 if dtype == torch.bfloat16 else 2e-3)


def gradcheck_case(d, k, nu, cov, seed, contiguous):
    mu, L, z = make_inputs(4, d, k, seed=seed, diag_floor=0.3)
    if not contiguous:
        # Same values, non-contiguous layouts: transposed storage and strided slices.
        L = L.mT.contiguous().mT
        mu = torch.stack([mu, mu], dim=-1)[..., 0]
        z = torch.stack([z, z], dim=-1)[..., 1]
        assert not (L.is_contiguous() or mu.is_contiguous() or z.is_contiguous())
    nu_t = torch.tensor(nu, dtype=torch.float64, requires_grad=True)
    args = tuple(t.detach().requires_grad_() for t in (mu, L, z)) + (nu_t,)

    def fn(mu, L, z, nu):
        return chyvae_regularizer(mu, torch.tril(L), z, nu, cov, impl="fused")

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize(("d", "k", "nu", "prior_kind"), [
    (3, 1, 2.5, "identity"),     # nu - d - 1 < 1: Psi does not move with nu
    (3, 1, 9.0, "identity"),     # Psi = (nu - d - 1) I moves with nu
    (4, 2, 8.5, "scaled"),
    (4, 3, 30.0, "full"),
])
def test_gradcheck(seed, contiguous, d, k, nu, prior_kind):
    gradcheck_case(d, k, nu, prior(prior_kind, d), seed, contiguous)


@pytest.mark.parametrize(("k", "prior_kind", "nu"), [(1, "identity", 12.0), (2, "full", 40.0), (1, "scaled", 9.5)])
def test_gradients_match_reference(k, prior_kind, nu):
    d = 6
    cov = prior(prior_kind, d)
    mu, L, z = make_inputs(32, d, k, seed=11)
    weights = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = []
    for impl in ("fused", "reference"):
        args = [t.clone().requires_grad_() for t in (mu, L, z)]
        nu_t = torch.tensor(nu, dtype=torch.float64, requires_grad=True)
        out = chyvae_regularizer(*args, nu_t, cov, impl=impl)
        grads.append(torch.autograd.grad((out * weights).sum(), [*args, nu_t]))
    for name, a, b in zip(("mu", "L", "z", "nu"), *grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), name
    assert torch.count_nonzero(torch.triu(grads[0][1], 1)) == 0  # the upper triangle is never read


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("d", "nu"), [(10, 200.0), (10, 11.5), (32, 34.5), (32, 300.0)])
def test_specialised_fast_paths_match_reference(d, nu, dtype):
    """The K = 1 isotropic path at the paper's sizes (d = 10 runs as whole quads with constant masks
    on the CPU, d = 32 at run-time d): values and every gradient, with NaN and inf above the
    diagonal that must never be read, and with the saved forward state and without it."""
    mu, L, z = make_inputs(37, d, seed=d, dtype=torch.float64)
    z = z[:, 0]
    garbage = torch.triu(torch.full((d, d), float("nan"), dtype=torch.float64), 1)
    garbage[0, -1] = float("inf")
    L_dirty = torch.where(torch.triu(torch.ones(d, d, dtype=torch.bool), 1), garbage, L)
    weights = torch.randn(37, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    results = []
    for impl, lt in (("fused", L_dirty), ("reference", L)):
        cast = dtype if impl == "fused" else torch.float64
        args = [t.to(cast).requires_grad_() for t in (mu, lt, z)]
        nu_t = torch.tensor(nu, dtype=torch.float64, requires_grad=True)
        out = chyvae_regularizer(*args, nu_t, impl=impl)
        results.append((out, *torch.autograd.grad((out * weights.to(cast)).sum(), [*args, nu_t])))
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for name, a, b in zip(("R", "mu", "L", "z", "nu"), *results, strict=True):
        assert torch.isfinite(a).all(), name
        assert float((a.double() - b).norm() / b.norm()) <= tol, name
    assert torch.count_nonzero(torch.triu(results[0][2], 1)) == 0
    ops = torch.ops.chyvae_ext
    args = (mu.to(dtype), L_dirty.to(dtype), z.to(dtype), torch.tensor(nu, dtype=torch.float64), None, 1.0, 0.0, True)
    _, saved = ops.regularizer_forward(*args)
    grad = weights.to(dtype)
    for a, b in zip(ops.regularizer_backward(grad, *args, saved), ops.regularizer_backward(grad, *args), strict=True):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-13) if dtype == torch.float64 else torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_nu_gradient_reaches_a_float32_parameter():
    mu, L, z = make_inputs(5, 3, seed=1)
    nu = torch.tensor(7.0, dtype=torch.float32, requires_grad=True)
    chyvae_regularizer(mu, L, z, nu).sum().backward()
    nu64 = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    chyvae_regularizer_ref(mu, L, z, nu64).sum().backward()
    assert nu.grad.dtype == torch.float32
    assert math.isclose(float(nu.grad), float(nu64.grad), rel_tol=1e-6)


def scipy_constant(nu, d, k, log_det_psi):
    nup = nu + k
    psi_d = sum(scipy.special.digamma(nup / 2 + (1 - i) / 2) for i in range(1, d + 1))
    return (nu / 2 * log_det_psi + nup * d / 2 + d / 2 + d / 2 * math.log(2)
            + scipy.special.multigammaln(nup / 2, d) - scipy.special.multigammaln(nu / 2, d)
            + (1 - k) / 2 * psi_d)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize(("d", "k", "nu", "prior_kind"), [
    (10, 1, 12.0, "identity"), (10, 2, 200.0, "scaled"), (5, 3, 4.5, "full"), (32, 1, 34.0, "identity"),
])
def test_constant_term_against_scipy(impl, d, k, nu, prior_kind):
    cov = prior(prior_kind, d)
    sigma0 = np.eye(d) * (1.0 if cov is None else cov) if not torch.is_tensor(cov) else cov.numpy()
    psi = max(nu - d - 1, 1) * sigma0
    expected = scipy_constant(nu, d, k, np.linalg.slogdet(psi)[1])
    mu, L, z = make_inputs(6, d, k, seed=4)
    with_c = chyvae_regularizer(mu, L, z, nu, cov, impl=impl)
    without = chyvae_regularizer(mu, L, z, nu, cov, constants=False, impl=impl)
    assert np.allclose((with_c - without).numpy(), expected, rtol=1e-11, atol=1e-9)


def test_multivariate_digamma_against_scipy():
    for a, d in [(0.7, 1), (5.25, 4), (101.0, 32)]:
        expected = sum(scipy.special.digamma(a + (1 - i) / 2) for i in range(1, d + 1))
        got = multivariate_digamma(torch.tensor(a, dtype=torch.float64), d)
        assert math.isclose(float(got), expected, rel_tol=1e-12)


@pytest.mark.parametrize(("impl", "jitter"), [("auto", 0.0), ("fused", 0.5), ("reference", 0.5)])
def test_closed_form_against_monte_carlo_with_scipy_densities(impl, jitter):
    """R equals E[log p(z|S) + log p(S) - log q(z|x) - log q(S|Z)], sampled with scipy.stats; with a
    posterior jitter, q(z|x) = N(mu, L L^T + jitter * I) (a jitter large enough to move R by nats)."""
    d, k, nu = 3, 2, 7.0
    mu, L, z = make_inputs(1, d, k, seed=8, diag_floor=0.3)
    cov0 = random_spd(d, seed=3)
    call = chyvae_regularizer_ref if impl == "reference" else partial(chyvae_regularizer, impl=impl)
    r = float(call(mu, L, z, nu, cov0, posterior_jitter=jitter)[0])
    psi = max(nu - d - 1, 1) * cov0.numpy()
    zm = z[0].numpy().T
    psi_post, nu_post = psi + zm @ zm.T, nu + k
    c = (L[0] @ L[0].T).numpy() + jitter * np.eye(d)
    rng = np.random.default_rng(0)
    n = 40000
    sigmas = scipy.stats.invwishart(df=nu_post, scale=psi_post).rvs(size=n, random_state=rng)
    zs = rng.multivariate_normal(mu[0].numpy(), c, size=n)
    chol = np.linalg.cholesky(sigmas)
    sol = np.linalg.solve(chol, zs[:, :, None])[..., 0]
    log_pz = -0.5 * (sol**2).sum(-1) - np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(-1) - d / 2 * math.log(2 * math.pi)
    log_prior = scipy.stats.invwishart(df=nu, scale=psi).logpdf(sigmas.transpose(1, 2, 0))
    log_post = scipy.stats.invwishart(df=nu_post, scale=psi_post).logpdf(sigmas.transpose(1, 2, 0))
    entropy = scipy.stats.multivariate_normal(mu[0].numpy(), c).entropy()
    samples = log_pz + log_prior - log_post + entropy
    estimate, stderr = samples.mean(), samples.std() / math.sqrt(n)
    assert stderr < 0.08  # resolves a mistake of a third of a nat; c alone is 29 nats here
    assert abs(estimate - r) < 4 * stderr, (estimate, r, stderr)
    if jitter:  # the jitter matters here: R without it is far from this estimate
        assert abs(estimate - float(chyvae_regularizer_ref(mu, L, z, nu, cov0)[0])) > 20 * stderr


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_empty_batch(impl):
    mu, L, z = (t.requires_grad_() for t in make_inputs(0, 5, 2))
    nu = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
    out = chyvae_regularizer(mu, L, z, nu, impl=impl)
    assert out.shape == (0,)
    out.sum().backward()
    assert mu.grad.shape == (0, 5) and L.grad.shape == (0, 5, 5) and z.grad.shape == (0, 2, 5)
    assert float(nu.grad) == 0.0


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bad_rows_stay_in_their_row(impl):
    mu, L, z = make_inputs(6, 4, seed=9)
    clean = chyvae_regularizer(mu, L, z, 7.0, impl=impl)
    mu, L, z = mu.clone(), L.clone(), z.clone()
    mu[1, 2] = float("nan")
    L[3, 1, 1] = -0.5
    z[4, 0] = float("inf")
    L[5, 2, 2] = 0.0
    out = chyvae_regularizer(mu, L, z, 7.0, impl=impl)
    bad = torch.tensor([False, True, False, True, True, True])
    assert not torch.isfinite(out[bad]).any()
    assert torch.equal(out[~bad], clean[~bad])


def test_opcheck_forward_and_backward():
    ops = torch.ops.chyvae_ext
    cov = random_spd(4, seed=1)
    prec = torch.cholesky_inverse(torch.linalg.cholesky(cov))
    logdet = float(torch.logdet(cov))
    for k, prior_args in [(1, (None, 1.0, 0.0)), (2, (prec, 1.0, logdet)), (3, (None, 2.0, 0.0))]:
        for dtype in (torch.float32, torch.float64):
            mu, L, z = make_inputs(5, 4, k, seed=k, dtype=dtype)
            nu = torch.tensor(9.0, dtype=torch.float64)
            args = (mu, L, z, nu, *prior_args, True)
            torch.library.opcheck(ops.regularizer, args)
            torch.library.opcheck(ops.regularizer_forward, args)
            grad_args = tuple(t.clone().requires_grad_() for t in (mu, L, z))
            torch.library.opcheck(ops.regularizer, (*grad_args, nu, *prior_args, True))
            _, saved = ops.regularizer_forward(*args)
            grad = torch.randn(5, dtype=dtype)
            torch.library.opcheck(ops.regularizer_backward, (grad, *args))
            torch.library.opcheck(ops.regularizer_backward, (grad, *args, saved))
            mu0, L0, z0 = make_inputs(0, 4, k, dtype=dtype)
            torch.library.opcheck(ops.regularizer_backward, (grad[:0], mu0, L0, z0, nu, *prior_args, False))


@pytest.mark.parametrize("z_rank", [2, 3])
def test_backward_with_and_without_saved_state_agree(z_rank):
    """The fast path's backward reuses w = L^T u from the forward; recomputing it gives the same."""
    ops = torch.ops.chyvae_ext
    mu, L, z = make_inputs(40, 7, 1, seed=21)
    z = z[:, 0] if z_rank == 2 else z
    nu = torch.tensor(15.0, dtype=torch.float64)
    out, saved = ops.regularizer_forward(mu, L, z, nu, None, 1.0, 0.0, True)
    assert saved.shape == (40, 7 + 6) and saved.dtype == torch.float64
    assert torch.equal(out, ops.regularizer(mu, L, z, nu, None, 1.0, 0.0, True))
    grad = torch.randn(40, dtype=torch.float64).expand(3, 40)[1]  # strided, like autograd's
    with_saved = ops.regularizer_backward(grad, mu, L, z, nu, None, 1.0, 0.0, True, saved)
    recomputed = ops.regularizer_backward(grad.contiguous(), mu, L, z, nu, None, 1.0, 0.0, True)
    for a, b in zip(with_saved, recomputed, strict=True):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-13)
    # Both against the reference's gradients (the two paths share no code for w and the sums).
    leaves = [t.clone().requires_grad_() for t in (mu, L, z)]
    nu_leaf = nu.clone().requires_grad_()
    ref = chyvae_regularizer_ref(*leaves, nu_leaf)
    expected = torch.autograd.grad((ref * grad).sum(), [*leaves, nu_leaf])
    for got in (with_saved, recomputed):
        g_mu, g_l, g_z, g_nu = got
        for a, b in zip((g_mu, torch.tril(g_l), g_z, g_nu.sum()), expected, strict=True):
            assert float((a - b).norm() / b.norm()) <= 1e-10
    _, general = ops.regularizer_forward(mu, L, z, nu, torch.eye(7, dtype=torch.float64), 1.0, 0.0, True)
    assert general.shape == (40, 0)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    mu, L, z = make_inputs(16, 5, seed=12, dtype=torch.float32)

    def loss(mu, L, z):
        return -chyvae_regularizer(mu, L, z, 9.0, impl="fused").mean()

    compiled = torch.compile(loss, fullgraph=True, backend=backend)
    results = []
    for fn in (loss, compiled):
        args = [t.clone().requires_grad_() for t in (mu, L, z)]
        value = fn(*args)
        results.append((value, *torch.autograd.grad(value, args)))
    for eager, comp in zip(*results, strict=True):
        assert torch.allclose(eager, comp, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("d", [5, 10, 32])
def test_tiny_cholesky_diagonals(d):
    """log|C| is summed as logs of sixteen-entry products; products that underflow fall back to
    single logs. With a tiny diagonal, log|C| dominates R, so a wrong fallback would show."""
    mu, _, z = make_inputs(4, d, seed=30)
    diag = torch.tensor([1e-80, 1e-5, 1e-100, 3e-2], dtype=torch.float64)  # one scale per datapoint
    pattern = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)[torch.arange(d) % 3]
    L = torch.diag_embed(diag[:, None] * pattern[None, :])
    fused = chyvae_regularizer(mu, L, z, d + 3.0, impl="fused")
    ref = chyvae_regularizer_ref(mu, L, z, d + 3.0)
    assert torch.isfinite(ref).all()
    assert float(ref[2]) < -100 * d  # sum log L_ii ~ -230 d: the term under test dominates
    assert rel_err(fused, ref) <= 1e-12


def test_autograd_node_behaves_like_torchs_own():
    """The hand-written backward node: named, frees what it saved after a backward (a second one
    needs retain_graph), honours saved-tensor hooks, computes only the gradients asked for, and
    refuses forward-mode AD with a message instead of a silent zero tangent."""
    mu, L, z = make_inputs(6, 4, seed=4)
    z = z[:, 0]
    leaves = [t.clone().requires_grad_() for t in (mu, L, z)]
    out = chyvae_regularizer(*leaves, 9.0, impl="fused")
    assert "RegularizerBackward" in out.grad_fn.name()
    first = torch.autograd.grad(out.sum(), leaves, retain_graph=True)
    again = torch.autograd.grad(out.sum(), leaves)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(out.sum(), leaves)

    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.shape) or t.clone(), lambda t: t):
        out = chyvae_regularizer(*leaves, 9.0, impl="fused")
    assert len(packed) == 5  # mu, L, z, nu and the forward's saved state (no prior_prec)
    hooked = torch.autograd.grad(out.sum(), leaves)
    assert all(torch.equal(a, b) for a, b in zip(first, hooked, strict=True))

    only_l = L.clone().requires_grad_()
    (g_l,) = torch.autograd.grad(chyvae_regularizer(mu, only_l, z, 9.0, impl="fused").sum(), [only_l])
    assert torch.equal(g_l, first[1])

    import torch.autograd.forward_ad as fwad

    with fwad.dual_level(), pytest.raises(RuntimeError, match="does not support forward-mode"):
        chyvae_regularizer(fwad.make_dual(mu, torch.ones_like(mu)), L, z, 9.0, impl="fused")


@pytest.mark.parametrize("nu", [1e5, 1e7, 1e9])
def test_float32_reference_at_large_nu_matches_float64(nu):
    """The reference computes in float64: float32 inputs at a large nu give float64's R (it used to be
    1.2% off at 1e5, -128 instead of -9.96 at 1e7 and of the wrong sign at 1e9)."""
    mu, L, z = make_inputs(4, 10, seed=1)
    exact = chyvae_regularizer_ref(mu, L, z, nu)
    got = chyvae_regularizer_ref(mu.float(), L.float(), z.float(), nu)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), exact, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("impl", ["fused", "reference", "auto"])
def test_nu_beyond_float64s_reach_is_refused(impl):
    mu, L, z = make_inputs(4, 10, seed=1)
    call = chyvae_regularizer_ref if impl == "reference" else partial(chyvae_regularizer, impl=impl)
    for nu in (1e13, torch.tensor(1e13, dtype=torch.float64), torch.full((4,), 1e13, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"nu must be at most 1e\+12, got 1e\+13: the regulariser's terms"):
            call(mu, L, z, nu)
    assert torch.isfinite(call(mu, L, z, 1e12)).all()
