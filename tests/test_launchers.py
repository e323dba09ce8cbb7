"""Sweep launchers: a local Ray cluster with a run that fails once and resumes, submitit's local executor,
the shared Job, and the refusals."""

import json
import os
import textwrap
import time

import pytest

from chyvae_ext.experiments.__main__ import main as experiments_main
from chyvae_ext.experiments.grid import expand_grid
from chyvae_ext.experiments.launchers import Job, require
from chyvae_ext.experiments.sweep import sweep

TINY = {"steps": 16, "batch_size": 8, "log_every": 4, "eval_every": 8, "ckpt_every": 4, "precision": "fp32",
        "z_dim": 4, "hidden": 32, "nu": 10.0, "metrics": "none"}

# Imported by every Python process started with this directory on PYTHONPATH: the training process of the run
# named in CHYVAE_TEST_FAIL_ONCE (its directory is in the command line) dies (exit 3) right after the pictures of its
# first evaluation (after that step's checkpoint), once: the marker file says it has. Other processes (Ray's own)
# import nothing more.
FAIL_ONCE = textwrap.dedent('''
    import os
    import sys

    _target = os.environ.get("CHYVAE_TEST_FAIL_ONCE", "")
    _name, _, _marker = _target.partition(":")
    if _name and any(_name in arg for arg in sys.argv) and not os.path.exists(_marker):
        import chyvae_ext.plots as _plots

        _save_curves = _plots.save_curves

        def save_curves(metrics_path, png_path):
            _save_curves(metrics_path, png_path)
            open(_marker, "w").close()
            os._exit(3)

        _plots.save_curves = save_curves
''')


