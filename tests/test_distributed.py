"""One run across processes (torchrun, gloo on the CPU), and resuming past damaged checkpoints."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from chyvae_ext.build import initial_model, open_dataset
from chyvae_ext.config import TrainConfig, check_config
from chyvae_ext.distributed import Distributed, rank_seed
from chyvae_ext.runfiles import load_checkpoint
from chyvae_ext.train import main, train

TORCHRUN = shutil.which("torchrun")
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not on PATH")

TINY = [
    "--batch-size", "8", "--z-dim", "4", "--hidden", "32", "--nu", "10", "--precision", "fp32", "--metrics", "none",
]


def torchrun(args, *, nproc=2, **kwargs):
    # "--" before the module: torchrun would otherwise read the trainer's --nu as its own --numa-binding
    cmd = [TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", "--", "chyvae_ext.train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def rows(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_rank_seed_keeps_rank_0_and_separates_the_others():
    assert rank_seed(7, 0) == 7
    seeds = {rank_seed(s, r) for s in range(50) for r in range(1, 9)}
    assert len(seeds) == 50 * 8 and not seeds & set(range(50))
    assert all(0 <= s < 2**63 for s in seeds)  # what torch.Generator.manual_seed takes


def test_one_process_distributed_is_a_no_op():
    d = Distributed.from_env("cpu") if "WORLD_SIZE" not in os.environ else Distributed()
    t = torch.tensor([1.0, 2.0])
    assert (d.world_size, d.rank, d.is_main, d.active) == (1, 0, True, False)
    assert d.mean_(t) is t and t.tolist() == [1.0, 2.0]
    assert d.any(True) and not d.any(False)
    assert d.gather("x") == ["x"] and d.broadcast(3) == 3 and d.device("cuda") == "cuda"


def test_a_batch_that_does_not_divide_among_the_processes_is_refused():
    with pytest.raises(ValueError, match=r"--batch-size 50 does not divide among 3 processes .*multiple of 3"):
        check_config(TrainConfig(world_size=3).resolved())


def test_compile_with_several_processes_is_refused():
    with pytest.raises(ValueError, match="--compile is not supported with 2 processes"):
        check_config(TrainConfig(world_size=2, compile=True, batch_size=50).resolved())


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


def assert_one_process_step(config, state, world=2):
    """``state`` (a checkpoint after one step) holds the parameters and the gradient (Adam's first moment) of one
    Adam step of a lone model, written out here, on the union of the ``world`` processes' batches and noise (each
    process's drawn from its rank's generators) as one global batch: each tensor within 1e-5 relative (norm-wise;
    element by element, Adam's first step lr * g / (|g| + eps) turns float32 rounding in a gradient near eps into
    a few 1e-7 in a parameter, whichever process count computed it)."""
    c = TrainConfig(**{k: v for k, v in config.items() if k != "out"}).resolved()
    dataset = open_dataset(c)
    model = initial_model(c, dataset.channels)
    opt = torch.optim.Adam(model.parameters(), lr=c.lr, betas=(0.9, 0.999))
    local = c.batch_size // world
    xs, noises = [], []
    for rank in range(world):
        gen = torch.Generator().manual_seed(rank_seed(c.seed, rank))
        xs.append(next(dataset.batches(local, device=torch.device("cpu"), generator=gen)))
        noises.append(model.sample_noise(local, "cpu", torch.Generator().manual_seed(rank_seed(c.seed + 1, rank))))
    noise = tuple(torch.cat(parts) for parts in zip(*noises, strict=True))
    model.loss(torch.cat(xs), noise=noise)["loss"].sum().backward()
    opt.step()
    for name, value in model.state_dict().items():
        assert relative_error(state["model"][name], value) < 1e-5, name
    moments = [s["exp_avg"] for _, s in sorted(state["opt"]["state"].items())]
    for (name, p), moment in zip(model.named_parameters(), moments, strict=True):
        grad = opt.state[p]["exp_avg"]  # 0.1 g: the gradients averaged across processes, not summed
        assert relative_error(moment, grad) < 1e-5, name


@needs_torchrun
@pytest.mark.parametrize("model", ["betavae", "chyvae"])
def test_two_processes_take_the_one_process_step_on_the_union_of_their_batches(tmp_path, model):
    out = tmp_path / "run"
    proc = torchrun(["--model", model, "--steps", "1", "--eval-every", "1", *TINY, "--out", str(out)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    two = torch.load(out / "checkpoints" / "step_00000001.pt", weights_only=False)
    assert two["world_size"] == 2 and len(two["ranks"]) == 2

    assert_one_process_step(config, two)
    assert rows(out)[0]["step"] == 1


@needs_torchrun
def test_an_ensemble_under_torchrun_steps_each_member_as_its_lone_run(tmp_path):
    members = [tmp_path / "a", tmp_path / "b"]
    for run, options in zip(members, [{"model": "chyvae", "nu": 10.0, "seed": 0}, {"model": "chyvae", "nu": 20.0, "seed": 3}],
                            strict=True):
        run.mkdir()
        (run / "sweep_options.json").write_text(json.dumps(options))
    tiny = [a for a in TINY if a not in ("--nu", "10")]
    proc = torchrun(["--ensemble", *map(str, members), "--steps", "1", "--eval-every", "1", *tiny])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    for run in members:
        config = json.loads((run / "config.json").read_text())
        assert config["world_size"] == 2
        assert_one_process_step(config, torch.load(run / "checkpoints" / "step_00000001.pt", weights_only=False))


@needs_torchrun
def test_two_processes_train_factorvae(tmp_path):
    out = tmp_path / "run"
    proc = torchrun(["--model", "factorvae", "--steps", "2", "--log-every", "1", "--eval-every", "2", *TINY,
                     "--out", str(out)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    train_rows = rows(out)
    assert [r["step"] for r in train_rows] == [1, 2]
    assert all(r["disc_loss"] > 0 for r in train_rows)


@needs_torchrun
def test_two_process_run_resumes_after_sigterm(tmp_path):
    out = tmp_path / "run"
    args = ["--model", "chyvae", "--steps", "100000", "--log-every", "2", "--ckpt-every", "1000",
            "--eval-every", "100000", *TINY, "--out", str(out)]
    proc = torchrun(args, start_new_session=True)
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun and its two workers, as a scheduler stops a job
    _, err = proc.communicate(timeout=240)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] >= 2, err
    stopped = status["step"]
    assert load_checkpoint(out / "checkpoints" / f"step_{stopped:08d}.pt", torch.device("cpu"))["step"] == stopped
    assert "torchrun --nproc-per-node 2 -m chyvae_ext.train --resume" in err

    resumed = torchrun(["--resume", str(out), "--steps", str(stopped + 4), "--log-every", "2"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    status = json.loads((out / "status.json").read_text())
    assert status == {**status, "state": "finished", "step": stopped + 4}
    steps = [r["step"] for r in rows(out)]
    expected = sorted({*range(2, stopped + 5, 2), stopped + 4})  # rows to the signal, then from it on: no restart
    assert steps == expected

    assert main(["--resume", str(out), "--steps", str(stopped + 8)]) == 2


FAST = dict(steps=12, batch_size=8, log_every=4, eval_every=12, ckpt_every=4, precision="fp32", z_dim=4, hidden=32,
            nu=10.0, metrics="none")


def test_a_truncated_newest_checkpoint_is_skipped_on_resume(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(TrainConfig(out=str(full), **FAST))
    train(TrainConfig(out=str(cut), **dict(FAST, steps=8)))
    newest = cut / "checkpoints" / "step_00000008.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match=r"skipping checkpoint .*step_00000008\.pt: it cannot be loaded"):
        assert main(["--resume", str(cut), "--steps", "12"]) == 0
    assert (cut / "checkpoints" / "step_00000008.pt.damaged").is_file()  # set aside, not deleted
    assert [r["step"] for r in rows(cut)] == [4, 8, 12]  # from step 4: step 8 trained again
    a = torch.load(full / "checkpoints" / "step_00000012.pt", weights_only=False)["model"]
    b = torch.load(cut / "checkpoints" / "step_00000012.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_run_with_no_loadable_checkpoint_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), **dict(FAST, steps=4)))
    for ckpt in (run / "checkpoints").glob("step_*.pt"):
        ckpt.write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        assert main(["--resume", str(run), "--steps", "8"]) == 2
    assert "none of the 1 checkpoint(s)" in capsys.readouterr().err


def test_a_checkpoint_written_by_two_processes_is_not_resumed_by_one(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), **dict(FAST, steps=4)))
    path = run / "checkpoints" / "step_00000004.pt"
    state = torch.load(path, weights_only=False)
    torch.save({**state, "world_size": 2, "ranks": [{}, {}]}, path)
    assert main(["--resume", str(run), "--steps", "8"]) == 2
    err = capsys.readouterr().err
    assert "written by 2 process(es) and this run has 1" in err and "torchrun --nproc-per-node 2" in err


def test_a_run_whose_status_says_running_but_whose_process_is_gone_resumes(tmp_path):
    from chyvae_ext.experiments.grid import expand_grid
    from chyvae_ext.experiments.sweep import sweep

    grid = expand_grid({"out": str(tmp_path / "sweep"), "common": dict(FAST), "runs": [{"model": "chyvae"}]})
    run = grid.out / grid.runs[0].name
    train(TrainConfig(out=str(run), **dict(FAST, steps=8)))
    (run / "status.json").write_text(json.dumps({"state": "running", "step": 8}))  # as a killed process leaves it
    assert sweep(grid, echo=lambda line: None) == {grid.runs[0].name: "finished"}
    assert json.loads((run / "status.json").read_text())["step"] == 12
    assert [r["step"] for r in rows(run)] == [4, 8, 12]
