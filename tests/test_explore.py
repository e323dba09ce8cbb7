"""The explorer's API (Starlette's TestClient): every endpoint against the model computed directly, every bad
request's message, start-up failures."""

import io
import json

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from chyvae_ext.build import fixed_batches, open_dataset  # noqa: E402
from chyvae_ext.config import TrainConfig  # noqa: E402
from chyvae_ext.evaluate import load_run  # noqa: E402
from chyvae_ext.explore import N_IMAGES, allowed_hosts, create_app, host_name, load_runs, main  # noqa: E402

LOCAL = "http://127.0.0.1"
from chyvae_ext.train import train  # noqa: E402

TINY = dict(steps=8, batch_size=8, log_every=4, eval_every=8, ckpt_every=4, precision="fp32", z_dim=4, hidden=32,
            metrics="none")


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    train(TrainConfig(model="chyvae", nu=10.0, out=str(root / "chyvae"), **TINY))
    train(TrainConfig(model="betavae", out=str(root / "betavae"), **TINY))
    return [root / "chyvae", root / "betavae"]


@pytest.fixture(scope="module")
def client(run_dirs):
    return TestClient(create_app(load_runs([str(d) for d in run_dirs])), base_url=LOCAL)


def decoded(response) -> np.ndarray:
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.float64) / 255


def expected_png(images: torch.Tensor) -> np.ndarray:
    """(n, 1, H, W) in [0, 1] as the PNG holds them: side by side, rounded to 8 bits."""
    a = (images.clamp(0, 1) * 255).round() / 255
    return torch.cat(list(a[:, 0]), dim=1).numpy()


def test_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/explore.js">' in page.text
    assert client.get("/static/explore.js").status_code == 200
    assert "font-family" in client.get("/static/explore.css").text
    missing = client.get("/static/secret.py")
    assert missing.status_code == 404 and missing.json() == {"error": "no static file 'secret.py'"}
    assert client.get("/nowhere").json() == {"error": "no such page: /nowhere"}


def test_runs_list_their_dimensions_metrics_and_curves(client, run_dirs):
    runs = client.get("/api/runs").json()
    assert [r["name"] for r in runs] == ["chyvae", "betavae"] and [r["id"] for r in runs] == [0, 1]
    chy, beta = runs
    assert chy["nu"] == 10.0 and beta["nu"] is None and chy["z_dim"] == 4 and chy["step"] == 8
    model, config, _, _ = load_run(run_dirs[0])
    _, held_out = fixed_batches(open_dataset(config.resolved(), fixed=False), torch.device("cpu"))
    with torch.no_grad():
        mu, L = model.posterior(held_out)
    var = (L**2).sum(-1)
    kl = (0.5 * (mu**2 + var - var.log() - 1)).mean(0)
    for k, d in enumerate(chy["dims"]):
        assert d["index"] == k
        assert d["mean"] == pytest.approx(float(mu[:, k].mean()), rel=1e-5, abs=1e-6)
        assert d["high"] - d["low"] == pytest.approx(6 * float(mu[:, k].std()), rel=1e-4)
        assert d["kl"] == pytest.approx(float(kl[k]), rel=1e-4) and d["active"] == (d["kl"] > 0.05)
    assert chy["order"] == sorted(range(4), key=lambda k: -chy["dims"][k]["kl"])
    rows = [json.loads(r) for r in (run_dirs[0] / "metrics.jsonl").read_text().splitlines()]
    assert chy["metrics"] == [r for r in rows if r["kind"] == "eval"][-1]
    assert chy["curves"]["step"] == [4, 8] and len(chy["curves"]["regularizer"]) == 2 and "kl" in beta["curves"]
    assert chy["config"]["model"] == "chyvae" and chy["images"] == N_IMAGES


def test_decode_and_traversal_are_the_models_images(client, run_dirs):
    model, _, _, _ = load_run(run_dirs[1])
    z = torch.tensor([[0.5, -1.0, 0.25, 2.0]])
    got = decoded(client.get("/api/runs/1/decode", params={"z": "0.5,-1,0.25,2"}))
    with torch.no_grad():
        want = expected_png(model.decode(z))
    np.testing.assert_allclose(got, want, atol=1.5 / 255)
    dims = client.get("/api/runs").json()[1]["dims"]
    strip = decoded(client.get("/api/runs/1/traversal", params={"z": "0.5,-1,0.25,2", "dim": 2, "steps": 3}))
    assert strip.shape == (64, 3 * 64)
    zs = z.repeat(3, 1)
    zs[:, 2] = torch.tensor([dims[2]["low"], (dims[2]["low"] + dims[2]["high"]) / 2, dims[2]["high"]])
    with torch.no_grad():
        np.testing.assert_allclose(strip, expected_png(model.decode(zs)), atol=1.5 / 255)


