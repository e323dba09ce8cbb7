"""Ensembles: a member is the run it would be alone (first step, 100 steps), checkpoints a lone run
loads, resume, a failing member leaving, evaluation for all members at once, sweep --ensemble,
and every refusal's message."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from chyvae_ext.evaluate import load_run
from chyvae_ext.experiments import grid as grid_mod
from chyvae_ext.experiments.__main__ import main as experiments_main
from chyvae_ext.metrics import PROTOCOLS, SharedEncodings, make_encoder, score
from chyvae_ext.metrics.factor_vae import Protocol
from chyvae_ext.models import BetaVAE, CHyVAE, FactorVAE
from chyvae_ext.models.ensemble import (
    load_member_optimizer_states,
    load_member_state_dict,
    member_optimizer_state,
    member_state_dict,
    select_members,
    select_optimizer_members,
    stack_models,
)
from chyvae_ext.train import TrainConfig, Trainer, main, train, train_ensemble

SMALL_PROTOCOL = Protocol(votes_per_sample=16, train_votes=20, eval_votes=20, std_images=100, std_ddof=0, prune_below=0.0)


@pytest.fixture(autouse=True)
def small_metric_protocol(monkeypatch):
    monkeypatch.setitem(PROTOCOLS, "chyvae", SMALL_PROTOCOL)


FAST = {"steps": 8, "batch_size": 8, "log_every": 4, "eval_every": 8, "ckpt_every": 4, "precision": "fp32",
        "z_dim": 4, "hidden": 32}

KINDS = {  # (class, constructor options, per-member hyperparameters)
    "chyvae": (CHyVAE, {}, [{"nu": 6.5}, {"nu": 200.0}, {"nu": 12.3}]),
    "chyvae_learned_nu": (CHyVAE, {"learn_nu": True}, [{"nu": 6.5}, {"nu": 200.0}, {"nu": 12.3}]),
    "betavae": (BetaVAE, {}, [{"beta": 1.0}, {"beta": 4.0}, {"beta": 16.0}]),
    "factorvae": (FactorVAE, {"disc_hidden": 64, "disc_layers": 2}, [{"gamma": 10.0}, {"gamma": 40.0}, {"gamma": 2.0}]),
}


def lone_models(kind, dtype):
    cls, common, hypers = KINDS[kind]
    models = []
    for seed, hyper in enumerate(hypers):
        torch.manual_seed(seed)
        models.append(cls(5, 1, 32, **common, **hyper).to(dtype))
    return models


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("conv_mode", ["members", "grouped"])
def test_first_step_loss_and_gradients_equal_the_lone_runs(kind, dtype, tol, conv_mode):
    lones = lone_models(kind, dtype)
    ens = stack_models(lones)
    ens.encoder.conv_mode = ens.decoder.conv_mode = conv_mode
    xs = torch.stack([(torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(i)) > 0.5).to(dtype)
                      for i in range(3)])
    out = ens.loss(xs, generator=[torch.Generator().manual_seed(10 + i) for i in range(3)])
    out["loss"].sum().backward()
    stacked = dict(ens.named_parameters())
    for i, lone in enumerate(lones):
        alone = lone.loss(xs[i], generator=torch.Generator().manual_seed(10 + i))
        alone["loss"].backward()
        for term in alone:
            assert rel(out[term][i], alone[term]) <= tol, (term, i)
        for name, p in lone.named_parameters():
            if p.grad is not None:
                assert rel(stacked[name].grad[i], p.grad) <= tol, (name, i)
    if kind == "factorvae":  # the discriminator's loss and gradients, with its shuffles
        z = out["z"].detach()
        ens.zero_grad()  # the VAE's loss reached the discriminator too (as a training step zeroes them)
        d_loss = ens.discriminator_loss(z, z.flip(1), generator=[torch.Generator().manual_seed(5 + i) for i in range(3)])
        d_loss.sum().backward()
        for i, lone in enumerate(lones):
            lone.zero_grad()
            alone = lone.discriminator_loss(z[i], z[i].flip(0), generator=torch.Generator().manual_seed(5 + i))
            alone.backward()
            assert rel(d_loss[i], alone) <= tol
            for name, p in lone.discriminator.named_parameters():
                assert rel(stacked[f"discriminator.{name}"].grad[i], p.grad) <= tol, name


def test_ensemble_regulariser_is_one_call_with_per_datapoint_nu(monkeypatch):
    import chyvae_ext.models.vae as vae

    calls = []
    real = vae.chyvae_regularizer

    def spy(mu, L, z, nu, *args, **kwargs):
        calls.append((tuple(mu.shape), nu))
        return real(mu, L, z, nu, *args, **kwargs)

    monkeypatch.setattr(vae, "chyvae_regularizer", spy)
    ens = stack_models(lone_models("chyvae", torch.float32))
    ens.loss(torch.zeros(3, 4, 1, 64, 64), generator=[torch.Generator() for _ in range(3)])
    assert len(calls) == 1 and calls[0][0] == (12, 5)
    assert calls[0][1].tolist() == [6.5] * 4 + [200.0] * 4 + [12.3] * 4  # float64, exact


def test_member_state_dict_round_trips_and_loads_as_a_lone_model():
    lones = lone_models("factorvae", torch.float32)
    ens = stack_models(lones)
    for i, lone in enumerate(lones):
        state = member_state_dict(ens, i)
        assert state.keys() == lone.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in lone.state_dict().items())
    other = copy.deepcopy(lones[0])
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    load_member_state_dict(ens, 1, other.state_dict())
    assert all(torch.equal(member_state_dict(ens, 1)[k], v) for k, v in other.state_dict().items())
    assert all(torch.equal(member_state_dict(ens, 0)[k], v) for k, v in lones[0].state_dict().items())


def test_optimizer_state_per_member_round_trips_and_select_keeps_the_right_members():
    lones = lone_models("chyvae_learned_nu", torch.float32)
    ens = stack_models(lones)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
    ens.loss(torch.rand(3, 4, 1, 64, 64), generator=[torch.Generator() for _ in range(3)])["loss"].sum().backward()
    opt.step()
    states = [member_optimizer_state(opt, i) for i in range(3)]
    lone_shapes = [p.shape for p in lones[0].parameters()]  # nu_raw first, as the lone model holds it
    assert [states[1]["state"][i]["exp_avg"].shape for i in range(len(lone_shapes))] == lone_shapes
    opt2 = torch.optim.Adam(stack_models(lones).parameters(), lr=1e-3)
    load_member_optimizer_states(opt2, states)
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    before = [member_state_dict(ens, i) for i in range(3)]
    select_optimizer_members(opt, [2, 0])
    select_members(ens, [2, 0])
    assert ens.members == 2 and ens.encoder.members == 2 and ens.nu_raw.shape == (2,)
    for new, old in ((0, 2), (1, 0)):
        assert all(torch.equal(member_state_dict(ens, new)[k], v) for k, v in before[old].items())
        got = member_optimizer_state(opt, new)["state"][0]["exp_avg"]
        assert torch.equal(got, states[old]["state"][0]["exp_avg"])
    ens.loss(torch.rand(2, 4, 1, 64, 64), generator=[torch.Generator() for _ in range(2)])["loss"].sum().backward()
    opt.step()  # shapes agree after the selection


def test_fixed_nu_stays_float64_when_the_model_is_cast():
    ens = stack_models(lone_models("chyvae", torch.float32)).float()
    assert ens.nu.dtype == torch.float64 and ens.nu.tolist() == [6.5, 200.0, 12.3]
    ens = ens.double()
    assert ens.nu.dtype == torch.float64


def configs(tmp_path, model="chyvae", **over):
    hyper = {"chyvae": [{"nu": 6.5}, {"nu": 200.0}], "betavae": [{"beta": 1.0}, {"beta": 8.0}],
             "factorvae": [{"gamma": 10.0}, {"gamma": 30.0}]}[model]
    return [TrainConfig(model=model, seed=s, out=str(tmp_path / f"{model}-{s}"), **{**FAST, **h, **over})
            for s, h in enumerate(hyper)]


def final_state(run_dir):
    ckpt = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(ckpt, weights_only=False)


@pytest.mark.parametrize(("model", "over"), [
    ("chyvae", {}), ("chyvae", {"learn_nu": True}), ("betavae", {}), ("factorvae", {}),
])
def test_100_steps_member_losses_agree_with_lone_runs(tmp_path, monkeypatch, model, over):
    if model == "factorvae":  # a 100 x 2 discriminator: the default 1000 x 6 one would take CI minutes
        import chyvae_ext.build as build_mod

        def small(c, channels):
            return FactorVAE(c.z_dim, channels, c.hidden, gamma=c.gamma, disc_hidden=100, disc_layers=2)

        monkeypatch.setattr(build_mod, "build_model", small)
    over = dict(over, steps=100, batch_size=4, log_every=25, eval_every=100, ckpt_every=100, metrics="none")
    members = configs(tmp_path / "ens", model, **over)
    lones = configs(tmp_path / "lone", model, **over)
    assert [s["state"] for s in train_ensemble(members)] == ["finished", "finished"]
    for member, lone in zip(members[1:], lones[1:], strict=True):  # the second member (the first step checks all)
        train(lone)
        rows = [[json.loads(r) for r in open(f"{c.out}/metrics.jsonl")] for c in (member, lone)]
        train_rows = [[r for r in rs if r["kind"] == "train"] for rs in rows]
        assert [r["step"] for r in train_rows[0]] == [25, 50, 75, 100]
        for a, b in zip(*train_rows, strict=True):
            assert abs(a["loss"] - b["loss"]) <= 0.01 * abs(b["loss"])
        eval_a, eval_b = (next(r for r in rs if r["kind"] == "eval") for rs in rows)
        assert abs(eval_a["neg_elbo"] - eval_b["neg_elbo"]) <= 0.01 * abs(eval_b["neg_elbo"])


def test_member_checkpoints_load_as_lone_runs_and_resume_alone(tmp_path):
    members = configs(tmp_path, "factorvae")
    train_ensemble(members)
    run = tmp_path / "factorvae-1"
    for name in ("config.json", "metrics.jsonl", "status.json", "reconstructions.png", "samples.png",
                 "traversals.png", "traversals.gif", "curves.png"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())
    state = final_state(run)
    assert state["step"] == 8 and state["opt_d"] is not None
    model, config, _, step = load_run(run)
    assert step == 8 and config.gamma == 30.0 and model.gamma == 30.0
    # a lone --resume continues the member as any run
    assert main(["--resume", str(run), "--steps", "12"]) == 0
    assert final_state(run)["step"] == 12


def test_interrupted_ensemble_resumes_to_the_uninterrupted_result(tmp_path):
    full = configs(tmp_path / "full", "chyvae", learn_nu=True)
    train_ensemble(full)
    half = configs(tmp_path / "half", "chyvae", learn_nu=True, steps=4)
    train_ensemble(half)
    assert main(["--ensemble", *(c.out for c in half), "--resume", "--steps", "8"]) == 0
    for a, b in zip(full, half, strict=True):
        sa, sb = final_state(Path(a.out)), final_state(Path(b.out))
        assert sa["step"] == sb["step"] == 8
        for k, v in sa["model"].items():
            assert torch.equal(v, sb["model"][k]), k


def test_a_failing_member_is_marked_failed_and_the_others_go_on(tmp_path, capsys):
    members = configs(tmp_path, "betavae")
    members.append(TrainConfig(model="betavae", seed=2, beta=2.0, out=str(tmp_path / "betavae-2"), **FAST))
    trainer = Trainer(members, ensemble=True)
    with torch.no_grad():
        trainer.model.decoder.fc[0].bias[1].fill_(float("nan"))  # member 1 only
    statuses = trainer.run()
    assert [s["state"] for s in statuses] == ["finished", "failed", "finished"]
    assert statuses[1]["step"] == 4 and "non-finite loss within steps 1..4" in statuses[1]["error"]
    assert json.loads((tmp_path / "betavae-1" / "status.json").read_text())["state"] == "failed"
    assert "betavae-1: non-finite loss" in capsys.readouterr().err
    # the survivors are their lone runs
    lone = TrainConfig(model="betavae", seed=2, beta=2.0, out=str(tmp_path / "lone"), **FAST)
    train(lone)
    a, b = final_state(tmp_path / "betavae-2")["model"], final_state(tmp_path / "lone")["model"]
    assert all(rel(a[k], b[k]) <= 1e-4 for k in b)


def test_evaluation_encodes_each_image_once_for_all_members_with_the_lone_scores():
    from chyvae_ext.data import get_dataset

    lones = lone_models("chyvae", torch.float32)
    ens = stack_models(lones)
    dataset = get_dataset("correlated_ellipses")
    shared = SharedEncodings(ens)
    got = [score(shared.encoder(i), dataset, ["factor_vae"], seed=3)[0] for i in range(3)]
    calls = shared.passes
    want = [score(make_encoder(m), dataset, ["factor_vae"], seed=3)[0] for m in lones]
    assert got == want
    lone_calls = []
    count = make_encoder(lones[0])
    score(lambda x: lone_calls.append(1) or count(x), dataset, ["factor_vae"], seed=3)
    assert calls == len(lone_calls)  # one ensemble pass per batch a lone evaluation encodes


@pytest.mark.parametrize("metrics", [["factor_vae"], ["mig"]])
def test_evaluation_through_the_lazy_view_renders_each_image_once_for_all_members_with_the_lone_scores(metrics):
    from chyvae_ext.data import get_dataset

    lones = lone_models("chyvae", torch.float32)
    ens = stack_models(lones)
    dataset = get_dataset("correlated_ellipses")
    rendered = []
    plain_pixels = type(dataset).pixels

    class Counting(type(dataset)):
        def pixels(self, factors):
            rendered.append(len(factors))
            return plain_pixels(self, factors)

    counted = Counting()
    shared = SharedEncodings(ens)
    view = shared.dataset(counted)
    got = [score(shared.encoder(i), view, metrics, seed=3)[0] for i in range(3)]
    want = [score(make_encoder(m), dataset, metrics, seed=3)[0] for m in lones]
    assert got == want  # each member's factors, votes and scores are its lone evaluation's
    lone_rendered = []
    lone_counted = Counting()
    rendered_before = list(rendered)
    rendered.clear()
    score(make_encoder(lones[0]), lone_counted, metrics, seed=3)
    lone_rendered, rendered[:] = list(rendered), rendered_before
    assert sum(rendered) == sum(lone_rendered) == shared.rendered  # rendered once, not once per member


def test_shared_encodings_encode_afresh_when_a_member_asks_for_other_images():
    ens = stack_models(lone_models("betavae", torch.float32))
    shared = SharedEncodings(ens)
    a, b = torch.rand(5, 1, 64, 64), torch.rand(5, 1, 64, 64)
    first = shared.encoder(0)(a)
    other = shared.encoder(1)(b)  # not the images member 0 asked for: encoded for itself
    assert shared.passes == 2
    assert torch.allclose(other, make_encoder(ens)(b)[1]) and torch.allclose(first, make_encoder(ens)(a)[0])


def test_sweep_ensemble_writes_complete_run_directories(tmp_path, monkeypatch):
    common = dict(FAST, metrics="factor_vae", eval_every=8)
    spec = {"out": "runs", "seeds": [0, 1], "common": common, "runs": [{"model": "chyvae", "nu": [12, 200]}]}
    (tmp_path / "grid.json").write_text(json.dumps(spec))
    # the sweep's processes score with the small protocol too
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site") + ":" + ":".join(sys.path))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "from chyvae_ext.metrics import PROTOCOLS\nfrom chyvae_ext.metrics.factor_vae import Protocol\n"
        f"PROTOCOLS['chyvae'] = Protocol(*{tuple(SMALL_PROTOCOL.__dict__.values())})\n"
    )
    assert experiments_main(["sweep", "--grid", str(tmp_path / "grid.json"), "--ensemble"]) == 0
    runs = sorted((tmp_path / "runs").glob("chyvae-*"))
    assert [r.name for r in runs] == ["chyvae-nu12-seed0", "chyvae-nu12-seed1", "chyvae-nu200-seed0", "chyvae-nu200-seed1"]
    for run in runs:
        assert json.loads((run / "status.json").read_text())["state"] == "finished"
        assert (run / "traversals.gif").is_file() and (run / "curves.png").is_file()
        assert any(json.loads(r)["kind"] == "eval" for r in (run / "metrics.jsonl").read_text().splitlines())
    log = (runs[0] / "train.log").read_text()
    assert "4 members" in log
    assert "trained in an ensemble of 4" in (runs[1] / "train.log").read_text()
    # evaluate and collect take them as any run
    assert load_run(runs[2])[1].nu == 200
    assert experiments_main(["collect", str(tmp_path / "runs"), "--no-score"]) == 0  # scoring: test_collect_scores
    assert len((tmp_path / "runs" / "results.csv").read_text().splitlines()) == 5
    # a second sweep skips them all
    assert experiments_main(["sweep", "--grid", str(tmp_path / "grid.json"), "--ensemble"]) == 0


def test_plan_groups_by_shape_and_caps_the_size(tmp_path):
    spec = {"out": str(tmp_path), "seeds": [0, 1, 2], "ensemble": True, "ensemble_size": 4,
            "runs": [{"model": "chyvae", "nu": [12, 200]}, {"model": "betavae", "beta": [1, 4]},
                     {"model": "chyvae", "hidden": 64, "nu": [30]}]}
    from chyvae_ext.experiments.sweep import plan_jobs

    grid = grid_mod.expand_grid(spec)
    jobs = plan_jobs(grid, [(r, "new") for r in grid.runs])
    sizes = sorted((job.specs[0].options["model"], job.specs[0].options.get("hidden", 128), len(job.specs))
                   for job in jobs)
    assert sizes == [("betavae", 128, 2), ("betavae", 128, 4), ("chyvae", 64, 3), ("chyvae", 128, 2),
                     ("chyvae", 128, 4)]
    assert all(len({spec.options.get("hidden") for spec in job.specs}) == 1 for job in jobs)


def test_plan_puts_runs_under_way_before_new_ones(tmp_path):
    from chyvae_ext.experiments.sweep import plan_jobs

    spec = {"out": str(tmp_path), "seeds": [0, 1], "runs": [{"model": "chyvae", "nu": [12, 50]}]}
    grid = grid_mod.expand_grid(spec)  # seed-major: nu12-seed0, nu50-seed0, nu12-seed1, nu50-seed1
    states = {"chyvae-nu12-seed1": "resumable", "chyvae-nu50-seed1": "resumable"}
    todo = [(r, states.get(r.name, "new")) for r in grid.runs]
    assert [job.names[0] for job in plan_jobs(grid, todo)] == [
        "chyvae-nu12-seed1", "chyvae-nu50-seed1", "chyvae-nu12-seed0", "chyvae-nu50-seed0"]
    ensembles = plan_jobs(grid_mod.expand_grid(spec | {"ensemble": True, "ensemble_size": 2}), todo)
    assert [job.names for job in ensembles] == [
        ["chyvae-nu12-seed1", "chyvae-nu50-seed1"], ["chyvae-nu12-seed0", "chyvae-nu50-seed0"]]


# ---- refusals ---------------------------------------------------------------------------------------------------
def test_stack_models_refusals():
    with pytest.raises(ValueError, match=r"stack_models: models must hold at least one model, got none"):
        stack_models([])
    with pytest.raises(ValueError, match=r"stack_models: models\[1\] differs in kind or shape from models\[0\]"):
        stack_models([BetaVAE(4, 1, 32), BetaVAE(4, 1, 64)])
    with pytest.raises(ValueError, match=r"stack_models: models\[1\] differs in kind"):
        stack_models([BetaVAE(4, 1, 32), CHyVAE(4, 1, 32)])
    ens = stack_models([BetaVAE(4, 1, 32)] * 2)
    with pytest.raises(ValueError, match=r"stack_models: models\[0\] must be a lone model of chyvae_ext.models, got"):
        stack_models([ens])
    with pytest.raises(ValueError, match=r"stack_models: models\[1\] has another prior_cov than models\[0\]"):
        stack_models([CHyVAE(4, 1, 32), CHyVAE(4, 1, 32, prior_cov=2.0)])


def test_member_function_refusals():
    ens = stack_models([BetaVAE(4, 1, 32)] * 2)
    with pytest.raises(ValueError, match=r"member must be an integer in \[0, 2\), got 2"):
        member_state_dict(ens, 2)
    with pytest.raises(ValueError, match=r"expected an ensemble \(a model built with members=M\), got a lone BetaVAE"):
        member_state_dict(BetaVAE(4, 1, 32), 0)
    state = BetaVAE(4, 1, 32).state_dict()
    with pytest.raises(ValueError, match=r"load_member_state_dict: missing keys \['decoder.fc.0.bias'\]"):
        load_member_state_dict(ens, 0, {k: v for k, v in state.items() if k != "decoder.fc.0.bias"})
    with pytest.raises(ValueError, match=r"load_member_state_dict: encoder.fc.0.weight has shape \(16, 1024\), "
                       r"expected \(32, 1024\)"):
        load_member_state_dict(ens, 0, state | {"encoder.fc.0.weight": torch.zeros(16, 1024)})
    with pytest.raises(ValueError, match=r"keep must list members in \[0, 2\), got \[0, 5\]"):
        select_members(ens, [0, 5])
    with pytest.raises(ValueError, match=r"SharedEncodings needs an ensemble .* got a lone BetaVAE"):
        SharedEncodings(BetaVAE(4, 1, 32))
    with pytest.raises(ValueError, match=r"member must be an integer in \[0, 2\), got -1"):
        SharedEncodings(ens).encoder(-1)


def test_ensemble_model_input_refusals():
    with pytest.raises(ValueError, match=r"beta must have one value per member \(3\), got 2"):
        BetaVAE(4, 1, 32, beta=[1.0, 2.0], members=3)
    with pytest.raises(ValueError, match=r"nu must be a number > 3, got 2.0"):
        CHyVAE(4, 1, 32, nu=[10.0, 2.0], members=2)
    with pytest.raises(ValueError, match=r"members must be an integer > 0, got 0"):
        BetaVAE(4, 1, 32, members=0)
    ens = BetaVAE(4, 1, 32, members=2)
    with pytest.raises(ValueError, match=r"x must have shape \(2, N, 1, 64, 64\) \(one batch per member\), got \(3, 1, 64, 64\)"):
        ens.loss(torch.zeros(3, 1, 64, 64))
    with pytest.raises(ValueError, match=r"an ensemble of 2 members draws with one generator per member"):
        ens.sample_noise(4, "cpu", torch.Generator())
    ens.encoder.conv_mode = "fast"
    with pytest.raises(ValueError, match=r"conv_mode must be one of auto, grouped, members, got 'fast'"):
        ens.encode(torch.zeros(2, 1, 64, 64))


def test_trainer_refusals(tmp_path, capsys):
    a, b = configs(tmp_path, "chyvae")
    with pytest.raises(ValueError, match=r"ensemble members must share hidden, lr: .* has hidden=64, lr=0.001 where"):
        train_ensemble([a, TrainConfig(**{**b.__dict__, "hidden": 64, "lr": 1e-3})])
    with pytest.raises(ValueError, match=r"ensemble members must have distinct --out directories"):
        train_ensemble([a, TrainConfig(**{**b.__dict__, "out": a.out})])
    with pytest.raises(ValueError, match=r"configs must hold at least one TrainConfig, got none"):
        Trainer([])
    with pytest.raises(ValueError, match=r"several configs train together only as an ensemble"):
        Trainer([a, b], ensemble=False)
    train(a)
    train(TrainConfig(**{**b.__dict__, "steps": 4}))
    (Path(b.out) / "checkpoints" / "step_00000004.pt").rename(Path(b.out) / "checkpoints" / "step_00000003.pt")
    with pytest.raises(ValueError, match=r"an ensemble resumes together, from a step every member has a loadable "
                                         r"checkpoint of; there is none \(chyvae-0 at 4, 8; chyvae-1 at 3\)"):
        train_ensemble([a, b], resume=True)
    assert main(["--ensemble", str(tmp_path / "nowhere")]) == 2
    assert "no sweep_options.json there (the run's options (the sweep writes them))" in capsys.readouterr().err
    assert main(["--ensemble", a.out, b.out, "--out", "x"]) == 2
    assert "--out cannot be given with --ensemble" in capsys.readouterr().err
    assert main(["--ensemble", a.out, "--resume", b.out]) == 2
    assert "--resume takes no RUN_DIR with --ensemble" in capsys.readouterr().err
    assert main(["--resume"]) == 2
    assert "--resume needs a RUN_DIR" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "value", "match"), [
    ("ensemble", "yes", r"grid: ensemble must be true or false, got 'yes'"),
    ("ensemble_size", 0, r"grid: ensemble_size must be a positive integer, got 0"),
])
def test_grid_ensemble_refusals(key, value, match):
    with pytest.raises(ValueError, match=match):
        grid_mod.expand_grid({key: value, "runs": [{"model": "chyvae"}]})


def test_sweep_cli_ensemble_size_refusal(tmp_path, capsys):
    (tmp_path / "g.json").write_text(json.dumps({"runs": [{"model": "chyvae"}]}))
    assert experiments_main(["sweep", "--grid", str(tmp_path / "g.json"), "--ensemble-size", "0"]) == 2
    assert "--ensemble-size must be a positive integer, got 0" in capsys.readouterr().err


# ---- the stacked layers and helpers -----------------------------------------------------------------------------
@pytest.mark.parametrize("transposed", [False, True])
def test_stacked_conv_grouped_and_member_by_member_equal_each_members_own_convolution(transposed):
    from chyvae_ext.models.networks import StackedConv2d, _run_members, channels_to_members, members_to_channels

    torch.manual_seed(0)
    layer = StackedConv2d(3, 4, 5, transposed=transposed).double()
    x = torch.randn(3, 2, 4, 8, 8, dtype=torch.float64)
    grouped = channels_to_members(layer(members_to_channels(x)), 3)
    each = _run_members(torch.nn.Sequential(layer), x)
    cls = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
    for m in range(3):
        own = cls(4, 5, 4, stride=2, padding=1).double()
        with torch.no_grad():
            own.weight.copy_(layer.weight[m])
            own.bias.copy_(layer.bias[m])
        want = own(x[m])
        assert torch.allclose(grouped[m], want, rtol=1e-12, atol=1e-12)
        assert torch.allclose(each[m], want, rtol=1e-12, atol=1e-12)


def test_stacked_linear_equals_each_members_linear():
    from chyvae_ext.models.networks import StackedLinear

    layer = StackedLinear(3, 6, 2).double()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    out = layer(x)
    for m in range(3):
        assert torch.allclose(out[m], x[m] @ layer.weight[m].T + layer.bias[m], rtol=1e-12)


def test_member_held_out_terms_equal_each_lone_models():
    from chyvae_ext.build import held_out_terms, member_held_out_terms

    lones = lone_models("chyvae", torch.float32)
    held_out = (torch.rand(16, 1, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    got = member_held_out_terms(stack_models(lones), held_out, bf16=False)
    for terms, lone in zip(got, lones, strict=True):
        want = held_out_terms(lone, held_out, bf16=False)
        assert terms.keys() == want.keys()
        assert all(abs(terms[k] - want[k]) <= 1e-5 * abs(want[k]) for k in want)
    assert member_held_out_terms(lones[0], held_out, bf16=False) == [held_out_terms(lones[0], held_out, bf16=False)]


def test_ensemble_key_ignores_seed_and_hyperparameters_only():
    from chyvae_ext.config import ensemble_key

    a = TrainConfig(model="chyvae", seed=0, nu=12.0, out="a")
    assert ensemble_key(a) == ensemble_key(TrainConfig(model="chyvae", seed=3, nu=200.0, beta=2.0, out="b"))
    assert ensemble_key(a) != ensemble_key(TrainConfig(model="chyvae", hidden=64))
    assert ensemble_key(a) != ensemble_key(TrainConfig(model="chyvae", learn_nu=True))


def test_checkpoint_step_reads_the_last_checkpoint(tmp_path):
    from chyvae_ext.experiments.sweep import checkpoint_step

    assert checkpoint_step(tmp_path) == 0
    (tmp_path / "checkpoints").mkdir()
    for step in (500, 1500, 1000):
        (tmp_path / "checkpoints" / f"step_{step:08d}.pt").write_bytes(b"")
    assert checkpoint_step(tmp_path) == 1500


def test_members_side_by_side_on_threads_equal_members_one_after_another():
    # the threaded stacks (a multi-threaded CPU) against the serial ones (one thread), values and gradients
    from chyvae_ext.models import _threaded

    lones = lone_models("chyvae", torch.float64)
    xs = torch.rand(3, 4, 1, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    threads = torch.get_num_threads()
    for n in (2, 1):
        torch.set_num_threads(n)
        try:
            ens = stack_models(lones)
            assert (_threaded.workers() > 1) == (n > 1)
            out = ens.loss(xs, generator=[torch.Generator().manual_seed(i) for i in range(3)])
            out["loss"].sum().backward()
            results.append((out["loss"].detach(), [p.grad for p in ens.parameters()]))
        finally:
            torch.set_num_threads(threads)
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert rel(loss_a, loss_b) <= 1e-12
    assert all(rel(a, b) <= 1e-10 for a, b in zip(grads_a, grads_b, strict=True))


def test_compiled_ensemble_step_matches_the_eager_one():
    from chyvae_ext.step import make_step

    results = []
    for compile in (None, "aot_eager"):
        ens = stack_models(lone_models("chyvae", torch.float32))
        opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
        xs = torch.rand(3, 4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        step = make_step(ens, opt, None, iter([xs] * 3), gens, bf16=False, compile=compile)
        outs = [step()["loss"].detach() for _ in range(3)]  # eager first step, then the compiled graph
        results.append((outs, [p.detach().clone() for p in ens.parameters()]))
    (a_outs, a_params), (b_outs, b_params) = results
    for a, b in zip(a_outs, b_outs, strict=True):
        assert rel(b, a) <= 1e-5
    assert all(rel(b, a) <= 1e-4 for a, b in zip(a_params, b_params, strict=True))
