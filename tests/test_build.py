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
    (("2.11.0", True, "12.8.93", "2.11.0+cu130", "13.0"), r"built with CUDA 12.8.93, but torch 2.11.0\+cu130 uses CUDA 13.0: the major versions differ"),
])
def test_compat_refuses_a_mismatched_build_and_says_how_to_rebuild(args, match):
    with pytest.raises(ImportError, match=match) as info:
        check_build_compat(*args)
    assert "pip install --no-build-isolation" in str(info.value)


def test_compat_warns_on_a_cuda_minor_version_mismatch():
    with pytest.warns(RuntimeWarning, match=r"built with CUDA 13.0.88 and torch 2.11.0\+cu131 uses CUDA 13.1: the minor"):
        check_build_compat("2.11.0", True, "13.0.88", "2.11.0+cu131", "13.1")


@pytest.mark.parametrize(("archs", "capability", "runs"), [
    ("8.0;9.0;10.0+PTX", (8, 0), True), ("8.0;9.0;10.0+PTX", (8, 6), True),  # sm_80 code runs on 8.x
    ("8.0;9.0;10.0+PTX", (9, 0), True), ("8.0;9.0;10.0+PTX", (10, 0), True),
    ("8.0;9.0;10.0+PTX", (12, 0), True),  # PTX of 10.0, compiled by the driver
    ("8.0;9.0;10.0+PTX", (7, 5), False),  # older than every target
    ("9.0", (8, 0), False), ("9.0", (10, 0), False),  # machine code only: same major version
    ("9.0a", (9, 0), True), ("9.0a", (9, 1), False),  # arch-specific code: that capability only
    ("8.0 9.0+PTX", (10, 0), True), ("8.0,9.0", (9, 0), True), ("", (9, 0), False),
])
def test_arch_list_runs_on(archs, capability, runs):
    from chyvae_ext._arch import runs_on

    assert runs_on(archs, capability) is runs


@pytest.mark.parametrize("bad", ["9", "sm_90", "9.0+ptx", "9.0b"])
def test_arch_list_bad_entry_is_named(bad):
    from chyvae_ext._arch import parse_arch_list

    with pytest.raises(ValueError, match=f"cannot read entry '{re.escape(bad)}'"):
        parse_arch_list(f"8.0;{bad}")


@pytest.mark.parametrize(("archs", "capability", "available"), [
    ("8.0;9.0;10.0+PTX", (9, 0), True), ("9.0", (8, 0), False), ("9.0a", (10, 0), False), ("8.0;9.0+PTX", (12, 0), True),
])
def test_fused_available_follows_the_built_archs(monkeypatch, archs, capability, available):
    import warnings

    from chyvae_ext import ops

    allowed = []

    class FakeC:
        allow_cuda_device = staticmethod(allowed.append)

    monkeypatch.setattr(_build_config, "WITH_CUDA", True)
    monkeypatch.setattr(_build_config, "CUDA_ARCHS", archs)
    monkeypatch.setattr(ops, "_C", FakeC)
    monkeypatch.setattr(ops, "_SUPPORTED", {})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert chyvae_ext.fused_available("cuda") is available
        assert chyvae_ext.fused_available(torch.device("cuda", 1)) is available  # remembered: one warning
    assert allowed == ([1] if available else [])  # the C++ entry runs only where the kernels can
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if available:
        assert messages == []
    else:
        assert len(messages) == 1
        assert f"built for {archs}, which cannot run on cuda:1 (compute capability {capability[0]}.{capability[1]})" in messages[0]
        assert "impl='auto' uses the pure-PyTorch reference" in messages[0]


def test_fused_available():
    assert chyvae_ext.fused_available(torch.device("cpu"))
    assert not chyvae_ext.fused_available(torch.device("meta"))
    assert chyvae_ext.fused_available(torch.device("cuda")) is bool(_build_config.WITH_CUDA)


def test_auto_picks_the_fused_op_on_cpu(monkeypatch):
    calls = []
    real = chyvae_ext.ops._C

    class Spy:
        regularizer_fast = staticmethod(lambda *a: calls.append("fast") or real.regularizer_fast(*a))
        regularizer_eager = staticmethod(lambda *a: calls.append("eager") or real.regularizer_eager(*a))

    monkeypatch.setattr(chyvae_ext.ops, "_C", Spy)
    mu = torch.zeros(2, 3)
    L = torch.eye(3).expand(2, 3, 3)
    chyvae_ext.chyvae_regularizer(mu, L, mu, 5.0)  # checked and run by the C++ entry
    assert calls == ["fast"]
    chyvae_ext.chyvae_regularizer(mu, L, mu, torch.tensor(5.0))  # declined there, checked in Python
    assert calls == ["fast", "fast", "eager"]
    chyvae_ext.chyvae_regularizer(mu, L, mu, 5.0, impl="reference")
    assert calls == ["fast", "fast", "eager", "fast"]


