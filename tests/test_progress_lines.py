"""A program that says what it is doing (issue 33, item 4): training's opening line and time left, each
evaluation announced before it starts and named by its protocol after, a FactorVAE 0 with every dimension
pruned said to be that, and collect's table showing the MIG it scored."""

import json
import re

import numpy as np
import torch

from chyvae_ext.data import get_dataset
from chyvae_ext.looptools import duration
from chyvae_ext.metrics.suite import pruned_note, score
from chyvae_ext.train import main

TINY = ["--batch-size", "4", "--z-dim", "3", "--hidden", "16", "--nu", "10", "--precision", "fp32"]


def test_training_opens_with_what_it_trains_and_says_the_time_left_and_each_evaluation(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--steps", "4", "--log-every", "2", "--eval-every", "4", "--metrics", "mig",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"training chyvae on correlated_ellipses into {out}: cpu, fp32, to step 4"
    assert re.fullmatch(r"step 2/4  loss [\d.]+  recon [\d.]+  [\d.]+ steps/s, about \d+ s left", lines[1]), lines[1]
    assert re.fullmatch(r"step 4/4  loss [\d.]+  recon [\d.]+  [\d.]+ steps/s", lines[2]), lines[2]  # none left
    assert lines[3] == "step 4: evaluating mig (10,000 images)..."
    assert re.fullmatch(r"step 4: mig [\d.]+ \(chyvae protocol, \d+ s\)", lines[4]), lines[4]  # no chance for MIG
    assert main(["--resume", str(out), "--steps", "6", "--log-every", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (f"training chyvae on correlated_ellipses into {out}: cpu, "
                                                       "fp32, from step 4 to step 6")


def test_an_ensemble_opens_with_its_size_and_evaluates_from_one_encoding(tmp_path, capsys):
    dirs = [tmp_path / "a", tmp_path / "b"]
    for i, d in enumerate(dirs):
        d.mkdir()
        (d / "sweep_options.json").write_text(json.dumps({"model": "betavae", "seed": i}))
    assert main(["--ensemble", *map(str, dirs), *TINY, "--steps", "2", "--log-every", "2", "--eval-every", "2",
                 "--metrics", "mig"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"training an ensemble of 2 betavae runs on correlated_ellipses into {dirs[0]} (+1 more): cpu, fp32, to step 2"
    assert "step 2: evaluating mig (10,000 images) for 2 members from one encoding..." in lines


def test_duration_reads_in_seconds_minutes_or_hours():
    assert [duration(s) for s in (0.4, 89, 90, 3000, 5400, 36000)] == ["0 s", "89 s", "2 min", "50 min", "1.5 h",
                                                                       "10.0 h"]


def test_a_factor_vae_score_with_every_dimension_pruned_says_so():
    dataset = get_dataset("correlated_ellipses")
    lines = []

    def constant(x):  # an encoder whose codes never move: every dimension is pruned
        return torch.zeros(len(x), 3)

    summary, details = score(constant, dataset, ["factor_vae"], protocol="kim_mnih", progress=lines.append)
    assert summary["factor_vae"] == 0.0 and details["factor_vae"]["active_dims"] == []
    assert lines[0] == "factor_vae (kim_mnih protocol, 970,000 images): computing ..."
    assert lines[1].startswith("factor_vae (kim_mnih protocol): factor_vae 0.0000  factor_vae_train 0.0000 (")
    assert lines[1].endswith("; every latent dimension pruned (standard deviation below 0.05), so the score is 0 "
                             "by definition")
    assert pruned_note({"factor_vae": {"active_dims": [0, 2], "protocol": {"prune_below": 0.05}}}) == ""
    assert pruned_note({"mig": {}}) == ""


def test_collects_table_shows_the_mig_training_logged_when_nothing_was_scored(tmp_path, capsys):
    from chyvae_ext.experiments.__main__ import main as experiments_main

    root = tmp_path / "runs"
    out = root / "r"
    assert main([*TINY, "--steps", "2", "--log-every", "2", "--eval-every", "2", "--metrics", "mig",
                 "--out", str(out)]) == 0
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]["mig"]
    capsys.readouterr()
    assert experiments_main(["collect", str(root), "--no-score"]) == 0
    table = capsys.readouterr().out
    assert "mig_scored (mean +- std)" in table
    assert f"{logged:.3f} +- 0.000" in table
    assert np.isfinite(logged)


def test_collect_says_what_it_will_score_and_about_how_long_before_it_starts(tmp_path, monkeypatch):
    from chyvae_ext.experiments import scores
    from chyvae_ext.experiments.collect import _plan_line

    root = tmp_path / "runs"
    assert main([*TINY, "--steps", "2", "--log-every", "2", "--eval-every", "2", "--metrics", "mig",
                 "--out", str(root / "r")]) == 0
    monkeypatch.setattr(scores, "images_per_second", lambda config: 1000.0)
    line = _plan_line([root], root, None, (0,))
    # MIG was logged by training at step 2: only the two FactorVAE protocols for the run; all three for the floor
    per_run = scores.images_encoded("factor_vae_chyvae") + scores.images_encoded("factor_vae_kim_mnih")
    images = 2 * per_run + scores.images_encoded("mig_scored")
    assert line == (f"collect: scoring 1 run(s) and 3 untrained floor score(s): 2 FactorVAE (paper protocol), "
                    f"2 FactorVAE (kim_mnih), 1 MIG; {images:,} images, about {round(images / 1000 / 60)} min at "
                    "this machine's 1,000 images/s (--no-score shows only what is cached)")
    assert scores.images_encoded("factor_vae_chyvae") == 325_000 and scores.images_encoded("factor_vae_kim_mnih_s1") == 970_000
    cache = {"2": {k: 0.5 for k in scores.SCORE_KEYS}}
    (root / "r" / "scores.json").write_text(json.dumps(cache))
    assert scores.missing_scores(root / "r") == []
    assert _plan_line([root], root, None, (0,)).startswith("collect: scoring 0 run(s) and 3 untrained floor")


def test_images_per_second_times_rendering_and_encoding():
    from chyvae_ext.config import TrainConfig
    from chyvae_ext.experiments.scores import images_per_second

    assert images_per_second(TrainConfig(z_dim=3, hidden=16, nu=10.0, precision="fp32").resolved(), n=200) > 0


def test_a_factor_vae_score_is_shown_beside_its_chance_level():
    from chyvae_ext.metrics.suite import chance_note

    assert chance_note({"factor_vae": 0.7}, get_dataset("correlated_ellipses")) == "; chance 0.25"  # 4 factors
    assert chance_note({"factor_vae": 0.7}, get_dataset("shapes2d")) == "; chance 0.20"  # shape among 5 factors
    assert chance_note({"factor_vae": 0.7}, get_dataset("shapes2d", include_shape=False)) == "; chance 0.25"
    assert chance_note({"mig": 0.1}, get_dataset("shapes2d")) == ""


def test_an_evaluation_is_described_by_its_metrics_protocol_and_images():
    from chyvae_ext.metrics.suite import describe

    assert describe(["factor_vae", "mig"], "chyvae") == "factor_vae (chyvae protocol, 325,000 images), mig (10,000 images)"
    assert describe(["beta_vae", "dci"], "kim_mnih") == "beta_vae (1,920,000 images), dci (15,000 images)"
