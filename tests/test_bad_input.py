"""Every bad-input path raises before any kernel runs, naming the argument."""

import pytest
import torch
from helpers import make_inputs, random_spd

from chyvae_ext import chyvae_regularizer, chyvae_regularizer_ref

IMPLS = ["fused", "reference", "auto"]


def call(impl, *args, **kwargs):
    if impl == "reference":
        return chyvae_regularizer_ref(*args, **kwargs)
    return chyvae_regularizer(*args, impl=impl, **kwargs)


@pytest.fixture
def good():
    return make_inputs(4, 3, seed=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("which", "bad", "error", "match"), [
    ("mu", [[0.0, 1.0, 2.0]], TypeError, r"mu must be a torch.Tensor, got list"),
    ("mu", torch.zeros(4, 3, dtype=torch.int64), TypeError, r"mu must be a floating-point tensor, got dtype torch.int64"),
    ("mu", torch.zeros(12, dtype=torch.float64), ValueError, r"mu must have shape \(N, d\), got \(12,\)"),
    ("mu", torch.zeros(4, 0, dtype=torch.float64), ValueError, r"mu must have at least one latent dimension"),
    ("L", torch.zeros(4, 3, 2, dtype=torch.float64), ValueError, r"L must have shape \(4, 3, 3\) to match mu, got \(4, 3, 2\)"),
    ("L", torch.zeros(3, 3, dtype=torch.float64), ValueError, r"L must have shape \(4, 3, 3\)"),
    ("z", torch.zeros(4, 2, dtype=torch.float64), ValueError, r"z must have shape \(4, 3\) or \(4, K, 3\), got \(4, 2\)"),
    ("z", torch.zeros(4, 0, 3, dtype=torch.float64), ValueError, r"z must have shape .* with K >= 1, got \(4, 0, 3\)"),
    ("z", torch.zeros(4, 1, 1, 3, dtype=torch.float64), ValueError, r"z must have shape"),
    ("z", torch.zeros(5, 3, dtype=torch.float64), ValueError, r"z must have shape \(4, 3\)"),
    ("L", torch.eye(3).expand(4, 3, 3), TypeError, r"mu, L and z must share a dtype, got mu torch.float64, L torch.float32"),
    ("z", torch.zeros(4, 3, device="meta", dtype=torch.float64), ValueError, r"mu, L and z must be on one device, got mu cpu, L cpu, z meta"),
])
def test_bad_tensors(good, impl, which, bad, error, match):
    mu, L, z = good
    kwargs = {"mu": mu, "L": L, "z": z, which: bad}
    with pytest.raises(error, match=match):
        call(impl, kwargs["mu"], kwargs["L"], kwargs["z"], 5.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("nu", "error", "match"), [
    (2.0, ValueError, r"nu must be finite and greater than d - 1 = 2 \(d = 3\), got 2.0"),
    (-1, ValueError, r"nu must be finite and greater than d - 1 = 2 .* got -1.0"),
    (float("nan"), ValueError, r"nu must be finite .* got nan"),
    (float("inf"), ValueError, r"nu must be finite .* got inf"),
    (torch.tensor(1.5, dtype=torch.float64), ValueError, r"nu must be finite and greater than d - 1 = 2 .* got 1.5"),
    (torch.tensor([5.0]), ValueError, r"nu must be a 0-d tensor or have shape \(4,\) \(one per datapoint\), got \(1,\)"),
    (torch.full((4, 1), 5.0), ValueError, r"nu must be a 0-d tensor or have shape \(4,\) .*got \(4, 1\)"),
    (torch.tensor([5.0, 6.0, 1.5, 7.0]), ValueError, r"nu must be finite and greater than d - 1 = 2 .* got 1.5 at datapoint 2"),
    (torch.tensor([5.0, float("nan"), 6.0, 7.0]), ValueError, r"nu must be finite .* got nan at datapoint 1"),
    (torch.tensor(5), TypeError, r"nu must be a floating-point tensor, got dtype torch.int64"),
    (torch.tensor([5, 6, 7, 8]), TypeError, r"nu must be a floating-point tensor, got dtype torch.int64"),
    (True, TypeError, r"nu must be a float, a 0-d tensor or a \(N,\) tensor, got bool"),
    ("5", TypeError, r"nu must be a float, a 0-d tensor or a \(N,\) tensor, got str"),
])
def test_bad_nu(good, impl, nu, error, match):
    with pytest.raises(error, match=match):
        call(impl, *good, nu)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("cov", "error", "match"), [
    (0.0, ValueError, r"prior_cov as a number must be positive and finite, got 0.0"),
    (-2, ValueError, r"prior_cov as a number must be positive and finite, got -2.0"),
    (float("inf"), ValueError, r"prior_cov as a number must be positive and finite, got inf"),
    (True, TypeError, r"prior_cov must be None, a positive float, a \(d, d\) tensor or a PriorCov, got bool"),
    ("eye", TypeError, r"prior_cov must be None, a positive float, a \(d, d\) tensor or a PriorCov, got str"),
    (torch.eye(3, dtype=torch.int64), TypeError, r"prior_cov must be a floating-point tensor, got dtype torch.int64"),
    (torch.eye(4, dtype=torch.float64), ValueError, r"prior_cov must have shape \(3, 3\), got \(4, 4\)"),
    (torch.eye(3, dtype=torch.float64, device="meta"), ValueError, r"prior_cov must be on cpu like mu, got meta"),
    (torch.eye(3, dtype=torch.float64).requires_grad_(), ValueError, r"prior_cov must not require grad"),
    (torch.tensor([[1.0, 0.5, 0], [0.0, 1, 0], [0, 0, 1]], dtype=torch.float64), ValueError,
     r"prior_cov must be symmetric positive-definite, got max \|A - A\^T\| = 0.5"),
    (torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)), ValueError,
     r"prior_cov must be symmetric positive-definite, got a matrix whose Cholesky factorisation fails at leading minor 2"),
    (torch.full((3, 3), float("nan"), dtype=torch.float64), ValueError, r"prior_cov must be finite"),
])
def test_bad_prior_cov(good, impl, cov, error, match):
    with pytest.raises(error, match=match):
        call(impl, *good, 5.0, cov)


