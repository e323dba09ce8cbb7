"""collect's second opinions (both FactorVAE protocols and MIG at the last checkpoint) and the untrained floor."""

import json

import pytest

from chyvae_ext.build import initial_model
from chyvae_ext.config import TrainConfig
from chyvae_ext.data import get_dataset
from chyvae_ext.experiments import collect_runs, summarise
from chyvae_ext.experiments import scores as scores_mod
from chyvae_ext.experiments.__main__ import main
from chyvae_ext.metrics import PROTOCOLS, make_encoder, suite
from chyvae_ext.metrics.factor_vae import Protocol, factor_vae_score
from chyvae_ext.metrics.information import mig
from chyvae_ext.train import train

FAST = {"steps": 6, "batch_size": 8, "log_every": 3, "eval_every": 6, "ckpt_every": 3, "precision": "fp32",
        "z_dim": 4, "hidden": 16, "nu": 10.0, "metrics": "factor_vae,mig"}


def small_mig(encode, dataset, *, seed):
    return mig(encode, dataset, num_train=300, seed=seed)


@pytest.fixture(autouse=True)
def small_protocols(monkeypatch):
    monkeypatch.setitem(PROTOCOLS, "chyvae", Protocol(8, 12, 12, 60, 0, 0.0))
    monkeypatch.setitem(PROTOCOLS, "kim_mnih", Protocol(6, 14, 10, 80, 0, 0.05))
    monkeypatch.setattr(suite, "mig", small_mig)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PROTOCOLS, "chyvae", Protocol(8, 12, 12, 60, 0, 0.0))
        mp.setattr(suite, "mig", small_mig)
        for model in ("chyvae", "betavae"):
            assert train(TrainConfig(model=model, seed=0, out=str(root / f"{model}-seed0"), **FAST))["state"] == "finished"
    return root


def encoder_of(run_dir):
    from chyvae_ext.evaluate import load_run

    model, _, _, _ = load_run(run_dir)
    return make_encoder(model)


def test_second_opinions_equal_the_metrics_computed_directly(runs, tmp_path):
    _, rows = collect_runs(runs, tmp_path)
    by_run = {r["run"]: r for r in rows}
    ds = get_dataset("correlated_ellipses")
    for name in ("chyvae-seed0", "betavae-seed0"):
        row = by_run[name]
        encode = encoder_of(runs / name)
        assert row["scored_step"] == 6
        assert row["factor_vae_chyvae"] == row["factor_vae"]  # training's evaluation at step 6, reused
        assert row["mig_scored"] == row["mig"]
        kim = factor_vae_score(encode, ds, protocol="kim_mnih", seed=0)["eval_accuracy"]
        assert row["factor_vae_kim_mnih"] == kim
    assert json.loads((runs / "chyvae-seed0" / "scores.json").read_text())["6"]["factor_vae_kim_mnih"] == (
        by_run["chyvae-seed0"]["factor_vae_kim_mnih"]
    )


def test_untrained_rows_score_the_models_at_step_0(runs, tmp_path):
    _, rows = collect_runs(runs, tmp_path)
    floor = {r["runs_like"]: r for r in rows if r["model"] == "untrained"}
    assert set(floor) == {"chyvae", "betavae"}  # their encoders' heads differ: two floors
    ds = get_dataset("correlated_ellipses")
    for model, row in floor.items():
        config = TrainConfig(model=model, seed=0, **FAST).resolved()
        encode = make_encoder(initial_model(config, 1).eval())
        assert row["factor_vae_chyvae"] == factor_vae_score(encode, ds, protocol="chyvae", seed=0)["eval_accuracy"]
        assert row["factor_vae_kim_mnih"] == factor_vae_score(encode, ds, protocol="kim_mnih", seed=0)["eval_accuracy"]
        assert row["mig_scored"] == mig(encode, ds, num_train=300, seed=0)["mig"]
        assert row["factor_vae"] == row["factor_vae_chyvae"] and row["state"] == "untrained" and row["step"] == 0
    s = {(x["model"], x["value"]): x for x in summarise(rows, ("factor_vae", "factor_vae_kim_mnih"))}
    assert s[("untrained", 0.0)]["seeds"] == 2


def test_runs_sharing_an_initial_encoder_share_one_floor(runs, tmp_path):
    config = TrainConfig(model="chyvae", seed=0, **FAST)
    rows = scores_mod.untrained_rows([config, TrainConfig(**{**config.__dict__, "nu": 20.0})],
                                     tmp_path / "u.json")
    assert len(rows) == 1 and rows[0]["runs_like"] == "chyvae"