def test_images_encode_and_reconstruction_are_the_held_out_images(client, run_dirs):
    model, config, _, _ = load_run(run_dirs[0])
    _, held_out = fixed_batches(open_dataset(config.resolved(), fixed=False), torch.device("cpu"))
    np.testing.assert_allclose(decoded(client.get("/api/runs/0/images/3.png")), expected_png(held_out[3:4]),
                               atol=0.5 / 255)
    post = client.get("/api/runs/0/encode/3").json()
    with torch.no_grad():
        mu, L = model.posterior(held_out[3:4])
        recon = model.decode(mu)
    cov = (L[0] @ L[0].T).numpy()
    np.testing.assert_allclose(post["mu"], mu[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(post["cov"], cov, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(post["corr"], cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))), rtol=1e-4, atol=1e-6)
    assert post["nu"] == 10.0
    np.testing.assert_allclose(decoded(client.get("/api/runs/0/reconstruction/3.png")), expected_png(recon),
                               atol=1.5 / 255)
    beta = client.get("/api/runs/1/encode/0").json()  # a diagonal posterior: no correlation off the diagonal
    assert beta["nu"] is None and np.allclose(np.array(beta["corr"]) - np.eye(4), 0)


@pytest.mark.parametrize(("url", "status", "message"), [
    ("/api/runs/0/decode", 400, "z is required: 4 comma-separated numbers"),
    ("/api/runs/0/decode?z=1,2,3", 400, "z must have 4 values (the run's z_dim), got 3"),
    ("/api/runs/0/decode?z=1,2,3,x", 400, "z must be numbers, got '1,2,3,x'"),
    ("/api/runs/0/decode?z=1,2,nan,4", 400, "z must be finite, got nan at index 2"),
    ("/api/runs/0/decode?z=1,inf,3,4", 400, "z must be finite, got inf at index 1"),
    ("/api/runs/0/decode?z=1,2,3,1e6", 400, "z must lie within -1000..1000, got 1000000.0 at index 3"),
    ("/api/runs/0/traversal?z=0,0,0,0", 400, "dim is required: an integer 0..3"),
    ("/api/runs/0/traversal?z=0,0,0,0&dim=4", 400, "dim must be an integer 0..3, got 4"),
    ("/api/runs/0/traversal?z=0,0,0,0&dim=a", 400, "dim must be an integer 0..3, got 'a'"),
    ("/api/runs/0/traversal?z=0,0,0,0&dim=1&steps=1", 400, "steps must be an integer 2..32, got 1"),
    ("/api/runs/0/traversal?z=0,0,0,0&dim=1&steps=33", 400, "steps must be an integer 2..32, got 33"),
    ("/api/runs/2/decode?z=0,0,0,0", 404, "no run 2: this server shows runs 0..1"),
    ("/api/runs/-1/encode/0", 404, "no run -1: this server shows runs 0..1"),
    ("/api/runs/x/decode?z=0,0,0,0", 400, "run id must be an integer index, got 'x'"),
    ("/api/runs/0/images/12.png", 404, "no image 12: this run shows images 0..11"),
    ("/api/runs/0/images/a.png", 400, "image index must be an integer, got 'a'"),
    ("/api/runs/0/encode/99", 404, "no image 99: this run shows images 0..11"),
    ("/api/runs/0/reconstruction/-3.png", 404, "no image -3: this run shows images 0..11"),
])
def test_bad_requests_get_a_message_not_a_traceback(client, url, status, message):
    response = client.get(url)
    assert response.status_code == status and response.json() == {"error": message}


def test_a_path_in_place_of_a_run_id_is_no_page(client):
    response = client.get("/api/runs/..%2F..%2Fetc%2Fpasswd/decode")
    assert response.status_code == 404 and response.json()["error"].startswith("no such page: ")


