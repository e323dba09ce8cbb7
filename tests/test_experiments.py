"""Sweeps (grid expansion, skip/resume, failures, interrupt), collect's CSVs and the figures."""

import csv
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from chyvae_ext.experiments import collect_runs, expand_grid, load_grid, plot_all, summarise, sweep
from chyvae_ext.experiments.__main__ import main
from chyvae_ext.experiments.collect import HYPER, markdown_table

COMMON = {
    "steps": 4,
    "batch_size": 8,
    "log_every": 2,
    "eval_every": 2,
    "ckpt_every": 2,
    "z_dim": 4,
    "hidden": 16,
    "precision": "fp32",
    "metrics": "none",
}


def write_grid(path, **changes):
    spec = {"out": "runs", "jobs": 2, "threads": 1, "seeds": [0, 1], "common": dict(COMMON)} | changes
    spec.setdefault("runs", [{"model": "chyvae", "nu": [6, 50]}])
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expand_grid_names_order_and_options(tmp_path):
    grid = expand_grid(
        {
            "out": "sweep",
            "seeds": [0, 1],
            "common": {"steps": 10},
            "runs": [{"model": "chyvae", "nu": [12, 200.5]}, {"model": "betavae", "beta": 4}],
        },
        base=tmp_path,
    )
    assert grid.out == tmp_path / "sweep" and grid.jobs == 1
    assert [r.name for r in grid.runs] == [
        "chyvae-nu12-seed0",
        "chyvae-nu200.5-seed0",
        "betavae-seed0",
        "chyvae-nu12-seed1",
        "chyvae-nu200.5-seed1",
        "betavae-seed1",
    ]
    assert grid.runs[1].options == {"steps": 10, "model": "chyvae", "nu": 200.5, "seed": 0}
    assert grid.runs[1].swept == {"nu": 200.5}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"runs": [{"model": "chyvae"}], "outdir": "x"}, r"grid: unknown key\(s\) outdir"),
        ({"runs": [{"model": "chyvae", "nuu": [1]}]}, r"grid: runs\[0\]: unknown training option\(s\) nuu"),
        ({"runs": [{"model": "chyvae", "nu": []}]}, r"grid: runs\[0\].nu is an empty list"),
        ({"runs": [{"nu": [12]}]}, r"grid: runs\[0\] must be a mapping with a model"),
        ({"runs": []}, r"grid: runs must be a non-empty list"),
        ({"runs": [{"model": "chyvae"}], "seeds": [0, "1"]}, r"grid: seeds must be a non-empty list of integers"),
        ({"runs": [{"model": "chyvae"}], "jobs": 0}, r"grid: jobs must be a positive integer, got 0"),
        ({"runs": [{"model": "chyvae"}], "common": [1]}, r"grid: common must be a mapping"),
        ({"runs": [{"model": "chyvae"}, {"model": "chyvae"}]}, r"two runs would share the directory name chyvae-seed0"),
        ([1, 2], r"grid: expected a mapping, got list"),
    ],
)
def test_bad_grids(spec, match):
    with pytest.raises(ValueError, match=match):
        expand_grid(spec)


def test_load_grid_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"--grid: no file at"):
        load_grid(tmp_path / "nope.yaml")