def test_scores_are_cached_and_not_recomputed(runs, tmp_path, monkeypatch):
    collect_runs(runs, tmp_path)
    first = json.loads((tmp_path / "untrained_scores.json").read_text())

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored again although cached")

    monkeypatch.setattr(scores_mod, "score", no_scoring)
    _, rows = collect_runs(runs, tmp_path)
    assert json.loads((tmp_path / "untrained_scores.json").read_text()) == first
    assert all("factor_vae_kim_mnih" in r for r in rows)


def test_no_score_computes_nothing_and_shows_the_cached_scores(runs, tmp_path):
    def cached_steps(run):
        path = runs / run / "scores.json"
        return set(json.loads(path.read_text())) if path.is_file() else set()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scores_mod, "score_encoder", lambda *a, **k: pytest.fail("scored with score=False"))
        _, rows = collect_runs(runs, tmp_path, score=False)  # a fresh output directory: no floor cached there
    assert not any(r["state"] == "untrained" for r in rows)
    assert all(("factor_vae_kim_mnih" in r) == (str(r["step"]) in cached_steps(r["run"])) for r in rows)
    collect_runs(runs, tmp_path)  # computes and caches all
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scores_mod, "score_encoder", lambda *a, **k: pytest.fail("scored with score=False"))
        _, rows = collect_runs(runs, tmp_path, score=False)
    assert sum(r["state"] == "untrained" for r in rows) == 2 and all("factor_vae_kim_mnih" in r for r in rows)


def test_collect_cli_at_step_prints_the_table_there(runs, tmp_path, capsys):
    assert main(["collect", str(runs), "--out", str(tmp_path), "--at-step", "6"]) == 0
    out = capsys.readouterr().out
    assert "| chyvae | nu = 10 | 1 |" in out and "| untrained | step = 0 | 2 |" in out
    assert "factor_vae_kim_mnih (mean +- std)" in out
    assert main(["collect", str(runs), "--out", str(tmp_path), "--at-step", "5"]) == 2
    assert "--at-step 5: no run has an evaluation at that step" in capsys.readouterr().err
    assert main(["collect", str(runs), "--out", str(tmp_path), "--at-step", "-1"]) == 2
    assert "--at-step must be a non-negative integer, got -1" in capsys.readouterr().err


def test_a_run_without_checkpoints_is_not_scored_but_still_gives_the_floor(tmp_path):
    run = tmp_path / "runs" / "chyvae-seed0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "chyvae", "nu": 10.0, "seed": 0, "z_dim": 4, "hidden": 16}))
    assert scores_mod.score_run(run) == {}
    _, rows = collect_runs(tmp_path / "runs", tmp_path / "out")
    assert [r["state"] for r in rows] == ["unknown", "untrained"] and "scored_step" not in rows[0]


