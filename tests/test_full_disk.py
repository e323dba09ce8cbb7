"""A full disk mid-run (issue 31, item 8): one line naming the file, no temporary file left, status.json
failed with the reason; resumed once there is space, the run ends as one never interrupted."""

import errno
import json

import torch

from chyvae_ext import runfiles
from chyvae_ext.runfiles import Run
from chyvae_ext.train import main

TINY = ["--batch-size", "4", "--z-dim", "3", "--hidden", "16", "--nu", "10", "--precision", "fp32",
        "--log-every", "2", "--ckpt-every", "2", "--eval-every", "6", "--metrics", "none", "--steps", "6"]


def disk_full_at(monkeypatch, step, *, as_torch=False):
    save = torch.save

    def failing(state, path, *args, **kwargs):
        if f"step_{step:08d}" in str(path):
            with open(path, "wb") as f:
                f.write(b"x" * 1000)  # what a write cut short leaves
            if as_torch:
                raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed "
                                   "writing file data/3: file write failed")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(state, path, *args, **kwargs)

    monkeypatch.setattr(runfiles.torch, "save", failing)


def test_a_full_disk_ends_in_one_line_and_a_failed_status(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    disk_full_at(monkeypatch, 4)
    assert main([*TINY, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    ckpt = out / "checkpoints" / "step_00000004.pt"
    assert err == [f"error: no space left on device writing {ckpt}; free the space (or fix the device) and "
                   f"continue with --resume {out}"]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["step"] == 4 and "no space left on device" in status["error"]
    assert not list((out / "checkpoints").glob("*.tmp"))
    assert [p.name for p in Run(out).checkpoints()] == ["step_00000002.pt"]


def test_torchs_writer_failing_is_one_line_too(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    disk_full_at(monkeypatch, 2, as_torch=True)
    assert main([*TINY, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the write failed (is the disk full?) writing ") and "Traceback" not in err
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_resumed_after_space_is_freed_the_run_ends_as_if_uninterrupted(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the two runs' reductions split alike
    assert main([*TINY, "--out", str(tmp_path / "full")]) == 0
    with monkeypatch.context() as mp:
        disk_full_at(mp, 4)
        assert main([*TINY, "--out", str(tmp_path / "cut")]) == 1
    assert main(["--resume", str(tmp_path / "cut")]) == 0
    a = torch.load(Run(tmp_path / "full").checkpoint(6), weights_only=True)["model"]
    b = torch.load(Run(tmp_path / "cut").checkpoint(6), weights_only=True)["model"]
    torch.set_num_threads(threads)
    assert all(torch.equal(a[k], b[k]) for k in a)