def _checked_op_call(mu, L, z, nu, prior_cov=None, constants=True):
    from chyvae_ext._validate import check_regularizer_inputs

    inp = check_regularizer_inputs(mu, L, z, nu, prior_cov)
    return torch.ops.chyvae_ext.regularizer(
        inp.mu, inp.L, inp.z, inp.nu, inp.prior_prec, inp.prior_scale, inp.prior_logdet, constants
    )


@pytest.mark.parametrize("case", ["f32", "f64", "K=2", "scale", "no-constants", "fused", "strided", "empty", "param"])
def test_fast_entry_matches_the_checked_op(case):
    """The C++ fast entry gives the values and gradients of the Python-checked op, bit for bit."""
    from helpers import make_inputs

    n, k = (0 if case == "empty" else 6), (2 if case == "K=2" else 1)
    dtype = torch.float32 if case in ("f32", "strided", "param") else torch.float64
    mu, L, z = make_inputs(n, 4, k, dtype=dtype, seed=3)
    z = z if k > 1 else z[:, 0]
    if case == "strided":
        L = L.mT.contiguous().mT  # the same values, column-major
        assert not L.is_contiguous()
    leaves = [torch.nn.Parameter(t) if case == "param" else t.requires_grad_() for t in (mu, L, z)]
    prior_cov = 2.5 if case == "scale" else None
    constants = case != "no-constants"
    impl = "fused" if case == "fused" else "auto"
    a = chyvae_ext.ops._C.regularizer_fast(*leaves, 7.5, prior_cov, constants, impl)
    assert a is not None and a.shape == (n,) and a.dtype == dtype
    b = _checked_op_call(*leaves, 7.5, prior_cov, constants)
    assert torch.equal(a, b)
    assert torch.equal(chyvae_ext.chyvae_regularizer(*leaves, 7.5, prior_cov, constants=constants, impl=impl), a)
    ga = torch.autograd.grad(a.sum(), leaves)
    gb = torch.autograd.grad(b.sum(), leaves)
    assert all(torch.equal(x, y) for x, y in zip(ga, gb, strict=True))


class _SubTensor(torch.Tensor):
    pass


@pytest.mark.parametrize("change", [
    {"nu": 7},                                  # an int: Python converts it
    {"nu": torch.tensor(7.5)},                  # a tensor (maybe differentiable)
    {"nu": 3.0},                                # not > d - 1: Python raises
    {"nu": float("inf")},
    {"nu": float("nan")},
    {"prior_cov": torch.eye(4)},                # a full prior: Python factorises it
    {"prior_cov": -1.0},
    {"prior_cov": 2},
    {"constants": 1},
    {"impl": "reference"},
    {"impl": "fast"},
    {"impl": None},
    {"dtype": torch.float16},                   # computed in float32 by the Python path
    {"dtype": torch.int64},
    {"mu_dtype": torch.float64},                # mixed dtypes
    {"device": "meta"},
    {"mu": "rank"},
    {"L": "shape"},
    {"z": "shape"},
    {"z": "K=0"},
    {"mu": "list"},
    {"mu": "subclass"},
])
def test_fast_entry_declines_everything_else(change):
    """Outside the common call the C++ entry returns None, and chyvae_regularizer's Python checks
    take over (test_bad_input.py checks their messages through chyvae_regularizer)."""
    from helpers import make_inputs

    mu, L, z = make_inputs(5, 4, dtype=change.get("dtype", torch.float32))
    z = z[:, 0]
    if "device" in change:
        mu, L, z = (torch.empty_like(t, device=change["device"]) for t in (mu, L, z))
    if "mu_dtype" in change:
        mu = mu.to(change["mu_dtype"])
    if "mu" in change:
        mu = {"rank": lambda: mu[0], "list": mu.tolist, "subclass": lambda: mu.as_subclass(_SubTensor)}[change["mu"]]()
    L = L[:, :3, :3] if change.get("L") == "shape" else L
    z = {"shape": z[:4], "K=0": z[:, None, :][:, :0]}.get(change.get("z"), z)
    args = (mu, L, z, change.get("nu", 7.5), change.get("prior_cov"), change.get("constants", True),
            change.get("impl", "auto"))
    assert chyvae_ext.ops._C.regularizer_fast(*args) is None


def test_loading_under_another_torch_without_a_compiler_is_refused(monkeypatch, tmp_path):
    from chyvae_ext._loader import load_extension

    monkeypatch.setattr(torch, "__version__", "9.9.9")
    monkeypatch.setenv("CXX", str(tmp_path / "no-compiler"))
    monkeypatch.setenv("CHYVAE_EXT_CACHE", str(tmp_path / "cache"))  # nothing built there before
    with pytest.raises(ImportError, match=r"built against torch .* but torch 9.9.9 is installed\. Rebuild") as info:
        load_extension()
    assert f"It cannot be built on import here: no C++ compiler ({tmp_path / 'no-compiler'}) was found" in str(info.value)


