"""build_info, the load-time compatibility checks and the fused/reference choice."""

import re
from pathlib import Path

import pytest
import torch

import chyvae_ext
from chyvae_ext import _build_config
from chyvae_ext._loader import check_build_compat


def test_build_info_describes_this_build():
    info = chyvae_ext.build_info()
    assert set(info) == {"version", "torch_version", "cuda", "cuda_version", "cuda_archs"}
    assert info["version"] == chyvae_ext.__version__
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert info["cuda"] is bool(_build_config.WITH_CUDA)
    if info["cuda"]:
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", info["cuda_version"])
        assert info["cuda_archs"]
    else:
        assert info["cuda_version"] is None and info["cuda_archs"] is None


def test_compat_accepts_a_matching_build():
    check_build_compat("2.13.0", False, None, "2.13.0+cpu", None)
    check_build_compat("2.11.0", True, "13.0.88", "2.11.0+cu130", "13.0")


@pytest.mark.parametrize(("args", "match"), [
    (("2.13.0", False, None, "2.14.1", "13.0"), r"built against torch 2.13.0, but torch 2.14.1 is installed"),
    (("2.11.0", True, "13.0.88", "2.11.0+cpu", None), r"built with CUDA 13.0.88 kernels, but the installed torch 2.11.0\+cpu is a CPU build"),
    (("2.11.0", True, "12.8.93", "2.11.0+cu130", "13.0"), r"built with CUDA 12.8.93, but torch 2.11.0\+cu130 uses CUDA 13.0"),
])
def test_compat_refuses_a_mismatched_build_and_says_how_to_rebuild(args, match):
    with pytest.raises(ImportError, match=match) as info:
        check_build_compat(*args)
    assert "pip install --no-build-isolation" in str(info.value)


def test_fused_available():
    assert chyvae_ext.fused_available(torch.device("cpu"))
    assert not chyvae_ext.fused_available(torch.device("meta"))
    assert chyvae_ext.fused_available(torch.device("cuda")) is bool(_build_config.WITH_CUDA)


def test_auto_picks_the_fused_op_on_cpu(monkeypatch):
    calls = []
    real = chyvae_ext.ops._C.regularizer_eager

    class Spy:
        regularizer_eager = staticmethod(lambda *a: calls.append(a) or real(*a))

    monkeypatch.setattr(chyvae_ext.ops, "_C", Spy)
    mu = torch.zeros(2, 3)
    L = torch.eye(3).expand(2, 3, 3)
    chyvae_ext.chyvae_regularizer(mu, L, mu, 5.0)
    assert len(calls) == 1
    chyvae_ext.chyvae_regularizer(mu, L, mu, 5.0, impl="reference")
    assert len(calls) == 1


def test_eager_entry_is_the_dispatcher_op():
    """The eager entry (C++ dispatcher, no torch.ops Python binding) gives torch.ops' values and gradients, bit for bit."""
    from helpers import make_inputs

    from chyvae_ext._validate import check_regularizer_inputs

    mu, L, z = (t.requires_grad_() for t in make_inputs(5, 4, dtype=torch.float32))
    inp = check_regularizer_inputs(mu, L, z, 9.0, None)
    args = (inp.mu, inp.L, inp.z, inp.nu, None, 1.0, 0.0, True)
    a = chyvae_ext.ops._C.regularizer_eager(*args)
    b = torch.ops.chyvae_ext.regularizer(*args)
    assert torch.equal(a, b)
    ga = torch.autograd.grad(a.sum(), (mu, L, z))
    gb = torch.autograd.grad(b.sum(), (mu, L, z))
    assert all(torch.equal(x, y) for x, y in zip(ga, gb, strict=True))


def test_loading_under_another_torch_is_refused(monkeypatch):
    from chyvae_ext._loader import load_extension

    monkeypatch.setattr(torch, "__version__", "9.9.9")
    with pytest.raises(ImportError, match=r"built against torch .* but torch 9.9.9 is installed"):
        load_extension()


def test_readme_example_runs():
    """The README's Python example is code that runs, not prose."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["R"].shape == (64,)
    assert namespace["mu"].grad is not None and namespace["L"].grad is not None