def test_unknown_impl(good):
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'fused', 'reference'\), got 'fast'"):
        chyvae_regularizer(*good, 5.0, impl="fast")


def test_fused_without_a_kernel_for_the_device():
    mu, L, z = (t.to("meta") for t in make_inputs(2, 3))
    with pytest.raises(ValueError, match=r"impl='fused' needs a kernel for device meta"):
        chyvae_regularizer(mu, L, z, 5.0, impl="fused")


def test_float32_prior_cov_within_rounding_of_symmetric_is_accepted(good):
    b = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    cov = b @ b.T + torch.eye(3)  # float32
    nudged = cov.clone()
    nudged[0, 1] = torch.nextafter(cov[0, 1], torch.tensor(float("inf")))  # one ulp off symmetric
    assert not torch.equal(nudged, nudged.T)
    out = chyvae_regularizer(*good, 5.0, nudged)
    exact = chyvae_regularizer(*good, 5.0, cov.double())
    assert torch.allclose(out, exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("cov", "error", "match"), [
    (torch.eye(3, dtype=torch.float64)[:2], ValueError, r"prior_cov must have shape \(d, d\), got \(2, 3\)"),
    ([[1.0]], TypeError, r"prior_cov must be None, a positive float, a \(d, d\) tensor or a PriorCov, got list"),
    (torch.diag(torch.tensor([1.0, -1.0])), ValueError, r"Cholesky factorisation fails at leading minor 2"),
])
def test_bad_prior_cov_object(cov, error, match):
    from chyvae_ext import PriorCov

    with pytest.raises(error, match=match):
        PriorCov(cov)


def test_prior_cov_object_of_the_wrong_size_or_device(good):
    from chyvae_ext import PriorCov

    with pytest.raises(ValueError, match=r"prior_cov must have shape \(3, 3\), got \(2, 2\)"):
        chyvae_regularizer(*good, 5.0, PriorCov(torch.eye(2, dtype=torch.float64)))
    meta = PriorCov.trusted(torch.eye(3, device="meta"), torch.eye(3, device="meta"), 0.0)
    with pytest.raises(ValueError, match=r"prior_cov must be on cpu like mu, got meta"):
        chyvae_regularizer(*good, 5.0, meta)


# The compiled ops check again for callers that bypass the Python API (TORCH_CHECK_VALUE -> ValueError).
def op_args(**override):
    mu, L, z = make_inputs(4, 3, 2)
    args = {"mu": mu, "L": L, "z": z, "nu": torch.tensor(5.0, dtype=torch.float64), "prior_prec": None,
            "prior_scale": 1.0, "prior_logdet": 0.0, "constants": True}
    args.update(override)
    return args