def test_sweep_skips_finished_and_resumes_unfinished(tmp_path):
    grid = load_grid(write_grid(tmp_path / "g.yaml", seeds=[0]))
    assert sweep(grid, echo=lambda *_: None) == {n: "finished" for n in [r.name for r in grid.runs]}
    assert sweep(grid, echo=lambda *_: None) == {r.name: "skipped" for r in grid.runs}
    status = json.loads((grid.out / "sweep_status.json").read_text())
    assert len(status["finished"]) == 2 and status["pending"] == status["running"] == status["failed"] == []
    # Asking for more steps turns every run into one to resume from its checkpoint.
    longer = load_grid(write_grid(tmp_path / "g.yaml", seeds=[0], common=dict(COMMON, steps=6)))
    lines = []
    assert set(sweep(longer, echo=lines.append).values()) == {"finished"}
    assert "(2 resumed)" in lines[0] and any("(resumable)" in line for line in lines)
    for r in longer.runs:
        assert json.loads((longer.out / r.name / "status.json").read_text())["step"] == 6
        steps = [json.loads(x)["step"] for x in (longer.out / r.name / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(steps) and steps[-1] == 6


def test_dry_run_writes_nothing(tmp_path):
    grid = load_grid(write_grid(tmp_path / "g.yaml"))
    lines = []
    sweep(grid, dry_run=True, echo=lines.append)
    assert len(lines) == 5 and all(": new: -m chyvae_ext.train --config" in line for line in lines[1:])
    assert not any(grid.out.iterdir())


def test_a_failing_run_is_reported_and_the_rest_go_on(tmp_path, capsys):
    # dsprites without its file: a configuration that checks out, and a run that fails when it opens the data
    path = write_grid(tmp_path / "g.yaml", seeds=[0], runs=[{"model": "chyvae", "dataset": ["dsprites", "shapes2d"]}])
    assert main(["sweep", "--grid", str(path)]) == 1
    out = capsys.readouterr().out
    bad, good = "chyvae-datasetdsprites-seed0", "chyvae-datasetshapes2d-seed0"
    assert f"failed {bad} (exit 2" in out and "see " in out and f"finished {good}" in out
    assert "root is required" in (tmp_path / "runs" / bad / "train.log").read_text()
    status = json.loads((tmp_path / "runs" / "sweep_status.json").read_text())
    assert status["failed"] == [bad] and status["finished"] == [good]


def sweep_interrupted_in_its_first_run(tmp_path, betas):
    """A long sweep of beta-VAE runs (one at a time) stopped by SIGINT once its first run has logged; the
    first run's metrics path."""
    path = write_grid(
        tmp_path / "g.yaml",
        jobs=1,
        seeds=[0],
        common=dict(COMMON, steps=100000, ckpt_every=1000, eval_every=100000),
        runs=[{"model": "betavae", "beta": betas}],
    )
    proc = subprocess.Popen([sys.executable, "-m", "chyvae_ext.experiments", "sweep", "--grid", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / f"betavae-beta{betas[0]}-seed0" / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    return metrics


def test_interrupt_then_rerun_finishes(tmp_path):
    metrics = sweep_interrupted_in_its_first_run(tmp_path, [1])
    status = json.loads((metrics.parent / "status.json").read_text())
    assert status["state"] == "interrupted"
    assert json.loads((tmp_path / "runs" / "sweep_status.json").read_text())["interrupted"] == ["betavae-beta1-seed0"]
    reached = status["step"]
    grid = load_grid(write_grid(tmp_path / "g.yaml", jobs=1, seeds=[0], common=dict(COMMON, steps=reached + 2),
                                runs=[{"model": "betavae", "beta": [1]}]))
    assert sweep(grid, echo=lambda *_: None) == {"betavae-beta1-seed0": "finished"}
    assert json.loads((metrics.parent / "status.json").read_text())["step"] == reached + 2


def test_interrupted_sweep_keeps_its_unstarted_runs_pending(tmp_path):
    sweep_interrupted_in_its_first_run(tmp_path, [1, 2])
    status = json.loads((tmp_path / "runs" / "sweep_status.json").read_text())
    assert status["interrupted"] == ["betavae-beta1-seed0"] and status["pending"] == ["betavae-beta2-seed0"]
    assert status["running"] == [] and status["finished"] == []


def fake_run(root, name, model, value, seed, evals, speeds):
    """A run directory as training writes it, with chosen numbers."""
    d = root / name
    d.mkdir(parents=True)
    hyper = HYPER[model]
    (d / "config.json").write_text(json.dumps({"model": model, hyper: value, "seed": seed}))
    (d / "status.json").write_text(json.dumps({"state": "finished", "step": evals[-1][0]}))
    rows = [{"kind": "train", "step": 10 * (i + 1), "steps_per_s": s} for i, s in enumerate(speeds)]
    rows += [{"kind": "eval", "step": st, "factor_vae": fv, "recon": rc, "neg_elbo": rc + 5} for st, fv, rc in evals]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_collect_keeps_a_jittered_chyvae_apart_from_the_plain_one(tmp_path, capsys):
    root = tmp_path / "runs"
    for jitter, fv in ((0.0, 0.6), (1e-4, 0.8)):
        for seed in (0, 1):
            name = f"chyvae-nu50-j{jitter}-seed{seed}"
            fake_run(root, name, "chyvae", 50.0, seed, [(10, fv + 0.01 * seed, 30.0)], [10.0])
            config = json.loads((root / name / "config.json").read_text())
            (root / name / "config.json").write_text(json.dumps(config | {"posterior_jitter": jitter}))
    _, rows = collect_runs(root, score=False)  # four runs, no two of them the same setting and seed
    assert {r["run"]: r.get("variant", "") for r in rows}["chyvae-nu50-j0.0001-seed1"] == "posterior_jitter 0.0001"
    s = {x.get("variant", ""): x for x in summarise(rows)}
    assert s[""]["seeds"] == s["posterior_jitter 0.0001"]["seeds"] == 2
    assert s["posterior_jitter 0.0001"]["factor_vae_mean"] == pytest.approx(0.805)
    assert "| chyvae | nu = 50 (posterior_jitter 0.0001) | 2 | 0.805 +- 0.007 |" in markdown_table(summarise(rows))
    fake_run(root, "again", "chyvae", 50.0, 1, [(10, 0.1, 30.0)], [10.0])
    config = json.loads((root / "again" / "config.json").read_text())
    (root / "again" / "config.json").write_text(json.dumps(config | {"posterior_jitter": 1e-4}))
    with pytest.raises(ValueError, match=r"both chyvae nu = 50.0 \(posterior_jitter 0.0001\) seed 1 finished"):
        collect_runs(root, score=False)


def test_collect_summarise_and_plot(tmp_path, capsys):
    root = tmp_path / "runs"
    fake_run(root, "chyvae-nu12-seed0", "chyvae", 12.0, 0, [(5, 0.5, 300.0), (10, 0.8, 200.0)], [10.0, 20.0, 30.0])
    fake_run(root, "chyvae-nu12-seed1", "chyvae", 12.0, 1, [(5, 0.4, 310.0), (10, 0.6, 220.0)], [25.0])
    fake_run(root, "betavae-beta4-seed0", "betavae", 4.0, 0, [(5, 0.3, 400.0), (10, 0.5, 260.0)], [40.0])
    fake_run(root, "betavae-beta4-seed1", "betavae", 4.0, 1, [(5, 0.9, 100.0)], [40.0])
    (root / "betavae-beta4-seed1" / "status.json").write_text(json.dumps({"state": "running", "step": 7}))
    path, rows = collect_runs(root, score=False)  # fake runs: collecting, not scoring
    assert path == root / "results.csv" and len(rows) == 4
    assert {r["run"]: r["state"] for r in rows}["betavae-beta4-seed1"] == "running"
    with open(path) as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    assert float(table["chyvae-nu12-seed0"]["factor_vae"]) == 0.8 and table["chyvae-nu12-seed0"]["step"] == "10"
    assert float(table["chyvae-nu12-seed0"]["sec_per_1000_steps"]) == pytest.approx(1000 / 20.0)  # median speed
    with open(root / "results_by_step.csv") as f:
        assert len(list(csv.DictReader(f))) == 7
    s = {(x["model"], x["value"]): x for x in summarise(rows)}
    assert s[("chyvae", 12.0)]["seeds"] == 2
    assert s[("chyvae", 12.0)]["factor_vae_mean"] == pytest.approx(0.7)
    assert s[("chyvae", 12.0)]["factor_vae_std"] == pytest.approx(statistics.stdev([0.8, 0.6]))
    assert s[("betavae", 4.0)]["recon_std"] == 0.0 and s[("betavae", 4.0)]["seeds"] == 1  # the running one is left out
    assert "| chyvae | nu = 12 | 2 | 0.700 +- 0.141 | 210.000 +- 14.142 |" in markdown_table(summarise(rows))
    figures = plot_all(path)
    assert [p.name for p in figures] == ["tradeoff.png", "time.png", "by_step.png"]
    assert all(p.stat().st_size > 5000 for p in figures)
    assert main(["collect", str(root), "--out", str(tmp_path / "csv"), "--no-score"]) == 0
    assert "4 runs ->" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "csv" / "results.csv"), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "by_step.png").exists()


def test_collect_groups_every_baseline_by_its_hyperparameter_and_plots_it(tmp_path, monkeypatch):
    import matplotlib.axes

    from chyvae_ext.experiments.plot import plot_time

    root = tmp_path / "runs"
    families = {"vae": ("beta", 1.0), "betatcvae": ("beta", 6.0), "dipvae1": ("lambda_od", 10.0),
                "dipvae2": ("lambda_od", 5.0), "annealedvae": ("c_max", 25.0), "chyvae": ("nu", 12.0)}
    for i, (model, (_, value)) in enumerate(families.items()):
        fake_run(root, f"{model}-seed0", model, value, 0, [(5, 0.1 * i, 100.0 + i)], [10.0 + i])
    _, rows = collect_runs(root, score=False)
    assert {r["model"]: (r["hyper"], r["value"]) for r in rows} == families
    assert {s["model"] for s in summarise(rows)} == set(families)
    bars = []
    real_bar = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda ax, x, *a, **k: bars.append(list(x)) or real_bar(ax, x, *a, **k))
    plot_time(rows, tmp_path / "time.png")
    assert bars == [["VAE", "beta-TCVAE", "DIP-VAE-I", "DIP-VAE-II", "AnnealedVAE", "CHyVAE"]]  # one bar per model
    figures = plot_all(root / "results.csv")
    assert [p.name for p in figures] == ["tradeoff.png", "time.png", "by_step.png"]


def test_collect_and_plot_bad_input(tmp_path, capsys):
    assert main(["collect", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["collect", str(tmp_path)]) == 2
    assert "no run directories" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "x.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert main(["plot", str(tmp_path / "other.csv")]) == 2
    assert "not a collect results file (no column model)" in capsys.readouterr().err


def test_read_metrics(tmp_path):
    from chyvae_ext.runfiles import read_metrics

    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []
    path.write_text('{"step": 1, "kind": "train"}\n\n{"step": 2, "kind": "eval"}\n{"step": 3, "ki')
    assert read_metrics(path) == [{"step": 1, "kind": "train"}, {"step": 2, "kind": "eval"}]  # cut-off tail ignored
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON object"):
        read_metrics(path)
    path.write_text('[1, 2]\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"line 1 is not a JSON object, got list"):
        read_metrics(path)


def test_paper_grids_hold_the_issues_settings():
    grids = Path(__file__).resolve().parent.parent / "experiments" / "grids"
    ellipses = load_grid(grids / "ellipses_paper.yaml")
    assert len(ellipses.runs) == 180 and ellipses.ensemble
    values = {m: {r.options[h] for r in ellipses.runs if r.options["model"] == m}
              for m, h in (("chyvae", "nu"), ("betavae", "beta"), ("factorvae", "gamma"))}
    assert values == {"chyvae": {12, 50, 100, 200, 500, 1000}, "betavae": {1, 2, 4, 6, 8, 16},
                      "factorvae": {10, 20, 30, 40, 50, 100}}
    assert {r.options["seed"] for r in ellipses.runs} == set(range(10))
    for r in ellipses.runs:
        assert (r.options["steps"], r.options["dataset_size"], r.options["init"], r.options["precision"]) == (
            150000, 200000, "glorot", "fp32")
        assert (r.options["batch_size"], r.options["lr"], r.options["metric_protocol"]) == (50, 1e-4, "chyvae")
    shapes = load_grid(grids / "shapes_paper.yaml")
    assert len(shapes.runs) == 360 and {r.options["dataset"] for r in shapes.runs} == {"shapes2d"}
    assert sum(r.options["include_shape"] for r in shapes.runs) == 180


def test_baselines_grid_compares_every_model_with_the_studys_settings():
    grid = load_grid(Path(__file__).resolve().parent.parent / "experiments" / "grids" / "ellipses_baselines.yaml")
    assert len(grid.runs) == 7 * 6 * 5
    swept = {}
    for r in grid.runs:
        hyper = HYPER[r.options["model"]]
        swept.setdefault(r.options["model"], set()).add(float(r.options[hyper]))
        assert (r.options["dataset"], r.options["steps"], r.options["dataset_size"]) == (
            "correlated_ellipses", 150000, 200000)
    assert swept["betatcvae"] == {1, 2, 4, 6, 8, 10} and swept["dipvae1"] == swept["dipvae2"] == {1, 2, 5, 10, 20, 50}
    assert swept["annealedvae"] == {5, 10, 25, 50, 75, 100} and len(swept) == 7
    annealed = [r for r in grid.runs if r.options["model"] == "annealedvae"]
    assert all((r.options["gamma"], r.options["c_iters"]) == (1000, 100000) for r in annealed)


def test_set_gives_every_run_the_option_over_the_grid(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", runs=[{"model": "chyvae", "nu": [6, 50], "steps": 9},
                                                 {"model": "betavae", "beta": [2]}])
    g = load_grid(grid, {"steps": 3, "dataset": "shapes2d", "include_shape": False})
    assert len(g.runs) == 6
    assert all((r.options["steps"], r.options["dataset"], r.options["include_shape"]) == (3, "shapes2d", False)
               for r in g.runs)


@pytest.mark.parametrize(
    "item, message",
    [("nope=1", "--set: unknown training option(s) nope"), ("steps", "--set 'steps': expected KEY=VALUE"),
     ("=3", "--set '=3': expected KEY=VALUE"), ("steps=[1", "--set 'steps=[1': the value is not YAML")],
)
def test_bad_set_is_refused_naming_it(tmp_path, capsys, item, message):
    grid = write_grid(tmp_path / "g.yaml")
    assert main(["sweep", "--grid", str(grid), "--dry-run", "--set", item]) == 2
    assert message in capsys.readouterr().err
