"""The training layer's rooms on their own: the model registry, the run-directory readers, the
member-by-member view of a model and its optimisers, and the command line's parser."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from chyvae_ext import runfiles
from chyvae_ext.build import build_model
from chyvae_ext.config import MODELS, TrainConfig, check_ensemble, make_parser
from chyvae_ext.models import DIPVAE, AnnealedVAE, BetaTCVAE, BetaVAE, CHyVAE, FactorVAE
from chyvae_ext.models.ensemble import LoneMembers, StackedMembers, member_state_dict, stack_models
from chyvae_ext.models.registry import MODEL_KINDS, ModelKind, kind_of, register

CLASSES = {"chyvae": CHyVAE, "betavae": BetaVAE, "factorvae": FactorVAE, "vae": BetaVAE, "betatcvae": BetaTCVAE,
           "dipvae1": DIPVAE, "dipvae2": DIPVAE, "annealedvae": AnnealedVAE}


def test_registry_holds_every_model_option_with_its_class_and_hyperparameter():
    assert MODELS == tuple(CLASSES)
    assert {name: kind.cls for name, kind in MODEL_KINDS.items()} == CLASSES
    assert {name: kind.hyper for name, kind in MODEL_KINDS.items()} == {
        "chyvae": "nu", "betavae": "beta", "factorvae": "gamma", "vae": "beta", "betatcvae": "beta",
        "dipvae1": "lambda_od", "dipvae2": "lambda_od", "annealedvae": "c_max"}


@pytest.mark.parametrize("model", list(CLASSES))
def test_build_model_passes_each_kinds_options(model):
    c = TrainConfig(model=model, z_dim=3, hidden=16, nu=7.0, gamma=3.0, lambda_od=2.0, c_max=9.0, c_iters=50,
                    dataset_size=1000).resolved()
    m = build_model(c, 1)
    assert type(m) is CLASSES[model] and (m.latent_dim, m.hidden) == (3, 16)
    expected = {"chyvae": ("nu", 7.0), "betavae": ("beta", 4.0), "factorvae": ("gamma", 3.0), "vae": ("beta", 1.0),
                "betatcvae": ("dataset_size", 1000), "dipvae1": ("lambda_d_factor", 10.0),
                "dipvae2": ("lambda_d_factor", 1.0), "annealedvae": ("c_max", 9.0)}[model]
    assert getattr(m, expected[0]) == expected[1]
    if model.startswith("dipvae"):
        assert (m.kind, m.lambda_od) == ({"dipvae1": "i", "dipvae2": "ii"}[model], 2.0)


def test_kind_of_names_the_first_kind_of_a_class_and_refuses_others():
    assert kind_of(BetaVAE(3, 1, 16)).name == "betavae"
    assert kind_of(FactorVAE(3, 1, 16, disc_hidden=8, disc_layers=1)).name == "factorvae"

    class Mine(BetaVAE):
        pass

    with pytest.raises(ValueError, match="no registered model kind has class Mine"):
        kind_of(Mine(3, 1, 16))


def test_register_refuses_a_name_twice():
    with pytest.raises(ValueError, match="model kind 'chyvae' is registered already"):
        register(dataclasses.replace(MODEL_KINDS["chyvae"]))
    assert isinstance(MODEL_KINDS["chyvae"], ModelKind)


def test_stacking_annealedvae_copies_its_step_counter():
    lone = [AnnealedVAE(3, 1, 16, c_max=float(c), c_iters=10) for c in (5, 10)]
    for m in lone:
        m.iteration.fill_(4)
    ens = stack_models(lone)
    assert int(ens.iteration) == 4 and ens.c_max.tolist() == [5.0, 10.0]


def test_run_readers_and_their_messages(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert not runfiles.has_config(run) and runfiles.read_status(run) == {} and runfiles.read_metrics(run) == []
    with pytest.raises(ValueError, match=f"--resume {run}: no config.json there \\(not a run directory\\)"):
        runfiles.read_config(run, what="--resume")
    r = runfiles.Run(run)
    r.write_config({"model": "chyvae", "seed": 3})
    r.write_status({"state": "running", "step": 0})
    r.append_metrics({"kind": "train", "step": 1})
    runfiles.write_sweep_options(run, {"nu": 12})
    assert runfiles.has_config(run) and runfiles.read_config(run) == {"model": "chyvae", "seed": 3}
    assert runfiles.read_status(run) == {"state": "running", "step": 0}
    assert runfiles.read_metrics(run) == runfiles.read_metrics(run / runfiles.METRICS) == [{"kind": "train", "step": 1}]
    assert runfiles.read_sweep_options(run) == {"nu": 12}
    assert runfiles.checkpoint_name(42) == "step_00000042.pt"
    assert runfiles.checkpoint_step_of(run / runfiles.checkpoint_name(42)) == 42


def test_newest_loadable_sets_a_damaged_checkpoint_aside(tmp_path):
    r = runfiles.Run(tmp_path / "run")
    r.prepare()
    with pytest.raises(ValueError, match="no checkpoint in"):
        r.newest_loadable(torch.device("cpu"))
    r.save_checkpoint({"model": {}, "opt": {}, "step": 2}, 2, keep=3)
    (r.ckpt_dir / runfiles.checkpoint_name(4)).write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="skipping checkpoint .*step_00000004.pt"):
        step, state = r.newest_loadable(torch.device("cpu"))
    assert (step, state["step"]) == (2, 2)
    assert (r.ckpt_dir / "step_00000004.pt.damaged").is_file() and r.checkpoint() == r.ckpt_dir / "step_00000002.pt"


def test_lone_members_is_an_ensemble_of_one():
    torch.manual_seed(0)
    model = BetaVAE(3, 1, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    members = LoneMembers(model, [opt, None])
    state, (opt_state, none) = members.state(0)
    assert none is None and state.keys() == model.state_dict().keys() and opt_state == opt.state_dict()
    other = BetaVAE(3, 1, 16)
    LoneMembers(other, [torch.optim.Adam(other.parameters()), None]).load([state], [[opt_state], [None]])
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), state.values(), strict=True))
    members.select([0])
    assert members.lone_model(0, build=None) is model


def test_stacked_members_read_load_and_select_each_member():
    torch.manual_seed(0)
    lone = [BetaVAE(3, 1, 16, beta=float(b)) for b in (1, 2, 3)]
    ens = stack_models(lone)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
    ens.loss(torch.rand(3, 2, 1, 64, 64), generator=[torch.Generator().manual_seed(i) for i in range(3)])["loss"].sum().backward()
    opt.step()
    members = StackedMembers(ens, [opt, None])
    states = [members.state(i) for i in range(3)]
    copy = stack_models([BetaVAE(3, 1, 16, beta=float(b)) for b in (1, 2, 3)])
    copy_opt = torch.optim.Adam(copy.parameters(), lr=1e-3)
    StackedMembers(copy, [copy_opt, None]).load([s[0] for s in states], [[s[1][0] for s in states], [None] * 3])
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), ens.state_dict().values(), strict=True))
    second = members.lone_model(1, lambda: BetaVAE(3, 1, 16, beta=2.0))
    assert all(torch.equal(second.state_dict()[k], v) for k, v in member_state_dict(ens, 1).items())
    members.select([2, 0])
    assert ens.members == 2 and ens.beta.tolist() == [3.0, 1.0]
    assert torch.equal(member_state_dict(ens, 0)["decoder.fc.0.weight"], states[2][0]["decoder.fc.0.weight"])
    assert opt.state[next(iter(ens.parameters()))]["exp_avg"].shape[0] == 2


def test_check_ensemble_names_the_options_that_differ_and_shared_directories():
    a = TrainConfig(model="chyvae", seed=0, out="a").resolved()
    with pytest.raises(ValueError, match="ensemble members must share z_dim: b has z_dim=4 where a has z_dim=10"):
        check_ensemble([a, dataclasses.replace(a, z_dim=4, out="b")])
    with pytest.raises(ValueError, match="ensemble members must have distinct --out directories"):
        check_ensemble([a, dataclasses.replace(a, seed=1)])
    check_ensemble([a, dataclasses.replace(a, seed=1, nu=12.0, out="b")])


def test_make_parser_takes_the_help_texts_opening():
    parser = make_parser("the opening")
    assert parser.prog == "python -m chyvae_ext.train" and parser.description == "the opening"
    args = vars(parser.parse_args(["--model", "betavae", "--steps", "7"]))
    assert (args["model"], args["steps"], args["nu"]) == ("betavae", 7, None)
    assert json.dumps(sorted(args))  # every option has a plain name
