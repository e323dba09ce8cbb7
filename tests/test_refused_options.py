"""What a run refuses before it allocates or changes anything, and what its readers skip (issue 31,
items 9 and 14): sizes beyond the machine's memory, numbers beyond float32, run files that are
damaged or foreign, a resume that would change the model, a damaged newest checkpoint under
evaluate and in one member of an ensemble, and a signal during evaluate."""

import json
import re
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from chyvae_ext.config import STEP_BYTES_PER_PIXEL, TrainConfig, check_memory, device_memory
from chyvae_ext.evaluate import load_run
from chyvae_ext.evaluate import main as evaluate_main
from chyvae_ext.experiments.collect import collect_runs
from chyvae_ext.runfiles import Run
from chyvae_ext.train import main as train_main

TINY = ["--batch-size", "4", "--z-dim", "3", "--hidden", "16", "--nu", "10", "--precision", "fp32",
        "--log-every", "2", "--ckpt-every", "2", "--eval-every", "4", "--metrics", "none"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert train_main([*TINY, "--steps", "4", "--out", str(out)]) == 0
    return out


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_device_memory_of_the_cpu_is_the_machines_ram():
    import os

    assert device_memory("cpu") == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize(("flag", "value", "match"), [
    ("--batch-size", "1000000000", r"--batch-size 1000000000: a training step needs about [\d,]+ GiB .* more than "
                                   r"the [\d,]+ GiB of --device cpu; use a smaller --batch-size"),
    ("--num-samples", "1000000000000", r"--num-samples 1000000000000: the samples of one batch need at least "
                                       r"[\d,]+ GiB, more than the [\d,]+ GiB of --device cpu"),
    ("--dataset-size", "1000000000", r"--dataset-size 1000000000: the fixed set's images need 3,815 GiB, more than "
                                     r"the [\d,]+ GiB of --device cpu; use a smaller --dataset-size"),
])
def test_a_size_beyond_the_machines_memory_is_refused_before_anything_is_allocated(tmp_path, capsys, flag, value,
                                                                                   match):
    assert train_main(["--steps", "2", flag, value, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err
    assert not (tmp_path / "r").exists()


def test_check_memory_refuses_exactly_past_the_estimate(monkeypatch):
    per_image = 64 * 64 * STEP_BYTES_PER_PIXEL
    monkeypatch.setattr("chyvae_ext.config.device_memory", lambda device: 100 * per_image)
    check_memory(TrainConfig(batch_size=100).resolved())
    with pytest.raises(ValueError, match=r"--batch-size 101: a training step needs about"):
        check_memory(TrainConfig(batch_size=101).resolved())
    check_memory(TrainConfig(dataset_size=100 * STEP_BYTES_PER_PIXEL).resolved())  # uint8 pixels
    with pytest.raises(ValueError, match=r"--dataset-size 19001: the fixed set's images need"):
        check_memory(TrainConfig(dataset_size=100 * STEP_BYTES_PER_PIXEL + 1).resolved())


@pytest.mark.parametrize("flag", ["--lr", "--nu", "--beta", "--gamma"])
def test_a_number_beyond_float32_is_refused_naming_the_flag(tmp_path, capsys, flag):
    assert train_main(["--steps", "2", flag, "1e300", "--out", str(tmp_path / "r")]) == 2
    assert f"error: {flag} must be at most 3.403e+38 (the largest float32" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "match"), [
    (["--z-dim", "5"], r"--resume .*: --z-dim 5 would change the run, trained with --z-dim 3"),
    (["--hidden", "32"], r"--hidden 32 would change the run, trained with --hidden 16"),
    (["--model", "betavae"], r"--model 'betavae' would change the run, trained with --model 'chyvae'"),
    (["--dataset", "shapes2d"], r"--dataset 'shapes2d' would change the run, trained with --dataset"),
])
def test_resume_refuses_a_flag_that_changes_the_model_naming_both_values(trained, capsys, flags, match):
    before = (trained / "config.json").read_text()
    assert train_main(["--resume", str(trained), "--steps", "6", *flags]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert (trained / "config.json").read_text() == before


def test_resume_takes_the_same_value_of_a_fixed_option_and_a_new_schedule(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    assert train_main(["--resume", str(run), "--steps", "6", "--z-dim", "3", "--log-every", "3"]) == 0
    assert json.loads((run / "status.json").read_text())["step"] == 6


@pytest.mark.parametrize(("text", "match"), [
    ('{"model": ', r"config.json is not valid JSON \(line 1, column 11: Expecting value\)"),
    ('["chyvae"]', r"config.json must hold a JSON object of options, got list"),
    ('{"model": "chyvae", "zz": 1}', r"config.json: unknown option\(s\) zz \(written by another version"),
])
def test_a_damaged_or_foreign_config_json_is_named_by_resume_and_evaluate(trained, tmp_path, capsys, text, match):
    run = copy_run(trained, tmp_path / "run")
    (run / "config.json").write_text(text)
    assert train_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume: {run}/config.json") or err.startswith(f"error: --resume {run}/config")
    assert re.search(match, err) and err.count("\n") == 1
    assert evaluate_main([str(run), "--metrics", "none", "--no-pictures"]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_an_unknown_key_in_sweep_options_is_refused_by_ensemble(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "sweep_options.json").write_text(json.dumps({"model": "betavae", "seeed": 1}))
    assert train_main(["--ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert f"--ensemble {tmp_path / 'a' / 'sweep_options.json'}: unknown option(s) seeed" in err


def test_collect_says_which_run_it_leaves_out_for_a_foreign_config(trained, tmp_path):
    copy_run(trained, tmp_path / "root" / "good")
    bad = copy_run(trained, tmp_path / "root" / "bad")
    (bad / "config.json").write_text(json.dumps({"model": "chyvae", "zz": 1}))
    with pytest.warns(RuntimeWarning, match=rf"collect: leaving out {bad}: .*unknown option\(s\) zz"):
        _, rows = collect_runs(tmp_path / "root", tmp_path / "csv", score=False)
    assert [r["run"] for r in rows] == ["good"]


def test_evaluate_skips_a_damaged_newest_checkpoint_and_leaves_it_in_place(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    newest = Run(run).checkpoint(4)
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match=rf"skipping checkpoint {newest} cannot be loaded"):
        _, _, path, step = load_run(run)
    assert step == 2 and path == Run(run).checkpoint(2) and newest.is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert evaluate_main([str(run), "--metrics", "none", "--no-pictures"]) == 0
    assert json.loads((run / "eval.json").read_text())["step"] == 2


def test_evaluate_names_a_damaged_checkpoint_it_was_given(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    newest = Run(run).checkpoint(4)
    newest.write_bytes(b"not a checkpoint")
    assert evaluate_main([str(run), "--checkpoint", str(newest), "--metrics", "none"]) == 2
    assert f"error: checkpoint {newest} cannot be loaded as plain tensors" in capsys.readouterr().err


def test_an_ensemble_with_one_members_newest_checkpoint_damaged_resumes_from_the_step_all_share(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b"]
    for i, d in enumerate(dirs):
        d.mkdir()
        (d / "sweep_options.json").write_text(json.dumps({"model": "chyvae", "seed": i}))
    members = ["--ensemble", *map(str, dirs)]
    assert train_main([*members, *TINY, "--steps", "4"]) == 0
    intact = Run(dirs[0]).checkpoint(2).read_bytes()
    damaged = Run(dirs[1]).checkpoint(4)
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.warns(RuntimeWarning) as caught:
        assert train_main([*members, "--resume", "--steps", "6"]) == 0
    said = [str(w.message) for w in caught]
    assert any(m.startswith(f"skipping checkpoint {damaged}") for m in said), said
    assert ("the ensemble resumes from step 2, the newest step every member has a checkpoint of; the steps after it "
            "are trained again (a at 4, b at 4)") in said
    for d in dirs:
        status = json.loads((d / "status.json").read_text())
        assert status["state"] == "finished" and status["step"] == 6
        train_steps = [json.loads(x)["step"] for x in (d / "metrics.jsonl").read_text().splitlines()
                       if json.loads(x)["kind"] == "train"]
        assert train_steps == [2, 4, 6]  # rows after step 2 redone once, not twice
    assert Run(dirs[0]).checkpoint(2).read_bytes() == intact
    assert damaged.with_suffix(".pt.damaged").is_file()


def test_sigint_during_evaluate_exits_130_with_one_line(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "chyvae_ext.evaluate", str(run), "--metrics", "factor_vae"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # inside the FactorVAE metric (minutes on a CPU) by now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"interrupted: {run} was not evaluated (its eval.json is as it was)"
    assert not (run / "eval.json").exists()


def test_check_memory_uses_the_gpus_own_memory_for_cuda(monkeypatch):
    class Props:
        total_memory = 64 * 64 * STEP_BYTES_PER_PIXEL * 10

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props)
    assert device_memory("cuda:0") == Props.total_memory
    with pytest.raises(ValueError, match=r"--batch-size 11: .* of --device cuda:0"):
        check_memory(TrainConfig(batch_size=11, device="cuda:0", precision="fp32").resolved())