@pytest.mark.parametrize(("override", "match"), [
    ({"mu": torch.zeros(4, dtype=torch.float64)}, r"mu must have shape \(N, d\)"),
    ({"L": torch.zeros(4, 3, 2, dtype=torch.float64)}, r"L must have shape \(4, 3, 3\)"),
    ({"z": torch.zeros(4, 2, dtype=torch.float64)}, r"z must have shape \(4, 3\) or \(4, K, 3\) with K >= 1, got \[4, 2\]"),
    ({"z": torch.zeros(4, 0, 3, dtype=torch.float64)}, r"z must have shape .* with K >= 1, got \[4, 0, 3\]"),
    ({"z": torch.zeros(4, 2, 3)}, r"mu, L and z must share a dtype"),
    ({"mu": torch.zeros(4, 3, dtype=torch.float16)}, r"mu must be float32 or float64"),
    ({"nu": torch.tensor(2.0, dtype=torch.float64)}, r"nu must be finite and > d - 1 = 2, got 2"),
    ({"nu": torch.tensor([5.0])}, r"nu must be a 0-d float32 or float64 tensor on the CPU or on cpu, or a \(4,\) one "
     r"\(a value per datapoint\) on cpu like mu, got shape \[1\]"),
    ({"nu": torch.tensor([5.0, 6.0, 2.0, 7.0], dtype=torch.float64)}, r"nu must be finite and > d - 1 = 2, got 2 at datapoint 2"),
    ({"nu": torch.full((4,), 5.0, dtype=torch.float16)}, r"nu must be a 0-d float32 or float64 tensor .* dtype Half"),
    ({"nu": torch.tensor(5.0, dtype=torch.float16)}, r"nu must be a 0-d float32 or float64 tensor on the CPU .* dtype Half"),
    ({"prior_prec": torch.eye(3, dtype=torch.float64), "prior_logdet": float("nan")}, r"prior_logdet must be finite, got nan"),
    ({"prior_prec": torch.eye(2, dtype=torch.float64)}, r"prior_prec must have shape \(3, 3\)"),
    ({"prior_scale": -1.0}, r"prior_scale must be positive and finite, got -1"),
])
def test_compiled_op_checks(override, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.chyvae_ext.regularizer(**op_args(**override))


def test_compiled_backward_checks_grad_shape():
    args = op_args()
    with pytest.raises(ValueError, match=r"grad must be a floating \(4\) tensor on cpu, got \[3\]"):
        torch.ops.chyvae_ext.regularizer_backward(torch.zeros(3, dtype=torch.float64), **args)
    with pytest.raises(ValueError, match=r"grad must be a floating \(4\) tensor on cpu, got \[4\] Long"):
        torch.ops.chyvae_ext.regularizer_backward(torch.zeros(4, dtype=torch.int64), **args)


@pytest.mark.parametrize("saved", [
    torch.zeros(4, 8, dtype=torch.float64),             # the K = 1 isotropic path saves (N, d + 6)
    torch.zeros(4, 9, 2, dtype=torch.float64)[..., 0],  # right shape, not contiguous
    torch.zeros(4, 9),                                  # float32
])
def test_compiled_backward_checks_saved(saved):
    mu, L, z = make_inputs(4, 3, 1)
    args = op_args(z=z[:, 0])
    with pytest.raises(ValueError, match=r"saved must be the contiguous float64 \(4, 9\) tensor from regularizer_forward"):
        torch.ops.chyvae_ext.regularizer_backward(torch.ones(4, dtype=torch.float64), **args, saved=saved)


def test_full_prior_is_used_not_ignored(good):
    a = chyvae_regularizer(*good, 5.0, random_spd(3, seed=1))
    b = chyvae_regularizer(*good, 5.0)
    assert not torch.allclose(a, b)


def test_check_int_messages():
    import numpy as np

    from chyvae_ext._checks import check_int

    assert check_int("n", np.int32(3)) == 3 and type(check_int("n", np.int64(0))) is int
    for least, value, what in ((0, -1, "a non-negative integer"), (1, 0, "a positive integer"), (2, 1, "an integer >= 2")):
        with pytest.raises(ValueError, match=f"^n must be {what}, got {value}$"):
            check_int("n", value, least)
    for bad in (True, 2.0, "3", None):
        with pytest.raises(ValueError, match=rf"^k must be a non-negative integer, got {bad!r}$"):
            check_int("k", bad)