def rows(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def three_run_grid(tmp_path, **keys):
    return expand_grid({"out": str(tmp_path / "sweep"), "common": TINY, "seeds": [0],
                        "runs": [{"model": "chyvae", "nu": [10.0, 20.0]}, {"model": "betavae"}], **keys})


def test_ray_runs_a_grid_and_a_failed_run_resumes_on_its_retry(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_ONCE)
    marker = tmp_path / "failed_once"
    grid = expand_grid({"out": str(tmp_path / "sweep"), "common": TINY, "seeds": [0], "retries": 1,
                        "resources": {"cpus": 1}, "runs": [{"model": "chyvae"}, {"model": "betavae"}]})
    victim = grid.runs[1].name
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("CHYVAE_TEST_FAIL_ONCE", f"{victim}:{marker}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local cluster; the launcher joins it
    lines = []
    try:
        outcome = sweep(grid, launcher="ray", echo=lines.append)
    finally:
        ray.shutdown()
    assert outcome == {r.name: "finished" for r in grid.runs}, lines
    assert marker.exists()  # the victim's first attempt died
    failed_at = marker.stat().st_mtime
    train_rows = rows(grid.out / victim)
    assert [r["step"] for r in train_rows] == [4, 8, 12, 16]
    # steps 4 and 8 are the first attempt's rows, kept: the retry resumed from step 8's checkpoint
    assert [r["time"] < failed_at for r in train_rows] == [True, True, False, False]
    assert [r["step"] for r in rows(grid.out / victim, "eval")] == [8, 16]
    log = (grid.out / victim / "train.log").read_text()
    assert log.count("step 4/16") == 1 and log.count("finished 16 steps") == 1
    assert sum("submitted" in line for line in lines) == 2
    assert sum(" finished " in line for line in lines) == 2
    status = json.loads((grid.out / "sweep_status.json").read_text())
    assert len(status["finished"]) == 2 and status["running"] == [] and status["pending"] == []
    # a second sweep skips them all
    assert set(sweep(grid, launcher="ray", echo=lines.append).values()) == {"skipped"}


def test_submitit_local_executor_runs_a_two_run_grid(tmp_path):
    pytest.importorskip("submitit")
    grid = expand_grid({"out": str(tmp_path / "sweep"), "common": dict(TINY, steps=8), "jobs": 2,
                        "runs": [{"model": "betavae", "beta": [1.0, 4.0]}], "slurm": {"time": 10}})
    lines = []
    outcome = sweep(grid, launcher="slurm", slurm_cluster="local", echo=lines.append)
    assert outcome == {r.name: "finished" for r in grid.runs}, lines
    for r in grid.runs:
        assert [row["step"] for row in rows(grid.out / r.name)] == [4, 8]
        assert json.loads((grid.out / r.name / "status.json").read_text())["state"] == "finished"
    assert sum("submitted as" in line for line in lines) == 2
    assert any((grid.out / "slurm").rglob("*_submitted.pkl"))  # submitit's own files, under OUT/slurm


def test_job_command_follows_the_runs_on_disk(tmp_path):
    grid = three_run_grid(tmp_path)
    job = Job([grid.runs[0]], grid.out, "new")
    run_dir = grid.out / grid.runs[0].name
    assert job.command()[-5:] == ["--config", str(run_dir / "sweep_options.json"), "--out", str(run_dir), "--overwrite"]
    job.prepare()
    assert json.loads((run_dir / "sweep_options.json").read_text()) == grid.runs[0].options
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step_00000004.pt").write_bytes(b"")
    (run_dir / "config.json").write_text("{}")
    assert job.command()[-4:] == ["--resume", str(run_dir), "--steps", "16"]  # a retried job resumes
    ensemble = Job(grid.runs[:2], grid.out, "new")
    assert "--resume" not in ensemble.command() and ensemble.command()[3] == "--ensemble"
    assert job.outcomes(0) == {grid.runs[0].name: "finished"} and job.outcomes(130) == {grid.runs[0].name: "interrupted"}
    assert job.outcomes(3) == {grid.runs[0].name: "failed"}


def test_a_missing_extra_is_named(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.delitem(__import__("sys").modules, "ray", raising=False)
    with pytest.raises(ValueError, match=r"--launcher ray needs the 'ray' package: pip install 'chyvae_ext\[ray\]'"):
        require("ray", "ray")


@pytest.mark.parametrize(("keys", "match"), [
    ({"launcher": "kubernetes"}, "grid: launcher must be one of local, ray, slurm, got 'kubernetes'"),
    ({"retries": -1}, "grid: retries must be a non-negative integer, got -1"),
    ({"resources": {"cpus": -2}}, r"grid: resources.cpus must be a number >= 0, got -2"),
    ({"resources": {"tpus": 1}}, "grid: resources: unknown key.s. tpus; keys: cpus, gpus"),
    ({"resources": 4}, "grid: resources must be a mapping, got 4"),
    ({"slurm": {"time": 0}}, r"grid: slurm.time \(minutes\) must be a positive integer, got 0"),
    ({"slurm": {"partition": 3}}, "grid: slurm.partition must be a string, got 3"),
])
def test_bad_launcher_keys_in_a_grid(tmp_path, keys, match):
    with pytest.raises(ValueError, match=match):
        three_run_grid(tmp_path, **keys)


def test_launcher_options_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"out": "sweep", "common": TINY, "runs": [{"model": "betavae"}]}))
    assert experiments_main(["sweep", "--grid", str(path), "--launcher", "ray", "--dry-run"]) == 0
    assert "1 to run (0 resumed), on ray" in capsys.readouterr().out
    assert experiments_main(["sweep", "--grid", str(path), "--retries", "-1"]) == 2
    assert "--retries must be a non-negative integer, got -1" in capsys.readouterr().err
    assert experiments_main(["sweep", "--grid", str(path), "--slurm-time", "0"]) == 2
    assert "--slurm-time must be a positive integer, got 0" in capsys.readouterr().err


def test_a_slurm_task_warned_of_its_end_checkpoints_and_requeues_itself_to_resume(tmp_path):
    submitit = pytest.importorskip("submitit")
    from chyvae_ext.experiments.launchers import SlurmTask

    grid = expand_grid({"out": str(tmp_path / "sweep"), "common": dict(TINY, steps=100000, ckpt_every=1000),
                        "runs": [{"model": "betavae"}]})
    job = Job([grid.runs[0]], grid.out, "new")
    task = SlurmTask(job, {"OMP_NUM_THREADS": "1"})
    task.proc = job.start(dict(os.environ, OMP_NUM_THREADS="1"))  # what __call__ starts, without its wait
    run_dir = grid.out / grid.runs[0].name
    deadline = time.time() + 240
    while not (run_dir / "metrics.jsonl").exists() and time.time() < deadline and task.proc.poll() is None:
        time.sleep(0.2)
    requeued = task.checkpoint()  # what submitit calls on SLURM's warning before a time-out or preemption
    assert task.proc.returncode == 130
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and (run_dir / "checkpoints" / f"step_{status['step']:08d}.pt").is_file()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    again = requeued.function
    assert isinstance(again, SlurmTask) and again.job.command()[-4:] == ["--resume", str(run_dir), "--steps", "100000"]
