"""The package's rooms: nothing outside training imports the trainer, and a run directory written by
the release before the training layer was split (0.1.0) still resumes, bit for bit."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

import chyvae_ext
from chyvae_ext.runfiles import Run
from chyvae_ext.train import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "chyvae_ext"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_written_by_0_1_0"
TRAINER = "chyvae_ext.train"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, relative imports resolved against its place in the package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if path.is_relative_to(PACKAGE):
        parts = ["chyvae_ext", *path.relative_to(PACKAGE).with_suffix("").parts]
        package = parts if path.name == "__init__.py" else parts[:-1]
    else:
        package = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # from chyvae_ext import train
    return found


def _outside_training() -> list[Path]:
    """The modules that are not the training layer: the whole package but train.py, the benchmarks, the tools."""
    files = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "train.py"]
    return files + sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "tools").glob("*.py"))


def test_imported_modules_resolves_relative_and_from_imports(tmp_path):
    inside = PACKAGE / "experiments" / "collect.py"
    found = _imported_modules(inside)
    assert "chyvae_ext.runfiles" in found and "chyvae_ext.config" in found  # from .. import runfiles; from ..config
    probe = tmp_path / "probe.py"
    probe.write_text("import chyvae_ext.train\nfrom chyvae_ext import train\n")
    assert TRAINER in _imported_modules(probe)


def test_nothing_outside_training_imports_the_trainer():
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p) if m == TRAINER or m.startswith(TRAINER + "."))
        for p in _outside_training()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"modules outside training import the trainer: {offenders}"


def test_the_package_docstring_maps_every_module():
    doc = chyvae_ext.__doc__
    modules = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.glob("*.py") if not p.name.startswith("_")]
    modules += [p.relative_to(PACKAGE).as_posix() + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    missing = [m for m in modules if m not in doc]
    assert not missing, f"chyvae_ext's docstring does not name {missing}"


@pytest.fixture
def one_thread():
    """The fixture was written on one thread: the held-out batch's sums depend on how a reduction is split."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def close(a, b, rtol=1e-6):
    """Equal within rtol, number by number, in nested rows: the fixture is replayed bit for bit on
    the CPU that wrote it (an Intel Xeon); another CPU's float32 kernels may differ in the last digit
    (on an AMD EPYC: one held-out term, 8e-8 relative, in the first session that checked)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], rtol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, rtol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rtol * max(abs(b), 1e-12)
    return a == b


def test_a_run_written_by_0_1_0_resumes_to_its_numbers(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run, ignore=shutil.ignore_patterns("expected.json"))
    expected = json.loads((FIXTURE / "expected.json").read_text())
    assert main(["--resume", str(run)]) == 0
    assert "finished 4 steps" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    after = [{k: v for k, v in r.items() if k not in ("steps_per_s", "time")} for r in rows if r["step"] > 2]
    assert close(after, expected["rows_after_step_2"])  # the losses, to float32's last digits
    state = torch.load(Run(run).checkpoint(4), weights_only=False)
    sums = {k: float(v.double().sum()) for k, v in state["model"].items()}
    assert close(sums, expected["parameter_sums_at_step_4"])
    old_keys = list(json.loads((FIXTURE / "config.json").read_text()))
    new_keys = list(json.loads((run / "config.json").read_text()))
    assert [k for k in new_keys if k in old_keys] == old_keys  # config.json's keys, in their order
    assert set(new_keys) - set(old_keys) == {"posterior_jitter"}  # and those added since, at their defaults
    assert json.loads((run / "config.json").read_text())["posterior_jitter"] == 0.0
    assert set(state) == {"model", "opt", "opt_d", "data_gen", "noise_gen", "torch_rng", "step", "config", "channels",
                          "world_size"}  # the checkpoint's format: 0.1.0's keys