def test_checkpoints_gone_cached_scores_and_floor_still_shown(runs, tmp_path):
    """A fresh clone has the run files and their score caches but no checkpoints (not in git)."""
    import shutil

    _, scored = collect_runs(runs, tmp_path / "first", at_step=6)
    clone = tmp_path / "clone"
    shutil.copytree(runs, clone, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copy(tmp_path / "first" / "untrained_scores.json", tmp_path / "untrained_scores.json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scores_mod, "score_encoder", lambda *a, **k: pytest.fail("nothing can be scored here"))
        _, rows = collect_runs(clone, tmp_path, at_step=6)
    assert sum(r["state"] == "untrained" for r in rows) == 2  # the floor, from the configs and its cache
    assert scores_mod.score_run(clone / "chyvae-seed0", step=6)["factor_vae_kim_mnih"] == (
        scores_mod.score_run(runs / "chyvae-seed0", step=6)["factor_vae_kim_mnih"])
    assert scores_mod.score_run(clone / "chyvae-seed0", step=4) == {}  # never scored there


def test_figures_with_the_floor_and_the_best_runs_traversals(runs, tmp_path, capsys):
    from PIL import Image

    from chyvae_ext.experiments import plot as plot_mod

    path, rows = collect_runs(runs, tmp_path)
    floor = [r for r in rows if r["state"] == "untrained"]
    assert plot_mod._floor(rows, "factor_vae") == pytest.approx(sum(r["factor_vae"] for r in floor) / len(floor))
    assert plot_mod._floor([r for r in rows if r["state"] != "untrained"], "factor_vae") is None
    paths = plot_mod.plot_all(path, tmp_path / "fig", at_step=6, runs_root=runs)
    names = [p.name for p in paths]
    assert names == ["tradeoff.png", "time.png", "by_step.png", "traversals_betavae.png", "traversals_chyvae.png"]
    wide, high = Image.open(tmp_path / "fig" / "by_step.png").size
    assert wide > 3.5 * high  # three panels: the metric, MIG (logged by these runs) and reconstruction
    assert (tmp_path / "fig" / "traversals_chyvae.gif").is_file()
    assert main(["plot", str(path), "--out", str(tmp_path / "f2"), "--at-step", "5"]) == 2
    assert "--at-step 5: no run has an evaluation at that step" in capsys.readouterr().err


def test_checkpoints_of_evaluation_steps_are_kept(tmp_path):
    options = dict(FAST, steps=10, ckpt_every=2, eval_every=5, keep_checkpoints=1, metrics="none")
    assert train(TrainConfig(model="betavae", out=str(tmp_path / "r"), **options))["state"] == "finished"
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("step_*.pt")) == [
        "step_00000005.pt", "step_00000010.pt"]  # 5: an evaluation step (written and kept); 10: the last


def test_at_step_scores_the_checkpoint_kept_there(runs, tmp_path):
    import csv

    _, rows = collect_runs(runs, tmp_path, at_step=6)
    assert not any("scored_step" in r for r in rows if r["state"] != "untrained")
    with open(tmp_path / "results_by_step.csv") as f:
        at = [r for r in csv.DictReader(f) if r["step"] == "6"]
    assert len(at) == 2 and all(r["factor_vae_kim_mnih"] != "" and r["scored_step"] == "6" for r in at)
    assert scores_mod.score_run(runs / "chyvae-seed0", step=4) == {}  # no checkpoint kept at step 4


def test_every_evaluation_row_shows_the_scores_cached_at_its_step(runs, tmp_path, monkeypatch):
    import csv

    collect_runs(runs, tmp_path / "first", at_step=6)  # scores step 6 (cached in each run's scores.json)
    monkeypatch.setattr(scores_mod, "score_encoder", lambda *a, **k: pytest.fail("nothing is computed again"))
    collect_runs(runs, tmp_path / "again", score=False)  # no --at-step: the rows at 6 still show them
    with open(tmp_path / "again" / "results_by_step.csv") as f:
        at = {r["run"]: r for r in csv.DictReader(f) if r["step"] == "6"}
    for name in ("chyvae-seed0", "betavae-seed0"):
        cached = json.loads((runs / name / "scores.json").read_text())["6"]
        assert float(at[name]["factor_vae_kim_mnih"]) == cached["factor_vae_kim_mnih"]
        assert at[name]["scored_step"] == "6"


def test_run_checkpoint_is_the_last_or_the_one_of_a_step(runs, tmp_path):
    from chyvae_ext.runfiles import Run

    run = Run(runs / "chyvae-seed0")
    assert run.checkpoint().name == "step_00000006.pt" and run.checkpoint(3).name == "step_00000003.pt"
    assert run.checkpoint(4) is None and Run(tmp_path).checkpoint() is None


def test_collect_several_roots_names_runs_by_root_and_refuses_a_seed_counted_twice(runs, tmp_path, capsys):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs / "chyvae-seed0", a / "chyvae-seed0")
    shutil.copytree(runs / "betavae-seed0", b / "betavae-seed0")
    _, rows = collect_runs([a, b], tmp_path / "out", score=False)
    assert {r["run"] for r in rows if r["state"] == "finished"} == {"a/chyvae-seed0", "b/betavae-seed0"}
    assert main(["collect", str(a), str(b), "--out", str(tmp_path / "cli"), "--no-score", "--at-step", "6"]) == 0
    table = capsys.readouterr().out
    assert "| betavae | beta = 4 | 1 |" in table and "| chyvae | nu = 10 | 1 |" in table
    shutil.copytree(runs / "chyvae-seed0", b / "chyvae-seed0")  # the same run in both places
    with pytest.raises(ValueError, match=r"runs a/chyvae-seed0 and b/chyvae-seed0 are both chyvae nu = 10.0 seed 0 "
                                         r"finished: collect only one of them"):
        collect_runs([a, b], tmp_path / "out", score=False)
    with pytest.raises(ValueError, match=r"both chyvae nu = 10.0 seed 0 at step 6: collect only one of them"):
        collect_runs([a, b], tmp_path / "out", score=False, at_step=6)
    assert main(["collect", str(a), str(tmp_path / "nope")]) == 2
    assert f"ROOT {tmp_path / 'nope'}: no such directory" in capsys.readouterr().err


