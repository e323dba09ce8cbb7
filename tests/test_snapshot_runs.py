"""tools/snapshot_runs.py: a long run's files and its newest checkpoint staged, paths made relative."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "snapshot_runs.py"


@pytest.fixture
def tool(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("snapshot_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module


def make_run(root, name, state, steps):
    run = root / "experiments" / "runs" / "grid" / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "chyvae", "out": str(run)}))
    (run / "metrics.jsonl").write_text("{}\n")
    for s in steps:
        (run / "checkpoints" / f"step_{s:08d}.pt").write_bytes(b"x")
    ckpt = str(run / "checkpoints" / f"step_{steps[-1]:08d}.pt")
    (run / "status.json").write_text(json.dumps({"state": state, "step": steps[-1], "checkpoint": ckpt}))
    return run


def staged(root):
    return sorted(subprocess.run(["git", "ls-files"], cwd=root, check=True, capture_output=True, text=True).stdout.split())


def test_snapshot_stages_the_newest_checkpoint_and_relative_paths(tool, tmp_path):
    run = make_run(tmp_path, "a", "running", [1000, 2000])
    assert tool.snapshot(run) == "experiments/runs/grid/a: running, checkpoint step_00002000.pt"
    files = staged(tmp_path)
    assert "experiments/runs/grid/a/checkpoints/step_00002000.pt" in files
    assert "experiments/runs/grid/a/checkpoints/step_00001000.pt" not in files
    assert json.loads((run / "config.json").read_text())["out"] == "experiments/runs/grid/a"
    assert json.loads((run / "status.json").read_text())["checkpoint"] == (
        "experiments/runs/grid/a/checkpoints/step_00002000.pt")
    (run / "checkpoints" / "step_00003000.pt").write_bytes(b"y")  # training went on: the older one leaves
    tool.snapshot(run)
    files = staged(tmp_path)
    assert "experiments/runs/grid/a/checkpoints/step_00003000.pt" in files
    assert "experiments/runs/grid/a/checkpoints/step_00002000.pt" not in files


def test_main_snapshots_every_run_and_the_sweep_status(tool, tmp_path, capsys):
    make_run(tmp_path, "a", "finished", [20000])
    make_run(tmp_path, "b", "interrupted", [500])
    grid = tmp_path / "experiments" / "runs" / "grid"
    (grid / "sweep_status.json").write_text("{}")
    assert tool.main([str(grid)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "experiments/runs/grid/a: finished, checkpoint step_00020000.pt",
        "experiments/runs/grid/b: interrupted, checkpoint step_00000500.pt",
    ]
    assert "experiments/runs/grid/sweep_status.json" in staged(tmp_path)
    assert tool.main([]) == 2


def test_max_mb_leaves_a_large_checkpoint_out_and_says_so(tool, tmp_path, capsys):
    run = make_run(tmp_path, "big", "running", [1000])
    (run / "checkpoints" / "step_00001000.pt").write_bytes(b"x" * 3_000_000)
    assert tool.main([str(run.parent), "--max-mb", "2"]) == 0
    assert capsys.readouterr().out.strip() == (
        "experiments/runs/grid/big: running, checkpoint step_00001000.pt left out (3 MB > 2 MB)")
    files = staged(tmp_path)
    assert "experiments/runs/grid/big/checkpoints/step_00001000.pt" not in files
    assert "experiments/runs/grid/big/metrics.jsonl" in files