# Run in a fresh interpreter: the package copied to ROOT (the editable install's finder removed, so that the
# copy is what `import chyvae_ext` finds); the fused op checked against the reference.
IMPORT_COPY = """
import json, sys
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable")]
sys.path.insert(0, sys.argv[1])
import torch
import chyvae_ext
from chyvae_ext import _build_config
assert chyvae_ext.__file__.startswith(sys.argv[1]), chyvae_ext.__file__
gen = torch.Generator().manual_seed(0)
mu = torch.randn(64, 5, generator=gen, dtype=torch.float64)
L = torch.tril(torch.randn(64, 5, 5, generator=gen, dtype=torch.float64), -1) + torch.eye(5, dtype=torch.float64)
z = mu[:, None] + torch.randn(64, 2, 5, generator=gen, dtype=torch.float64)
fused = chyvae_ext.chyvae_regularizer(mu, L, z, 12.0, impl="fused")
ref = chyvae_ext.chyvae_regularizer_ref(mu, L, z, 12.0)
print(json.dumps({"torch": _build_config.TORCH_VERSION, "built_in": getattr(_build_config, "BUILT_ON_IMPORT", None),
                  "err": (fused - ref).abs().max().item(), "info": chyvae_ext.build_info()}))
"""


def package_built_for_another_torch(root):
    """chyvae_ext copied to ROOT with its compiled module, said (by its _build_config) to be built for torch 2.0.0,
    and its C++ sources as a wheel ships them (chyvae_ext/_src)."""
    import shutil

    from chyvae_ext._loader import sources_dir

    pkg = root / "chyvae_ext"
    shutil.copytree(Path(chyvae_ext.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__", "_src"))
    shutil.copy(chyvae_ext._C.__file__, pkg)
    (pkg / "_build_config.py").write_text(
        'VERSION = "0.1.0"\nTORCH_VERSION = "2.0.0"\nWITH_CUDA = False\nCUDA_VERSION = None\nCUDA_ARCHS = None\n')
    src = sources_dir()
    shutil.copytree(src / "csrc", pkg / "_src" / "csrc")
    (pkg / "_src" / "python").mkdir()
    shutil.copy(src / "python" / "module.cpp", pkg / "_src" / "python")
    return pkg


def test_a_module_built_for_another_torch_is_rebuilt_on_import_and_the_build_is_reused(tmp_path):
    import json
    import os
    import subprocess
    import sys

    root = tmp_path / "site"
    package_built_for_another_torch(root)
    # -O0: what is tested is that it builds, loads and computes, not how fast the kernels are
    env = dict(os.environ, CHYVAE_EXT_CACHE=str(tmp_path / "cache"), CHYVAE_EXT_BUILD_CFLAGS="-O0")

    def import_copy():
        proc = subprocess.run([sys.executable, "-c", IMPORT_COPY, str(root)], capture_output=True, text=True,
                              env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr

    first, err = import_copy()
    base = torch.__version__.split("+")[0]
    assert f"built against torch 2.0.0, but torch {torch.__version__} is installed; building it against torch" in err
    assert re.search(r"chyvae_ext: built in \d+ s", err)
    assert first["torch"] == base and first["info"]["torch_version"] == base
    assert first["built_in"].startswith(str(tmp_path / "cache" / "build" / f"torch-{base}-"))
    assert first["err"] < 1e-10  # the rebuilt kernels compute the regulariser
    second, err = import_copy()
    assert "building" not in err and second["built_in"] == first["built_in"] and second["err"] == first["err"]


def test_readme_set_up_names_only_torch_and_the_build_requirements():
    """The README's two set-up commands take the dependencies from pyproject.toml (its extras): they name torch and
    the build tools --no-build-isolation needs, nothing else; .ci/run runs the test command verbatim."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    build = {re.split(r"[<>=!~ \[]", r)[0].lower() for r in project["build-system"]["requires"]}
    extras = set(project["project"]["optional-dependencies"])
    readme = (root / "README.md").read_text()
    start = readme.index("## Fresh machine")
    section = readme[start:readme.index("\n## ", start + 1)]
    commands = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)
    assert len(commands) == 2
    named = set()
    for command in commands:
        for part in command.split("&&"):
            words = part.split()
            if words[:2] != ["pip", "install"]:
                continue
            for target in (w.strip("'\"") for w in words[2:] if not w.startswith("-")):
                if target.startswith("."):
                    asked = re.fullmatch(r"\.(?:\[([\w,]+)\])?", target)
                    assert asked, target
                    assert set(filter(None, (asked.group(1) or "").split(","))) <= extras, target
                else:
                    named.add(re.split(r"[<>=!~]", target)[0].lower())
    assert named == {"torch"} | build
    assert "[test,ray,slurm,explore]" in commands[1]
    # .ci/run runs it verbatim in its two halves, waiting for Chromium between them
    install, tests = commands[1].split(" && python -m pytest")
    ci = (root / ".ci" / "run").read_text().splitlines()
    assert install in ci and any(line.startswith("python -m pytest" + tests) for line in ci)


def test_the_ops_example_in_its_docs_runs():
    """docs/op.md's Python example is code that runs, not prose."""
    page = Path(__file__).resolve().parents[1] / "docs" / "op.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    op = [b for b in blocks if "chyvae_regularizer(" in b]
    assert op, "docs/op.md has no python example of the op"
    namespace = {}
    exec(compile(op[0], "README.md", "exec"), namespace)
    assert namespace["R"].shape == (64,)
    assert namespace["mu"].grad is not None and namespace["L"].grad is not None


def test_build_key_changes_with_any_source_byte_header_or_flag(tmp_path):
    from chyvae_ext._loader import build_key

    (tmp_path / "csrc" / "cpu").mkdir(parents=True)
    (tmp_path / "python").mkdir()
    sources = [tmp_path / "python" / "module.cpp", tmp_path / "csrc" / "ops.cpp"]
    for path in sources:
        path.write_text("int f() { return 1; }\n")
    (tmp_path / "csrc" / "ops.h").write_text("#pragma once\n")
    key = build_key(sources, tmp_path, ["-O3"])
    assert len(key) == 12 and key == build_key(list(reversed(sources)), tmp_path, ["-O3"])  # order-free
    assert build_key(sources, tmp_path, ["-O0"]) != key
    sources[1].write_text("int f() { return 2; }\n")
    changed_source = build_key(sources, tmp_path, ["-O3"])
    (tmp_path / "csrc" / "ops.h").write_text("#pragma once\n#define X 1\n")
    changed_header = build_key(sources, tmp_path, ["-O3"])
    assert len({key, changed_source, changed_header}) == 3


def test_build_directories_are_named_by_torch_cuda_python_and_the_key(monkeypatch, tmp_path):
    import sys

    from chyvae_ext._loader import build_dir_for

    monkeypatch.setenv("CHYVAE_EXT_CACHE", str(tmp_path))
    cuda = f"cu{torch.version.cuda}" if torch.version.cuda else "cpu"
    name = f"torch-{torch.__version__.split('+')[0]}-{cuda}-py{sys.version_info[0]}{sys.version_info[1]}-0123456789ab"
    assert build_dir_for("0123456789ab") == tmp_path / "build" / name


def test_the_constant_mark_is_the_one_torch_compilers_decorator_sets():
    from chyvae_ext.ops import _marked_constant

    def ours():
        return 1

    def theirs():
        return 1

    assert vars(_marked_constant(ours)) == vars(torch.compiler.assume_constant_result(theirs))


def test_import_chyvae_ext_leaves_torch_dynamo_unimported():
    import subprocess
    import sys

    code = "import sys, chyvae_ext; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_every_install_of_this_package_in_the_readme_and_docs_builds_against_the_installed_torch():
    """pip's isolated build has its own torch (or none): each line of the README and docs/ that installs the
    package from its source tree passes --no-build-isolation, so the compiled module matches the torch that
    runs it."""
    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    installs = [line for line in text.splitlines() if re.search(r"pip install [^`]*(-e |\s)['\"]?\.(\[|'|\s|$)", line)]
    assert len(installs) >= 6, installs
    plain = [line for line in installs if "--no-build-isolation" not in line and "A plain `pip install .`" not in line]
    assert not plain, plain


def test_readme_quickstart_runs_as_written(tmp_path, monkeypatch):
    """The README's Python quickstart, run verbatim in an empty directory (50 steps on the built-in data),
    twice: its overwrite=True makes it rerunnable; the shapes its comments give are the shapes it gets."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
    quick = [b for b in blocks if "chyvae_ext.load(" in b]
    assert quick, "README.md has no quickstart"
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        namespace = {}
        exec(compile(quick[0], "README.md", "exec"), namespace)
    assert namespace["run"].status == {"state": "finished", "step": 50,
                                       "checkpoint": str(Path("runs/quickstart/checkpoints/step_00000050.pt"))}
    assert namespace["z"].shape == (8, 10) and namespace["x"].shape == (8, 1, 64, 64)
    assert namespace["r"].shape == (1, 1, 64, 64) and namespace["grid"].shape == (10, 9, 1, 64, 64)
    assert namespace["model"].step == 50
