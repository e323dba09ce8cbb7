"""Options that lie about their type, and files that do not parse (issue 31, items 9-11): one line
naming the option or the file and line, never a traceback; a grid is checked whole before it starts."""

import json

import pytest

from chyvae_ext.config import TrainConfig, check_config, load_config_file
from chyvae_ext.experiments.__main__ import main as experiments_main
from chyvae_ext.experiments.grid import expand_grid, load_grid
from chyvae_ext.train import main as train_main


@pytest.mark.parametrize(("options", "match"), [
    ({"learn_nu": "no"}, r"--learn-nu must be true or false, got 'no'"),
    ({"compile": "no"}, r"--compile must be true or false, got 'no'"),
    ({"device": 0}, r"--device must be a string, got 0 \(int\)"),
    ({"metrics": 5}, r"--metrics must be a string, got 5 \(int\)"),
    ({"seed": "abc"}, r"--seed must be a non-negative integer, got 'abc'"),
    ({"seed": 2**64}, r"--seed must be below 2\*\*63"),
    ({"data_root": 3}, r"--data-root must be a string, got 3 \(int\)"),
])
def test_an_option_of_the_wrong_type_is_named(options, match):
    with pytest.raises(ValueError, match=match):
        check_config(TrainConfig(**options).resolved())


def test_yaml_reads_1e_3_as_a_string_and_it_is_taken_as_the_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nnu: 5e1\n")
    assert load_config_file(str(path)) == {"lr": 1e-3, "nu": 50.0}
    path.write_text("lr: fast\n")
    with pytest.raises(ValueError, match=rf"--config {path}: lr must be a number, got 'fast'"):
        load_config_file(str(path))


@pytest.mark.parametrize(("name", "text", "match"), [
    ("c.yaml", "steps: 10\nlr: [1,\n", r"not valid YAML at line 3, column 1"),
    ("c.json", '{"steps": 10,\n "lr": }', r"not valid JSON at line 2, column 8: Expecting value"),
])
def test_a_config_file_that_does_not_parse_names_the_file_and_line(tmp_path, capsys, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"--config {path}: " in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(match, err)


def test_a_grid_that_does_not_parse_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text("out: x\nruns:\n  - {model: chyvae\n")
    assert experiments_main(["sweep", "--grid", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"--grid {path}: not valid YAML at line" in err and "Traceback" not in err


def grid_file(tmp_path, runs, **common):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"out": str(tmp_path / "sweep"), "common": {"steps": 2, **common}, "runs": runs}))
    return path


def test_a_typo_in_one_run_of_a_grid_fails_before_any_run_starts(tmp_path, capsys):
    path = grid_file(tmp_path, [{"model": "chyvae"}, {"model": "betavea"}])
    assert experiments_main(["sweep", "--grid", str(path)]) == 2
    err = capsys.readouterr().err
    assert "grid: run betavea-seed0: --model must be one of" in err
    assert not (tmp_path / "sweep" / "chyvae-seed0" / "config.json").exists()  # nothing trained


def test_a_bad_value_in_one_run_fails_before_any_run_starts(tmp_path, capsys):
    path = grid_file(tmp_path, [{"model": "chyvae", "nu": [12, 5]}])
    assert experiments_main(["sweep", "--grid", str(path)]) == 2
    assert "grid: run chyvae-nu5-seed0: --nu must be greater than z_dim - 1 = 9 for CHyVAE, got 5" in (
        capsys.readouterr().err)


def test_a_swept_value_with_a_slash_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"the run directory name .* would leave the sweep's out directory"):
        expand_grid({"out": str(tmp_path), "runs": [{"model": "chyvae", "data_root": ["a/../../b"]}]})


def test_a_gpu_grid_is_checked_on_a_cpu_machine_but_not_its_device(tmp_path):
    grid = load_grid(grid_file(tmp_path, [{"model": "chyvae"}], device="cuda"))
    from chyvae_ext.experiments.sweep import check_runs

    check_runs(grid)  # the device is the machine's that trains the run


def test_a_device_that_is_not_one_is_named(capsys):
    assert train_main(["--device", "foo", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "--device 'foo' is not a device" in err and "Traceback" not in err
