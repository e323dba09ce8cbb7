"""python -m chyvae_ext.evaluate: eval.json and pictures from a run, the same scores as training's."""

import json

import numpy as np
import pytest
import torch

from chyvae_ext.data import get_dataset
from chyvae_ext.evaluate import evaluate_run, load_run, main
from chyvae_ext.metrics import PROTOCOLS, factor_vae_score, make_encoder
from chyvae_ext.metrics.factor_vae import Protocol
from chyvae_ext.train import TrainConfig, train

SMALL = Protocol(votes_per_sample=16, train_votes=30, eval_votes=30, std_images=100, std_ddof=0, prune_below=0.0)
TINY = {
    "steps": 6,
    "batch_size": 8,
    "log_every": 3,
    "eval_every": 6,
    "ckpt_every": 6,
    "precision": "fp32",
    "z_dim": 4,
    "hidden": 16,
    "nu": 10.0,
}


@pytest.fixture(autouse=True)
def small_protocol(monkeypatch):
    monkeypatch.setitem(PROTOCOLS, "chyvae", SMALL)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PROTOCOLS, "chyvae", SMALL)
        train(TrainConfig(model="chyvae", dataset="shapes2d", out=str(out), **TINY))
    return out


def test_eval_json_matches_training_and_a_direct_computation(run_dir):
    for name in ("traversals.png", "reconstructions.png"):
        (run_dir / name).unlink()
    record = evaluate_run(run_dir, metrics="factor_vae,sap")
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["step"] == record["step"] == 6 and saved["checkpoint"].endswith("step_00000006.pt")
    assert set(saved["metrics"]) == {"factor_vae", "factor_vae_train", "sap"}
    assert saved["held_out"]["neg_elbo"] > saved["held_out"]["recon"] > 0
    assert (run_dir / "traversals.png").stat().st_size > 0 and (run_dir / "reconstructions.png").exists()
    # Training logged the same score at the same checkpoint: one code path, one seed.
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if r["kind"] == "eval"][-1]
    assert logged["factor_vae"] == saved["metrics"]["factor_vae"]
    assert logged["neg_elbo"] == pytest.approx(saved["held_out"]["neg_elbo"], rel=1e-6)
    # And the same as calling the metric by hand on the loaded model.
    model, config, _, _ = load_run(run_dir)
    direct = factor_vae_score(make_encoder(model), get_dataset(config.dataset), seed=0, **SMALL.__dict__)
    assert direct["eval_accuracy"] == saved["metrics"]["factor_vae"]
    assert np.array_equal(np.array(saved["details"]["factor_vae"]["votes"]), direct["votes"])


def test_cli_writes_and_prints(run_dir, capsys):
    assert main([str(run_dir), "--metrics", "mig", "--no-pictures", "--precision", "bf16"]) == 0
    captured = capsys.readouterr()
    assert "mig" in captured.out and "eval.json" in captured.out
    assert "mig (10,000 images): computing ..." in captured.err and "mig: mig " in captured.err  # on stderr
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["precision"] == "bf16" and 0 <= saved["metrics"]["mig"] <= 1


def test_an_older_checkpoint_can_be_chosen(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(model="betavae", dataset="shapes2d", out=str(out), **dict(TINY, ckpt_every=3, metrics="none")))
    record = evaluate_run(out, metrics="none", checkpoint=out / "checkpoints" / "step_00000003.pt", pictures=False)
    assert record["step"] == 3 and record["metrics"] == {}


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--metrics", "fvae"], "metrics must be a comma-separated list"),
        (["--protocol", "higgins"], "--protocol must be one of chyvae, kim_mnih, got 'higgins'"),
        (["--precision", "fp16"], "--precision must be fp32 or bf16, got 'fp16'"),
        (["--checkpoint", "/nonexistent.pt"], "--checkpoint /nonexistent.pt: no such file"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device"),
    ],
)
def test_bad_options(run_dir, capsys, args, match):
    assert main([str(run_dir), *args]) == 2
    assert match in capsys.readouterr().err


def test_not_a_run_and_no_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert f"RUN_DIR {tmp_path}: no config.json there" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model": "betavae"}))
    assert main([str(tmp_path)]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_metrics_need_ground_truth_factors(tmp_path, capsys):
    images = (np.random.default_rng(0).random((20, 64, 64)) * 255).astype(np.uint8)
    np.savez(tmp_path / "imgs.npz", images=images)
    out = tmp_path / "run"
    train(TrainConfig(model="betavae", dataset="npz", data_root=str(tmp_path / "imgs.npz"), out=str(out), **TINY))
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert "factor_vae" not in [r for r in rows if r["kind"] == "eval"][-1]  # training skips them quietly
    assert main([str(out)]) == 2
    assert "--metrics factor_vae needs a dataset with ground-truth factors; npz has none" in capsys.readouterr().err
    assert main([str(out), "--metrics", "none"]) == 0


def test_posterior_variances_per_dimension_against_a_direct_computation():
    from chyvae_ext.evaluate import posterior_variances
    from chyvae_ext.models import BetaVAE, CHyVAE

    torch.manual_seed(0)
    x = (torch.rand(30, 1, 64, 64, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    for jitter in (0.0, 1e-4):
        model = CHyVAE(latent_dim=3, hidden=16, posterior_jitter=jitter)
        got = posterior_variances(model, x)
        with torch.no_grad():
            _, L = model.eval().posterior(x)
        cov = L.double() @ L.double().mT
        var = torch.stack([cov[:, j, j] for j in range(3)], 1)
        assert got["var_min"] == pytest.approx(var.min(0).values.tolist(), rel=1e-12)
        assert got["var_median"] == pytest.approx(var.median(0).values.tolist(), rel=1e-12)
        assert got["eig_min"] == pytest.approx(float(np.linalg.eigvalsh(cov.numpy())[:, 0].min()), rel=1e-9)
    assert got["eig_min"] >= 1e-4 * (1 - 1e-6)  # the jitter's floor
    beta = BetaVAE(latent_dim=3, hidden=16)
    with torch.no_grad():
        _, logvar = beta.eval().posterior(x)
    got = posterior_variances(beta, x)
    assert got["var_min"] == pytest.approx(logvar.double().exp().min(0).values.tolist(), rel=1e-12)
    assert got["eig_min"] == pytest.approx(float(logvar.double().exp().min()), rel=1e-12)


def test_eval_json_has_the_posterior_variances(run_dir, capsys):
    assert main([str(run_dir), "--metrics", "none", "--no-pictures"]) == 0
    assert "smallest posterior variance" in capsys.readouterr().out
    saved = json.loads((run_dir / "eval.json").read_text())
    assert len(saved["posterior"]["var_min"]) == 4 and saved["posterior"]["eig_min"] > 0
