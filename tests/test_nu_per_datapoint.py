"""nu of shape (N,), one value per datapoint (an ensemble's members in one call): the fused op, the
reference, autograd, opcheck and torch.compile against one call per datapoint with a scalar nu."""

import pytest
import torch
from helpers import make_inputs, random_spd

from chyvae_ext import chyvae_regularizer, chyvae_regularizer_ref


def member_nus(n: int, d: int, dtype=torch.float64) -> torch.Tensor:
    """Runs of equal values as an ensemble lays them out (member-major), and values on both sides
    of nu = d + 2, where Psi stops moving with nu."""
    values = [d - 0.5, d + 1.5, d + 7.0, 200.0]
    return torch.tensor(values, dtype=dtype).repeat_interleave((n + 3) // 4)[:n]


def per_datapoint(fn, mu, L, z, nu, cov):
    """fn called once per datapoint with that datapoint's nu as a float."""
    return torch.cat([fn(mu[i : i + 1], L[i : i + 1], z[i : i + 1], float(nu[i]), cov) for i in range(len(mu))])


def prior(kind, d):
    return {"identity": None, "scaled": 2.5, "full": random_spd(d, seed=d)}[kind]


@pytest.mark.parametrize(("d", "k"), [(10, 1), (32, 1), (7, 1), (6, 3)])
@pytest.mark.parametrize("prior_kind", ["identity", "scaled", "full"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_per_datapoint_nu_equals_one_call_per_datapoint(d, k, prior_kind, impl):
    mu, L, z = make_inputs(18, d, k, seed=d + k)
    nu = member_nus(18, d)
    cov = prior(prior_kind, d)
    got = chyvae_regularizer(mu, L, z, nu, cov, impl=impl)
    want = per_datapoint(lambda *a: chyvae_regularizer(*a, impl=impl), mu, L, z, nu, cov)
    tol = 0.0 if impl == "fused" else 1e-12  # the fused op runs the same code per datapoint
    assert float((got - want).abs().max()) <= tol * float(want.abs().max())


@pytest.mark.parametrize(("d", "k", "prior_kind"), [(10, 1, "identity"), (7, 1, "scaled"), (5, 3, "full")])
@pytest.mark.parametrize("constants", [True, False])
def test_fused_per_datapoint_nu_matches_reference(d, k, prior_kind, constants):
    mu, L, z = make_inputs(24, d, k, seed=3)
    nu = member_nus(24, d)
    cov = prior(prior_kind, d)
    fused = chyvae_regularizer(mu, L, z, nu, cov, constants=constants, impl="fused")
    ref = chyvae_regularizer_ref(mu, L, z, nu, cov, constants=constants)
    assert torch.allclose(fused, ref, rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("nu_dtype", [torch.float32, torch.float64])
def test_per_datapoint_nu_gradients_match_reference_and_scalar_calls(nu_dtype):
    d, n = 6, 20
    mu, L, z = make_inputs(n, d, 1, seed=5)
    weights = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nu0 = member_nus(n, d, nu_dtype)
    grads = {}
    for impl in ("fused", "reference"):
        leaves = [t.clone().requires_grad_() for t in (mu, L, z)]
        nu = nu0.clone().requires_grad_()
        out = chyvae_regularizer(*leaves, nu, impl=impl)
        grads[impl] = torch.autograd.grad((out * weights).sum(), [*leaves, nu])
    assert grads["fused"][3].shape == (n,) and grads["fused"][3].dtype == nu_dtype
    for name, a, b in zip(("mu", "L", "z", "nu"), grads["fused"], grads["reference"], strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-9), name
    # dR_i/dnu_i, each datapoint against its own scalar-nu call (a 0-d nu's gradient is their sum)
    for i in (0, 7, 19):
        nu_i = nu0[i].double().clone().requires_grad_()
        r = chyvae_regularizer(mu[i : i + 1], L[i : i + 1], z[i : i + 1], nu_i, impl="fused")
        (g,) = torch.autograd.grad(r.sum() * weights[i], [nu_i])
        assert abs(float(g) - float(grads["fused"][3][i])) <= 1e-5 * max(1.0, abs(float(g)))


def test_per_datapoint_nu_gradient_sums_through_an_expanded_parameter():
    # An ensemble's learned nu: one parameter per member, expanded to its datapoints; autograd sums.
    d, members, batch = 5, 3, 4
    mu, L, z = make_inputs(members * batch, d, seed=9)
    raw = torch.tensor([8.0, 20.0, 60.0], dtype=torch.float64, requires_grad=True)
    r = chyvae_regularizer(mu, L, z, raw.repeat_interleave(batch), impl="fused")
    (g,) = torch.autograd.grad(r.sum(), [raw])
    for m in range(members):
        rows = slice(m * batch, (m + 1) * batch)
        nu_m = raw[m].detach().clone().requires_grad_()
        (want,) = torch.autograd.grad(chyvae_regularizer(mu[rows], L[rows], z[rows], nu_m, impl="fused").sum(), [nu_m])
        assert torch.allclose(g[m], want, rtol=1e-12)


@pytest.mark.parametrize(("k", "prior_kind"), [(1, "identity"), (2, "full")])
def test_gradcheck_per_datapoint_nu(k, prior_kind):
    d = 4
    mu, L, z = make_inputs(6, d, k, seed=k)
    nu = member_nus(6, d).requires_grad_()
    cov = prior(prior_kind, d)

    def fn(mu, L, z, nu):
        return chyvae_regularizer(mu, L, z, nu, cov, impl="fused")

    args = tuple(t.clone().requires_grad_() for t in (mu, L, z)) + (nu,)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_opcheck_per_datapoint_nu():
    ops = torch.ops.chyvae_ext
    for k, dtype in ((1, torch.float32), (3, torch.float64)):
        mu, L, z = make_inputs(8, 4, k, seed=k, dtype=dtype)
        nu = member_nus(8, 4)
        args = (mu, L, z, nu, None, 1.0, 0.0, True)
        torch.library.opcheck(ops.regularizer, args)
        torch.library.opcheck(ops.regularizer_forward, args)
        torch.library.opcheck(ops.regularizer, (*(t.clone().requires_grad_() for t in (mu, L, z)), nu.clone().requires_grad_(),
                                                None, 1.0, 0.0, True))
        _, saved = ops.regularizer_forward(*args)
        grad = torch.randn(8, dtype=dtype)
        torch.library.opcheck(ops.regularizer_backward, (grad, *args, saved))


def test_backward_op_returns_the_per_datapoint_nu_gradient_unsummed():
    ops = torch.ops.chyvae_ext
    mu, L, z = make_inputs(8, 4, seed=2)
    nu = member_nus(8, 4)
    grad = torch.ones(8, dtype=torch.float64)
    rows = ops.regularizer_backward(grad, mu, L, z, nu, None, 1.0, 0.0, True)[3]
    for i in range(8):
        one = ops.regularizer_backward(grad[:1], mu[i : i + 1], L[i : i + 1], z[i : i + 1], nu[i], None, 1.0, 0.0, True)[3]
        assert float(rows[i]) == float(one[0])


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_per_datapoint_nu(backend):
    mu, L, z = make_inputs(12, 5, seed=4, dtype=torch.float32)
    raw = torch.tensor([9.0, 30.0, 150.0], requires_grad=True)

    def loss(mu, L, z, raw):
        return -chyvae_regularizer(mu, L, z, raw.repeat_interleave(4), impl="fused").mean()

    compiled = torch.compile(loss, fullgraph=True, backend=backend)
    results = []
    for fn in (loss, compiled):
        args = [t.clone().requires_grad_() for t in (mu, L, z)] + [raw]
        value = fn(*args)
        results.append((value, *torch.autograd.grad(value, args)))
    for eager, comp in zip(*results, strict=True):
        assert torch.allclose(eager, comp, rtol=1e-6, atol=1e-6)