def test_fewer_seeds_marks_the_steps_below_the_most_seeds():
    from chyvae_ext.experiments.plot import fewer_seeds

    assert fewer_seeds([2, 2, 1, 1]) == [False, False, True, True]
    assert fewer_seeds([3, 3]) == [False, False]
    assert fewer_seeds([]) == []


def test_by_step_draws_steps_only_some_seeds_reached_with_open_markers(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from chyvae_ext.experiments import plot as plot_mod

    closed = []
    monkeypatch.setattr(plt, "close", closed.append)  # keep the figure to read it back
    score = {(0, 1): 0.6, (0, 2): 0.7, (0, 3): 0.9, (1, 1): 0.5, (1, 2): 0.6}  # seed 1 has not reached step 3
    rows = [{"model": "chyvae", "hyper": "nu", "value": "12", "seed": str(seed), "step": str(step),
             "factor_vae": str(v), "recon": str(40 - step)} for (seed, step), v in score.items()]
    plot_mod.plot_by_step(rows, tmp_path / "by_step.png")
    assert (tmp_path / "by_step.png").is_file()
    ax = closed[0].axes[0]
    line, open_marks = [ln for ln in ax.lines if len(ln.get_xdata())]
    assert list(line.get_xdata()) == [1.0, 2.0, 3.0]
    assert list(line.get_ydata()) == pytest.approx([0.55, 0.65, 0.9])
    assert line.get_markevery() == [0, 1]  # filled markers where both seeds are
    assert list(open_marks.get_xdata()) == [3.0] and list(open_marks.get_ydata()) == pytest.approx([0.9])
    assert open_marks.get_markerfacecolor() == "white"
    assert "open: fewer seeds so far" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_metric_seeds_score_each_seed_and_their_mean_and_sd(runs, tmp_path):
    import statistics

    _, rows = collect_runs(runs, tmp_path, metric_seeds=3)
    by_run = {r["run"]: r for r in rows}
    ds = get_dataset("correlated_ellipses")
    row = by_run["chyvae-seed0"]
    encode = encoder_of(runs / "chyvae-seed0")
    for protocol in ("chyvae", "kim_mnih"):
        key = f"factor_vae_{protocol}"
        values = [row[key], row[f"{key}_s1"], row[f"{key}_s2"]]
        for seed in (1, 2):
            assert values[seed] == factor_vae_score(encode, ds, protocol=protocol, seed=seed)["eval_accuracy"]
        assert row[f"{key}_mean"] == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert row[f"{key}_sd"] == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert row["mig_scored_s2"] == mig(encode, ds, num_train=300, seed=2)["mig"]
    floor = [r for r in rows if r["model"] == "untrained"]
    assert floor and all("factor_vae_kim_mnih_s2" in r and "factor_vae_chyvae_mean" in r for r in floor)
    cached = json.loads((runs / "chyvae-seed0" / "scores.json").read_text())["6"]
    assert "factor_vae_chyvae_s2" in cached and "factor_vae_chyvae_mean" not in cached  # means are derived


def test_metric_seeds_add_only_the_missing_seeds_to_the_cache(runs, tmp_path, monkeypatch):
    collect_runs(runs, tmp_path)  # seed 0 cached
    seeds = []
    real = scores_mod.score

    def recording(*args, seed, **kwargs):
        seeds.append(seed)
        return real(*args, seed=seed, **kwargs)

    monkeypatch.setattr(scores_mod, "score", recording)
    collect_runs(runs, tmp_path, metric_seeds=2)
    assert seeds and 0 not in seeds  # seed 0 came from the cache; only seed 1 was scored (or was cached)
    seeds.clear()
    collect_runs(runs, tmp_path, metric_seeds=2)
    assert seeds == []


def test_collect_cli_metric_seeds_prints_the_means_and_names_a_bad_count(runs, tmp_path, capsys):
    assert main(["collect", str(runs), "--out", str(tmp_path), "--metric-seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "factor_vae_chyvae_mean (mean +- std)" in out and "factor_vae_kim_mnih_mean (mean +- std)" in out
    assert main(["collect", str(runs), "--out", str(tmp_path), "--metric-seeds", "0"]) == 2
    assert "--metric-seeds must be a positive integer, got 0" in capsys.readouterr().err
