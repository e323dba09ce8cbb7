"""A fresh start never mixes into an earlier run (issue 31, item 4): an --out that holds a run is
refused with one line naming the ways out; --overwrite replaces it; a sweep's fresh start replaces
what an attempt that never checkpointed left."""

import json
import subprocess
import sys

import pytest

from chyvae_ext.runfiles import Run
from chyvae_ext.train import TrainConfig, main, train

TINY = ["--steps", "4", "--batch-size", "4", "--log-every", "2", "--eval-every", "4", "--ckpt-every", "2",
        "--precision", "fp32", "--z-dim", "3", "--hidden", "16", "--nu", "10", "--metrics", "none"]


def snapshot(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "tb" not in p.parts and p.name != ".lock"}  # the lock records its last holder


def test_the_same_command_twice_refuses_the_second_and_keeps_the_first(tmp_path):
    """The README's default command run twice (here with a few steps), in a fresh process each time."""
    cmd = [sys.executable, "-m", "chyvae_ext.train", *TINY]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "chyvae-correlated_ellipses-seed0"
    before = snapshot(run)
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines() == [
        f"error: --out {run.relative_to(tmp_path)} holds a run already (config.json, metrics.jsonl, status.json, "
        f"2 checkpoint(s) up to step 4); continue it with --resume {run.relative_to(tmp_path)}, train into "
        "another --out, or pass --overwrite to replace it"]
    assert snapshot(run) == before  # the first run is intact


def test_another_model_into_the_same_out_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main([*TINY, "--out", out]) == 0
    before = snapshot(tmp_path / "run")
    assert main([*TINY, "--out", out, "--model", "betavae"]) == 2
    assert "holds a run already" in capsys.readouterr().err
    assert snapshot(tmp_path / "run") == before


def test_overwrite_replaces_the_earlier_run_entirely(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), steps=4, batch_size=4, log_every=2, eval_every=4, ckpt_every=2,
                      precision="fp32", z_dim=3, hidden=16, nu=10.0, metrics="none"))
    (out / "eval.json").write_text("{}")
    assert main([*TINY, "--out", str(out), "--model", "betavae", "--steps", "2", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == "betavae"
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [2, 2]
    assert [p.name for p in Run(out).checkpoints()] == ["step_00000002.pt"]  # none of the old run's
    assert not (out / "eval.json").exists()


def test_overwrite_with_resume_is_refused(tmp_path, capsys):
    assert main(["--resume", str(tmp_path), "--overwrite"]) == 2
    assert "--overwrite replaces a run and --resume continues it: give one of them" in capsys.readouterr().err


def test_a_directory_with_only_sweep_options_is_a_fresh_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "sweep_options.json").write_text(json.dumps({"steps": 2}))
    assert Run(out).held() == []
    assert main([*TINY, "--out", str(out), "--steps", "2"]) == 0
    assert (out / "sweep_options.json").exists()


@pytest.mark.parametrize("left", ["config.json", "metrics.jsonl", "status.json"])
def test_held_names_what_a_run_left(tmp_path, left):
    (tmp_path / left).write_text("{}")
    assert Run(tmp_path).held() == [left]


def test_resume_refuses_fewer_steps_than_done_and_leaves_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out)]) == 0
    before = (out / "config.json").read_text()
    assert main(["--resume", str(out), "--steps", "2"]) == 2
    assert "--steps 2 is fewer than the 4 steps the run has done; give --steps 4 or more" in capsys.readouterr().err
    assert (out / "config.json").read_text() == before


def test_resume_with_another_out_is_refused_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out)]) == 0
    assert main(["--resume", str(out), "--out", str(tmp_path / "other")]) == 2
    assert "cannot go with it (to branch a run, copy its directory" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_status_says_the_step_of_each_checkpoint_while_running(tmp_path, monkeypatch):
    from chyvae_ext.train import Trainer

    seen = []
    checkpoint = Trainer.checkpoint

    def recording(self):
        checkpoint(self)
        seen.append(json.loads((self.members[0].run.root / "status.json").read_text()))

    monkeypatch.setattr(Trainer, "checkpoint", recording)
    assert main([*TINY, "--out", str(tmp_path / "run")]) == 0
    assert [(s["state"], s["step"]) for s in seen] == [("running", 2), ("running", 4)]
    assert seen[0]["checkpoint"].endswith("step_00000002.pt")