def test_an_unreadable_run_fails_at_start_up_naming_it(tmp_path, run_dirs, capsys):
    with pytest.raises(ValueError, match=f"RUN_DIR {tmp_path / 'nothing'}: cannot be explored: .*no config.json there"):
        load_runs([str(tmp_path / "nothing")])
    with pytest.raises(ValueError, match="--checkpoint names one run's checkpoint; got 2 run directories"):
        load_runs([str(d) for d in run_dirs], checkpoint=str(run_dirs[0] / "checkpoints" / "step_00000008.pt"))
    assert main([str(tmp_path / "nothing")]) == 2
    assert f"error: RUN_DIR {tmp_path / 'nothing'}: cannot be explored" in capsys.readouterr().err
    assert main([str(run_dirs[0]), "--port", "70000"]) == 2
    assert "error: --port must be 0..65535, got 70000" in capsys.readouterr().err


def test_non_finite_metrics_are_sent_as_null(tmp_path, run_dirs):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dirs[1], run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 12, "loss": float("nan"), "recon": float("inf"), "kl": 1.0}) + "\n")
        f.write(json.dumps({"kind": "eval", "step": 8, "neg_elbo": float("nan"), "recon": 3.0}) + "\n")
    info = TestClient(create_app(load_runs([str(run)])), base_url=LOCAL).get("/api/runs").json()[0]
    assert info["metrics"] == {"kind": "eval", "step": 8, "neg_elbo": None, "recon": 3.0}
    assert info["curves"]["loss"][-1] is None and info["curves"]["recon"][-1] is None and info["curves"]["kl"][-1] == 1.0


class NotWeights:
    """An object a weights_only load refuses (it would run code to unpickle)."""


def test_checkpoints_load_weights_only(tmp_path, run_dirs):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dirs[1], run)
    ckpt = run / "checkpoints" / "step_00000008.pt"
    torch.save({**torch.load(ckpt, weights_only=True), "extra": NotWeights()}, ckpt)
    with pytest.warns(RuntimeWarning, match=rf"skipping checkpoint {ckpt} .*Weights only load failed"):
        assert load_runs([str(run)])[0].step == 4  # the newest checkpoint that loads as plain data
    (run / "checkpoints" / "step_00000004.pt").unlink()
    with pytest.warns(RuntimeWarning), pytest.raises(
            ValueError, match=f"RUN_DIR {run}: cannot be explored: .*none of its 1 checkpoint"):
        load_runs([str(run)])
    only = load_runs([str(run_dirs[1])], checkpoint=str(run_dirs[1] / "checkpoints" / "step_00000004.pt"))
    assert only[0].step == 4


def test_the_evaluation_shown_is_the_one_of_the_checkpoints_step(tmp_path, run_dirs):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dirs[0], run)  # checkpoints at steps 4 and 8; evaluated at step 8 only
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    at_8 = [r for r in rows if r["kind"] == "eval" and r["step"] == 8][-1]
    newest = TestClient(create_app(load_runs([str(run)])), base_url=LOCAL).get("/api/runs").json()[0]
    assert (newest["step"], newest["metrics"]) == (8, at_8)
    step_4 = str(run / "checkpoints" / "step_00000004.pt")
    info = TestClient(create_app(load_runs([str(run)], checkpoint=step_4)), base_url=LOCAL).get("/api/runs").json()[0]
    assert (info["step"], info["metrics"]) == (4, None)  # not step 8's evaluation beside step 4's model
    (run / "eval.json").write_text(json.dumps({"step": 4, "held_out": {"neg_elbo": 12.5}, "metrics": {"mig": 0.25}}))
    info = TestClient(create_app(load_runs([str(run)], checkpoint=step_4)), base_url=LOCAL).get("/api/runs").json()[0]
    assert info["metrics"] == {"kind": "eval", "step": 4, "neg_elbo": 12.5, "mig": 0.25}  # evaluate's record of step 4


def test_a_foreign_host_is_refused_and_loopback_names_are_answered(client):
    for name in ("evil.example", "evil.example:8000", "192.168.1.5"):
        r = client.get("/api/runs", headers={"host": name})
        assert r.status_code == 400
        assert f"Host {host_name(name)!r} is not this explorer's" in r.json()["error"]
    for name in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
        assert client.get("/api/runs", headers={"host": name}).status_code == 200


