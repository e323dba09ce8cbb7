"""CHyVAE's training step without host synchronisation, and under torch.compile, for every
configuration: fixed or learned nu, prior None / scalar / full tensor, K = 1 and K = 3.

- torch._dynamo.explain(model.loss) finds no graph break;
- a whole training step (forward, backward, Adam update) compiles with fullgraph=True and gives
  the eager step's numbers;
- on meta tensors (the Python path takes the CUDA branches; no GPU needed) a step calls nothing that
  reads a value back to the host (.item(), float(t), bool(t), .cpu(): aten._local_scalar_dense or a
  copy to the CPU), through the fused op and through the reference;
- and the pieces these rest on: adam_update against torch.optim.Adam, pre-drawn noise, PriorCov and
  the model's prior buffers, the CUDA kernel-variant setter's messages.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import chyvae_ext
from chyvae_ext import PriorCov, ops
from chyvae_ext.models import CHyVAE
from chyvae_ext.step import make_step, whole_step_compiles

CONFIGS = {
    "fixed-nu": dict(),
    "learned-nu": dict(learn_nu=True),
    "scalar-prior": dict(prior_cov=0.5),
    "full-prior-learned-nu": dict(learn_nu=True, prior_cov="full"),
    "full-prior-K3": dict(prior_cov="full", num_samples=3),
    "learned-nu-K3": dict(learn_nu=True, num_samples=3),
}


def full_prior(d: int) -> torch.Tensor:
    b = torch.randn(d, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return (b @ b.T / d + 0.5 * torch.eye(d, dtype=torch.float64)).float()


def build(name: str, d: int = 10, hidden: int = 32, impl: str = "auto") -> CHyVAE:
    kw = dict(CONFIGS[name])
    if kw.get("prior_cov") == "full":
        kw["prior_cov"] = full_prior(d)
    torch.manual_seed(0)
    return CHyVAE(d, 1, hidden, nu=50.0, impl=impl, **kw)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_has_no_graph_breaks(name):
    model = build(name)
    x = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    noise = model.sample_noise(6, "cpu", torch.Generator().manual_seed(2))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.loss)(x, noise=noise)
    assert explained.graph_break_count == 0, [str(b.reason)[:300] for b in explained.break_reasons]
    assert explained.graph_count == 1


def batches_of(x):
    while True:
        yield x


@pytest.mark.skipif(not whole_step_compiles(), reason="this torch cannot trace autograd inside a compiled graph")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_whole_training_step_compiles_fullgraph_and_matches_eager(name):
    x = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    runs = {}
    for compile in (None, "aot_eager"):
        torch._dynamo.reset()
        model = build(name)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = make_step(model, opt, None, batches_of(x), torch.Generator().manual_seed(3), bf16=False, compile=compile)
        losses = [float(step()["loss"]) for _ in range(4)]  # the first eager, the others compiled
        runs[compile] = (losses, [p.detach().clone() for p in model.parameters()], float(torch.as_tensor(model.nu)))
    (l_eager, p_eager, nu_eager), (l_comp, p_comp, nu_comp) = runs[None], runs["aot_eager"]
    for a, b in zip(l_eager, l_comp, strict=True):
        assert math.isclose(a, b, rel_tol=1e-5)
    # Adam divides by sqrt(v): where a gradient is ~0, float32 rounding can flip its sign and move
    # that entry by up to 2 lr a step. Everything else agrees to rounding.
    a, b = torch.cat([t.flatten() for t in p_eager]), torch.cat([t.flatten() for t in p_comp])
    assert float((a - b).abs().max()) <= 2 * 1e-3 * 3
    assert float(((a - b).abs() > 1e-5 * a.abs() + 1e-7).float().mean()) < 1e-4
    assert math.isclose(nu_eager, nu_comp, rel_tol=1e-6)
    if CONFIGS[name].get("learn_nu"):
        assert nu_eager != 50.0  # nu was trained, in the compiled graph too


class HostReads(TorchDispatchMode):
    """Records every aten call that reads a tensor back to the host or copies it to the CPU."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        self.ops.append(name)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if func is torch.ops.aten._local_scalar_dense.default and tensors[0].device.type != "cpu":
            self.reads.append(name)  # (a CPU scalar, such as a fixed nu, is read without waiting)
        elif name.startswith("aten._to_copy") and torch.device(kwargs.get("device") or tensors[0].device).type == "cpu" \
                and tensors[0].device.type != "cpu":
            self.reads.append(name)
        elif name.startswith("aten.copy_") and tensors[0].device.type == "cpu" and tensors[1].device.type != "cpu":
            self.reads.append(name)
        return func(*args, **kwargs)


