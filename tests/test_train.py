"""The training CLI: run directory, resume equals uninterrupted, signals, guards, bad options."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from chyvae_ext.metrics import PROTOCOLS
from chyvae_ext.metrics.factor_vae import Protocol
from chyvae_ext.train import TrainConfig, main, train

# The FactorVAE metric runs at every evaluation; in these tests with a small protocol (same code).
SMALL_PROTOCOL = Protocol(votes_per_sample=16, train_votes=20, eval_votes=20, std_images=100, std_ddof=0, prune_below=0.0)


@pytest.fixture(autouse=True)
def small_metric_protocol(monkeypatch):
    monkeypatch.setitem(PROTOCOLS, "chyvae", SMALL_PROTOCOL)

FAST = {
    "steps": 12,
    "batch_size": 8,
    "log_every": 4,
    "eval_every": 12,
    "ckpt_every": 4,
    "precision": "fp32",
    "z_dim": 4,
    "hidden": 32,
    "nu": 10.0,
}


def final_params(run_dir):
    ckpt = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(ckpt, weights_only=False)["model"]


@pytest.mark.parametrize("model", ["chyvae", "betavae", "factorvae"])
def test_run_directory(tmp_path, model):
    status = train(TrainConfig(model=model, out=str(tmp_path / "run"), **FAST))
    run = tmp_path / "run"
    assert status["state"] == "finished" and status["step"] == 12
    for name in (
        "config.json",
        "metrics.jsonl",
        "status.json",
        "reconstructions.png",
        "samples.png",
        "traversals.png",
        "traversals.gif",
        "curves.png",
    ):
        assert (run / name).stat().st_size > 0, name
    assert any((run / "tb").iterdir())
    all_rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in all_rows if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert all(r["steps_per_s"] > 0 and r["neg_elbo"] > 0 for r in rows)
    evals = [r for r in all_rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [12] and evals[0]["neg_elbo"] > evals[0]["recon"] > 0
    assert 0 <= evals[0]["factor_vae"] <= 1 and evals[0]["metric_seconds"] > 0  # the default --metrics
    term = {"chyvae": "regularizer", "betavae": "kl", "factorvae": "tc"}[model]
    assert term in rows[0]
    assert len(list((run / "checkpoints").glob("step_*.pt"))) == 3  # keep_checkpoints
    config = json.loads((run / "config.json").read_text())
    assert config["z_dim"] == 4 and config["model"] == model


@pytest.mark.parametrize("model", ["chyvae", "factorvae"])
def test_resume_equals_uninterrupted(tmp_path, model):
    train(TrainConfig(model=model, out=str(tmp_path / "full"), **FAST))
    half = dict(FAST, steps=8)
    train(TrainConfig(model=model, out=str(tmp_path / "resumed"), **half))
    assert main(["--resume", str(tmp_path / "resumed"), "--steps", "12"]) == 0
    a, b = final_params(tmp_path / "full"), final_params(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise on the CPU
    rows = [json.loads(r) for r in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [4, 8, 12]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_leave_a_loadable_checkpoint(tmp_path, sig):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "chyvae_ext.train",
        "--steps",
        "100000",
        "--batch-size",
        "8",
        "--z-dim",
        "4",
        "--hidden",
        "32",
        "--nu",
        "10",
        "--log-every",
        "2",
        "--ckpt-every",
        "1000",
        "--eval-every",
        "100000",
        "--precision",
        "fp32",
        "--metrics",
        "none",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] >= 2
    state = torch.load(status["checkpoint"], weights_only=False)
    assert state["step"] == status["step"]
    assert main(["--resume", str(out), "--steps", str(status["step"] + 2), "--log-every", "1"]) == 0


def test_non_finite_loss_stops_the_run(tmp_path, monkeypatch, capsys):
    from chyvae_ext.models import BetaVAE

    real = BetaVAE.loss

    def poisoned(self, x, *, generator=None, noise=None):
        out = real(self, x, generator=generator, noise=noise)
        if self.training and getattr(self, "calls", 0) >= 6:
            out["kl"] = out["kl"] * float("nan")
            out["loss"] = out["loss"] + out["kl"]
        self.calls = getattr(self, "calls", 0) + 1
        return out

    monkeypatch.setattr(BetaVAE, "loss", poisoned)
    status = train(TrainConfig(model="betavae", out=str(tmp_path / "run"), **FAST))
    assert status["state"] == "failed" and status["step"] == 8
    assert "non-finite loss within steps 5..8" in status["error"] and "kl" in status["error"]
    assert "step_00000004.pt" in status["error"]  # the last good checkpoint is named and kept
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt")] == ["step_00000004.pt"]
    assert "error: non-finite loss" in capsys.readouterr().err


def test_config_file_and_flags(tmp_path):
    (tmp_path / "c.yaml").write_text("model: betavae\nbeta: 2.0\nsteps: 4\nlog_every: 2\n")
    args = [
        "--config",
        str(tmp_path / "c.yaml"),
        "--beta",
        "6",
        "--out",
        str(tmp_path / "run"),
        "--batch-size",
        "4",
        "--z-dim",
        "3",
        "--hidden",
        "16",
        "--precision",
        "fp32",
        "--eval-every",
        "4",
        "--ckpt-every",
        "4",
    ]
    assert main(args) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "betavae" and config["beta"] == 6.0 and config["steps"] == 4


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--nu", "8", "--z-dim", "10"], "--nu must be greater than z_dim - 1 = 9 for CHyVAE, got 8.0"),
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
        (["--dataset", "mnist"], "--dataset mnist: unknown dataset 'mnist'"),
        (["--dataset", "celeba"], "--dataset celeba: celeba: root is required"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
        (["--config", "/nonexistent.yaml"], "--config: no file at /nonexistent.yaml"),
        (["--resume", "/nonexistent_run"], "--resume /nonexistent_run: no config.json there"),
        (["--metrics", "fvae"], "--metrics must be a comma-separated list of factor_vae, mig, sap, dci"),
    ],
)
def test_bad_options_fail_before_training(tmp_path, capsys, args, match):
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_with_other_channels_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "gray.npz", images=(rng.random((20, 64, 64)) * 255).astype(np.uint8))
    np.savez(tmp_path / "rgb.npz", images=(rng.random((20, 64, 64, 3)) * 255).astype(np.uint8))
    train(TrainConfig(model="betavae", dataset="npz", data_root=str(tmp_path / "gray.npz"), out=str(tmp_path / "run"),
                      **dict(FAST, steps=4)))
    args = ["--resume", str(tmp_path / "run"), "--data-root", str(tmp_path / "rgb.npz")]  # the same --dataset
    assert main(args) == 2
    assert "has 3-channel images, but the run in" in capsys.readouterr().err


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--out", str(blocker / "run")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_unknown_config_option(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"modle": "chyvae"}))
    assert main(["--config", str(tmp_path / "c.json")]) == 2
    assert "unknown option(s) modle" in capsys.readouterr().err


def test_default_config_is_the_quick_chyvae_run():
    c = TrainConfig().resolved()
    assert (c.model, c.dataset, c.z_dim, c.hidden) == ("chyvae", "correlated_ellipses", 10, 128)
    assert c.out == os.path.join("runs", "chyvae-correlated_ellipses-seed0")


@pytest.mark.parametrize(("flags", "fast"), [
    ({"avx2", "avx512f"}, False),  # bf16 emulated: half the speed of fp32 (RESULTS.md)
    ({"avx512f", "avx512_bf16"}, True),
    ({"avx512f", "amx_bf16", "amx_tile"}, True),
])
def test_fast_bf16_on_the_cpu_follows_its_flags(monkeypatch, flags, fast):
    from chyvae_ext import config as config_mod

    monkeypatch.setattr(config_mod, "cpu_flags", lambda: flags)
    assert config_mod.fast_bf16("cpu") is fast
    assert TrainConfig(device="cpu").resolved().precision == ("bf16" if fast else "fp32")


def test_cpu_flags_reads_this_machine():
    from chyvae_ext.config import cpu_flags

    flags = cpu_flags()
    assert flags is None or "fpu" in flags or any(f.startswith(("sse", "asimd", "fp")) for f in flags)


def test_init_option_from_a_config_file(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("init: he\n")
    assert main(["--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "--init must be one of torch, glorot, got 'he'" in capsys.readouterr().err
    status = train(TrainConfig(model="betavae", init="glorot", out=str(tmp_path / "ok"), **dict(FAST, steps=4)))
    assert status["state"] == "finished"
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["init"] == "glorot"


def test_flush_denormals_flushes_on_the_cpu_inside_and_not_after():
    from chyvae_ext.train import flush_denormals

    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 denormal (below 1.2e-38), made outside
    assert float(tiny * 1.0) > 0
    with flush_denormals(torch.device("cpu")):
        assert float(tiny * 1.0) == 0.0  # read as zero inside
    assert float(tiny * 1.0) > 0  # the process's default again
    with flush_denormals(torch.device("meta")):  # another device: the CPU's arithmetic is left alone
        assert float(tiny * 1.0) > 0


def test_training_runs_under_flush_denormals(tmp_path, monkeypatch):
    import contextlib

    import chyvae_ext.train as train_mod

    devices = []

    @contextlib.contextmanager
    def spy(device):
        devices.append(device)
        yield

    monkeypatch.setattr(train_mod, "flush_denormals", spy)
    train(TrainConfig(model="betavae", out=str(tmp_path / "run"), **dict(FAST, steps=2)))
    assert devices == [torch.device("cpu")]