def test_allowed_hosts_add_the_bound_address_and_the_named_ones():
    assert allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]", "127.0.0.1"]
    assert allowed_hosts("0.0.0.0", ["lab-box:8000"]) == ["localhost", "127.0.0.1", "[::1]", "lab-box"]
    assert allowed_hosts("::1") == ["localhost", "127.0.0.1", "[::1]", "[::1]"]
    assert host_name("[::1]:8000") == "[::1]" and host_name("Example.org:80") == "example.org"


def diverged_copy(src, dst):
    """A copy of the run whose newest checkpoint holds NaN weights (as a run written before the finiteness
    check could leave), marked failed."""
    import shutil

    shutil.copytree(src, dst)
    ckpt = dst / "checkpoints" / "step_00000008.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    torch.save(state, ckpt)
    (dst / "checkpoints" / "step_00000004.pt").unlink()
    (dst / "status.json").write_text(json.dumps({"state": "failed", "step": 8, "error": "non-finite loss"}))
    return dst


def test_a_run_that_cannot_be_shown_is_listed_with_its_status_and_the_others_are_served(tmp_path, run_dirs):
    bad = diverged_copy(run_dirs[1], tmp_path / "bad")
    runs = load_runs([str(run_dirs[0]), str(bad)])
    client = TestClient(create_app(runs), base_url=LOCAL)
    listed = client.get("/api/runs")
    assert listed.status_code == 200
    good, failed = listed.json()
    assert good["available"] and good["name"] == run_dirs[0].name and good["status"]["state"] == "finished"
    assert not failed["available"] and failed["model"] == "betavae"
    assert failed["status"] == {"state": "failed", "step": 8, "error": "non-finite loss"}
    assert "holds non-finite weights (the run diverged before it was written)" in failed["error"]
    r = client.get("/api/runs/1/decode", params={"z": "0,0,0,0"})
    assert r.status_code == 404 and r.json()["error"].startswith("run 1 (bad) cannot be shown: RUN_DIR")
    assert client.get("/api/runs/0/decode", params={"z": "0,0,0,0"}).status_code == 200
    with pytest.raises(ValueError, match="holds non-finite weights"):
        load_runs([str(bad)])  # alone, nothing could be shown: refused at start-up


def test_a_failed_run_with_a_finite_checkpoint_is_shown_with_its_status(tmp_path, run_dirs):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dirs[0], run)
    (run / "status.json").write_text(json.dumps({"state": "failed", "step": 9, "error": "non-finite loss; last "
                                                 "finite checkpoint: step_00000008.pt (step 8)"}))
    info = TestClient(create_app(load_runs([str(run)])), base_url=LOCAL).get("/api/runs").json()[0]
    assert info["available"] and info["step"] == 8 and info["status"]["state"] == "failed"


def test_model_calls_run_in_worker_threads_so_listing_answers_while_one_is_busy(run_dirs):
    import threading

    import httpx

    from chyvae_ext.explore import Served

    runs = load_runs([str(run_dirs[0])])
    release, entered, threads = threading.Event(), threading.Event(), []
    plain_decode = runs[0].decode

    def slow_decode(z):
        threads.append(threading.current_thread().name)
        entered.set()
        release.wait(60)
        return plain_decode(z)

    runs[0].decode = slow_decode
    served = Served(create_app(runs))
    try:
        busy = threading.Thread(target=lambda: httpx.get(served.url + "api/runs/0/decode?z=0,0,0,0", timeout=90))
        busy.start()
        assert entered.wait(30)
        listed = httpx.get(served.url + "api/runs", timeout=20)  # would wait for the decode on the event loop
        assert listed.status_code == 200 and not release.is_set()
        release.set()
        busy.join(60)
    finally:
        release.set()
        served.stop()
    assert threads and threads[0] != threading.main_thread().name and threads[0] != served.thread.name


def test_the_address_is_printed_once_it_answers_and_a_taken_port_is_one_line(run_dirs, capsys):
    import socket
    import subprocess
    import sys

    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "chyvae_ext.explore", str(run_dirs[0]), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("chyvae_ext explorer: 1 run(s); open http://127.0.0.1:"), line
        url = line.split("open ", 1)[1].strip()
        assert httpx.get(url + "api/runs", timeout=30).status_code == 200  # no retry: it answers already
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main([str(run_dirs[0]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)\n"
