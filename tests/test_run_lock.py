"""One trainer a run directory (issue 31, item 6): a second trainer on a run being trained is refused,
naming the PID holding it; a dead holder's lock is free (the kernel drops it); sweeps' children die
with the sweep."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from chyvae_ext.runfiles import Run
from chyvae_ext.train import main

TINY = ["--batch-size", "4", "--z-dim", "3", "--hidden", "16", "--nu", "10", "--metrics", "none",
        "--precision", "fp32", "--log-every", "1", "--ckpt-every", "2"]


def start_long_run(out):
    cmd = [sys.executable, "-m", "chyvae_ext.train", *TINY, "--steps", "100000", "--eval-every", "100000",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not Run(out).checkpoints():  # trained far enough to be resumable
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.5)
    return proc


def test_a_second_trainer_on_a_running_run_is_refused_naming_the_pid(tmp_path, capsys):
    out = tmp_path / "run"
    proc = start_long_run(out)
    try:
        assert main(["--resume", str(out), "--steps", "100000"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is being trained by another process (PID {proc.pid}, holding {out / '.lock'})" in err
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert main(["--resume", str(out), "--steps", str(json.loads((out / "status.json").read_text())["step"] + 1)]) == 0


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    proc = start_long_run(out)
    proc.kill()
    proc.wait(timeout=60)
    assert (out / ".lock").read_text().strip() == str(proc.pid)  # its PID is still written there
    step = max(int(p.stem.split("_")[1]) for p in Run(out).checkpoints())
    assert main(["--resume", str(out), "--steps", str(step + 1)]) == 0  # and yet the lock is free


def test_lock_and_unlock_in_one_process(tmp_path):
    a, b = Run(tmp_path / "r"), Run(tmp_path / "r")
    a.lock()
    with pytest.raises(ValueError, match=rf"PID {os.getpid()}, holding"):
        b.lock()
    a.unlock()
    b.lock()
    b.unlock()
    b.unlock()  # a second release does nothing


def test_an_unwritable_out_is_named(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refused)  # as a read-only directory answers (root writes anywhere)
    with pytest.raises(ValueError, match=r"--out .*run is not writable: \[Errno 13\] Permission denied"):
        Run(tmp_path / "run").lock()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped) is not training
        return f.read().split()[2] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sweep_killed_by_sigkill_leaves_no_trainer(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(json.dumps({"out": str(tmp_path / "sweep"), "jobs": 1, "threads": 1, "seeds": [0],
                                "common": {"steps": 100000, "batch_size": 4, "z_dim": 3, "hidden": 16,
                                           "log_every": 1, "ckpt_every": 2, "eval_every": 100000,
                                           "metrics": "none", "precision": "fp32"},
                                "runs": [{"model": "chyvae", "nu": [10.0]}]}))
    sweep = subprocess.Popen([sys.executable, "-m", "chyvae_ext.experiments", "sweep", "--grid", str(grid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "sweep" / "chyvae-nu10-seed0"
    deadline = time.time() + 300
    while not Run(run).checkpoints():
        assert sweep.poll() is None and time.time() < deadline
        time.sleep(0.5)
    trainer = int((run / ".lock").read_text())
    assert trainer != sweep.pid and alive(trainer)
    sweep.kill()
    sweep.wait(timeout=60)
    deadline = time.time() + 120
    while alive(trainer):
        assert time.time() < deadline, "the trainer outlived the sweep"
        time.sleep(0.5)
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"  # SIGTERM: it checkpointed