@pytest.mark.skipif(not whole_step_compiles(), reason="this torch cannot trace autograd inside a compiled graph")
def test_whole_step_leaves_no_process_wide_dynamo_setting_changed():
    before = torch._dynamo.config.trace_autograd_ops
    x = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    model = build("fixed-nu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = make_step(model, opt, None, batches_of(x), torch.Generator().manual_seed(3), bf16=False, compile="aot_eager")
    assert torch._dynamo.config.trace_autograd_ops == before  # building the step changes nothing
    for _ in range(3):  # the first eager, the others through the compiled graph, which sets it while it runs
        step()
        assert torch._dynamo.config.trace_autograd_ops == before



@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_gpu_step_reads_nothing_back_to_the_host(name, impl, monkeypatch):
    # The step runs on the meta device: the Python path takes the same branches for it as for CUDA
    # (only the CPU is special-cased), and any read-back of a meta tensor fails. (Fake CUDA tensors
    # cannot run convolutions or record autograd in a CPU-only torch.) The fused kernels exist for
    # meta as the fake kernels: say they are compiled.
    monkeypatch.setattr(ops, "fused_available", lambda device: True)
    kw = dict(CONFIGS[name])
    with torch.device("meta"):
        if kw.get("prior_cov") == "full":
            prec = torch.eye(10, dtype=torch.float64) * 2.0
            kw["prior_cov"] = PriorCov.trusted(torch.eye(10) * 0.5, prec, 10 * math.log(0.5))
        model = CHyVAE(10, 1, 32, nu=50.0, impl=impl, **kw)
        x = torch.rand(6, 1, 64, 64)
        noise = model.sample_noise(6, "meta")
    assert x.is_meta and all(p.is_meta for p in model.parameters())
    with HostReads() as rec:
        out = model.loss(x, noise=noise)
        out["loss"].backward()
    assert rec.reads == [], rec.reads
    assert any(op.startswith("chyvae_ext.regularizer_backward") for op in rec.ops) == (impl == "fused")
    assert all(p.grad is not None and p.grad.is_meta for p in model.parameters())


def test_host_reads_are_detected():
    # The recorder itself: .item() and .cpu() of a fake CUDA tensor are caught.
    with FakeTensorMode(), torch.device("cuda:0"):
        t = torch.ones(3)
        with HostReads() as rec:
            t.cpu()
            with pytest.raises(Exception):  # noqa: B017 (fake tensors cannot produce a value)
                t.sum().item()
    assert len(rec.reads) == 2
    t = torch.ones(3, device="meta")
    with HostReads() as rec, pytest.raises(Exception):  # noqa: B017 (meta tensors hold no value)
        bool(t.sum() > 0)
    assert rec.reads == ["aten._local_scalar_dense.default"]


def test_plain_tensor_prior_is_read_back_and_the_recorder_sees_it(monkeypatch):
    # What PriorCov avoids: a plain prior_cov tensor is validated on every call, reading it back.
    monkeypatch.setattr(ops, "fused_available", lambda device: True)
    with torch.device("meta"):
        mu, L, z = torch.randn(4, 3), torch.randn(4, 3, 3), torch.randn(4, 3)
        cov = torch.eye(3)
    with HostReads() as rec, pytest.raises(Exception):  # noqa: B017 (meta tensors hold no value)
        chyvae_ext.chyvae_regularizer(mu, L, z, 9.0, cov)
    assert rec.reads == ["aten._local_scalar_dense.default"]


def test_adam_update_is_torch_adam():
    # The written-out update against torch.optim.Adam itself, eagerly, over a few steps.
    from chyvae_ext.step import adam_update

    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    mine = [p.detach().clone().requires_grad_() for p in params]
    ref_opt, my_opt = torch.optim.Adam(params, lr=1e-2), torch.optim.Adam(mine, lr=1e-2)
    for step in range(5):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        ref_opt.step()
        if step == 0:  # the first step creates the state, as make_step does
            for p, g in zip(mine, grads, strict=True):
                p.grad = g.clone()
            my_opt.step()
        else:
            adam_update(mine, grads, my_opt)
    for a, b in zip(params, mine, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("option", [{"weight_decay": 0.1}, {"amsgrad": True}, {"maximize": True}])
def test_adam_update_refuses_other_adam_options(option):
    from chyvae_ext.step import adam_update

    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([p], **option)
    with pytest.raises(ValueError, match=r"adam_update: only plain Adam \(no weight decay, amsgrad or maximize\)"):
        adam_update([p], [torch.ones(2)], opt)


def test_adam_options_fuse_only_compiled_gpu_steps():
    from chyvae_ext.step import adam_options

    assert adam_options(True, torch.device("cuda")) == {"fused": True}
    assert adam_options(False, "cuda") == {} and adam_options(True, "cpu") == {}


def test_noise_drawn_outside_gives_the_same_loss():
    model = build("full-prior-K3")
    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model.loss(x, generator=torch.Generator().manual_seed(9))
        b = model.loss(x, noise=model.sample_noise(4, "cpu", torch.Generator().manual_seed(9)))
    assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["z"], b["z"])
    assert [tuple(t.shape) for t in model.sample_noise(4, "cpu")] == [(4, 10, 1), (4, 3, 10, 1)]


def test_noise_of_the_wrong_shape_is_named():
    model = build("fixed-nu")
    x = torch.rand(4, 1, 64, 64)
    with pytest.raises(ValueError, match=r"noise must be tensors of shapes \[\(4, 10, 1\), \(4, 1, 10, 1\)\] "
                                         r"\(from sample_noise\), got \[\(4, 10\)\]"):
        model.loss(x, noise=(torch.zeros(4, 10),))


def test_prior_cov_object_moves_and_describes_itself():
    cov = full_prior(4)
    prior = PriorCov(cov)
    chol = torch.linalg.cholesky(cov.double())
    assert torch.allclose(prior.prec, torch.cholesky_inverse(chol)) and prior.prec.dtype == torch.float64
    assert math.isclose(prior.logdet, float(2 * chol.diagonal().log().sum()), rel_tol=1e-6)
    assert prior.shape == (4, 4) and prior.device == torch.device("cpu")
    moved = prior.to("meta")
    assert moved.cov.is_meta and moved.prec.is_meta and moved.logdet == prior.logdet
    assert PriorCov(prior).prec is prior.prec  # no second validation
    assert repr(prior).startswith("PriorCov(d=4, logdet=")


def test_model_prior_is_validated_once_and_follows_load_state_dict():
    model = build("full-prior-K3")
    assert model.prior_prec.dtype == torch.float64 and "prior_prec" not in model.state_dict()
    other = CHyVAE(10, 1, 32, nu=50.0, prior_cov=2.0 * torch.eye(10))
    other.load_state_dict(model.state_dict())
    assert torch.allclose(other.prior_prec, model.prior_prec)
    assert math.isclose(other._prior_logdet, model._prior_logdet, rel_tol=1e-9)
    with pytest.raises(ValueError, match=r"prior_cov must have shape \(10, 10\), got \(3, 3\)"):
        model.set_prior_cov(torch.eye(3))
    with pytest.raises(ValueError, match=r"prior_cov must be a number > 0, got -1.0"):
        model.set_prior_cov(-1.0)
    model.set_prior_cov(0.5)
    assert model.prior_cov == 0.5 and model.prior_prec is None and "prior_cov" not in model._buffers


def test_kernel_variant_setter_names_bad_values():
    with pytest.raises(ValueError, match=r"variant must be 'auto', 'thread', 'warp' or 'unrolled', got 'fast'"):
        chyvae_ext._C.set_cuda_kernel_variant("fast")
    chyvae_ext._C.set_cuda_kernel_variant("auto")
    if not chyvae_ext.build_info()["cuda"]:
        with pytest.raises(ValueError, match=r"built without CUDA kernels: only 'auto' can be set"):
            chyvae_ext._C.set_cuda_kernel_variant("warp")
