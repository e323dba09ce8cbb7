"""Evaluations are never lost and never wait out a signal (issue 31, item 7): an evaluation step whose
row a kill -9 lost is evaluated again on resume, with the same numbers; SIGINT during an evaluation
stops the run within seconds, keeping the step's checkpoint."""

import json
import signal
import subprocess
import sys
import time

from chyvae_ext.runfiles import Run
from chyvae_ext.train import main

TINY = ["--batch-size", "4", "--z-dim", "3", "--hidden", "16", "--nu", "10", "--precision", "fp32",
        "--log-every", "2", "--ckpt-every", "2"]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_an_evaluation_lost_to_a_kill_is_evaluated_on_resume(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY, "--steps", "4", "--eval-every", "4", "--metrics", "none", "--out", str(out)]) == 0
    evaluated = [r for r in rows(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evaluated] == [4]
    # what a kill -9 during that evaluation leaves: the checkpoint of step 4, no eval row, status running
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(out) if r["kind"] != "eval"))
    (out / "status.json").write_text(json.dumps({"state": "running", "step": 4}))
    assert main(["--resume", str(out), "--steps", "6"]) == 0
    again = [r for r in rows(out) if r["kind"] == "eval"]
    assert [r["step"] for r in again] == [4, 6]
    assert again[0] == evaluated[0]  # the same model, images and noise: the same numbers


def test_sigint_during_an_evaluation_stops_within_seconds_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "chyvae_ext.train", *TINY, "--steps", "4", "--eval-every", "2",
           "--metrics", "factor_vae", "--out", str(out)]  # the paper's protocol: minutes on a CPU
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while Run(out).checkpoint(2) is None:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    time.sleep(3)  # inside the evaluation of step 2 now
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert time.time() - sent < 20, "the evaluation was awaited"
    assert proc.returncode == 130
    assert "stopped by SIGINT during the evaluation of step 2: abandoned" in err and "Traceback" not in err
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] == 2
    assert Run(out).checkpoint(2) is not None
    assert not [r for r in rows(out) if r["kind"] == "eval"]  # evaluated on resume instead
