"""No non-finite checkpoint is ever written (issue 31, item 5): a run that diverges between two rows,
or whose last update made its weights non-finite, fails at the next checkpoint instead of writing
it, and its status names the last finite checkpoint and its step."""

import json

import torch

from chyvae_ext.runfiles import Run
from chyvae_ext.train import Trainer, main

TINY = ["--batch-size", "8", "--z-dim", "4", "--hidden", "32", "--metrics", "none", "--precision", "fp32"]


def all_finite(path):
    state = torch.load(path, weights_only=True)["model"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_divergence_between_rows_writes_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--lr", "100", "--ckpt-every", "2", "--log-every", "10", "--steps", "30",
                 "--eval-every", "30", "--out", str(out)]) == 1
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "non-finite loss" in status["error"]
    assert all(all_finite(p) for p in Run(out).checkpoints())
    assert "last finite checkpoint: none (no finite checkpoint was written)" in capsys.readouterr().err


def test_weights_turned_non_finite_fail_at_the_checkpoint_naming_the_last_finite_one(tmp_path, monkeypatch):
    out = tmp_path / "run"
    step = Trainer.step

    def poisoning(self):
        step(self)
        if self.step_count == 4:  # the update of step 4 leaves a NaN weight; its loss was finite
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")

    monkeypatch.setattr(Trainer, "step", poisoning)
    assert main([*TINY, "--ckpt-every", "2", "--log-every", "2", "--steps", "8", "--eval-every", "8",
                 "--out", str(out)]) == 1
    status = json.loads((out / "status.json").read_text())
    last = out / "checkpoints" / "step_00000002.pt"
    assert status == {"state": "failed", "step": 4,
                      "error": f"non-finite parameters at step 4; last finite checkpoint: {last} (step 2)"}
    assert [p.name for p in Run(out).checkpoints()] == ["step_00000002.pt"] and all_finite(last)


def test_a_finite_run_checkpoints_as_before(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY, "--ckpt-every", "2", "--log-every", "2", "--steps", "4", "--eval-every", "4",
                 "--out", str(out), "--keep-checkpoints", "5"]) == 0
    assert [p.name for p in Run(out).checkpoints()] == ["step_00000002.pt", "step_00000004.pt"]
