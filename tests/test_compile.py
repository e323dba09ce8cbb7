"""CHyVAE's training step without host synchronisation, and under torch.compile, for every
configuration: fixed or learned nu, prior None / scalar / full tensor, K = 1 and K = 3.

- torch._dynamo.explain(model.loss) finds no graph break;
- a whole training step (forward, backward, Adam update) compiles with fullgraph=True and gives
  the eager step's numbers;
- on meta tensors (the Python path takes the CUDA branches; no GPU needed) a step calls nothing that
  reads a value back to the host (.item(), float(t), bool(t), .cpu(): aten._local_scalar_dense or a
  copy to the CPU), through the fused op and through the reference.
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
from chyvae_ext.train import make_step, whole_step_compiles

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
