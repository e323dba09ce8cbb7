"""The command lines under random input (issue 31): train, evaluate and sweep with flags, config files and
grid files drawn from valid and invalid values and types, and the explorer's query parameters. Every case
ends with exit 0, or with exit 2 and one line on stderr naming an option or a file (a run that diverges:
exit 1 and its "error:" line), never a traceback; the explorer answers 200, 400 or 404 with a message,
never 500.

The examples are drawn from a fixed seed (``derandomize``), CHYVAE_FUZZ_EXAMPLES of them per command
(default 20: about a minute each on a 2-core CPU); set CHYVAE_FUZZ_RANDOM=1 to draw new ones.
"""

import contextlib
import dataclasses
import io
import itertools
import json
import os
import re

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from chyvae_ext.config import MODELS, TrainConfig  # noqa: E402
from chyvae_ext.evaluate import main as evaluate_main  # noqa: E402
from chyvae_ext.experiments.__main__ import main as experiments_main  # noqa: E402
from chyvae_ext.train import main as train_main  # noqa: E402

FUZZ = settings(
    max_examples=int(os.environ.get("CHYVAE_FUZZ_EXAMPLES", "20")),
    deadline=None,
    derandomize=os.environ.get("CHYVAE_FUZZ_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
    database=None,
)
SAFE = ["--steps", "2", "--batch-size", "4", "--z-dim", "3", "--hidden", "8", "--nu", "10", "--log-every", "1",
        "--eval-every", "2", "--ckpt-every", "1", "--metrics", "none", "--precision", "fp32"]
OPTIONS = "|".join(f.name for f in dataclasses.fields(TrainConfig))  # a config file's keys
NAMED = re.compile(rf"--[a-z][a-z-]+|[\w./-]+\.(json|yaml|yml|npz|pt|h5|hdf5)\b|RUN_DIR|ROOT|grid|argument"
                   rf"|\b({OPTIONS})\b")
counter = itertools.count()

junk_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**40).map(str), junk_text)


def text_of(value) -> str:
    return value if isinstance(value, str) else repr(value)


def small_ints(low, high, *, huge=True):
    """Valid small values, and invalid ones: below the least, not integers, and (``huge``) past any memory."""
    return st.one_of(st.integers(low, high).map(str), st.integers(-3, low - 1).map(str),
                     st.sampled_from([str(10**12), str(2**70)] if huge else ["0"]),
                     st.sampled_from(["1.5", "", "ten", "0x10"]))


TRAIN_FLAGS = {
    "--model": st.sampled_from([*MODELS, "betavea", ""]),
    "--dataset": st.sampled_from(["correlated_ellipses", "shapes2d", "dsprites", "npz", "celeba", "nope"]),
    "--data-root": st.one_of(junk_text, st.sampled_from(["/nonexistent/x.npz", "/dev/null", "/"])),
    "--dataset-size": small_ints(1, 30),
    "--z-dim": small_ints(1, 4),
    "--hidden": small_ints(1, 16),
    "--nu": numbers,
    "--beta": numbers,
    "--gamma": numbers,
    "--posterior-jitter": numbers,
    "--lr": numbers,
    "--steps": small_ints(1, 3, huge=False),  # a huge number of steps is valid: it would train
    "--batch-size": small_ints(1, 6),
    "--seed": st.one_of(st.integers(-3, 2**70).map(str), junk_text),
    "--device": st.sampled_from(["cpu", "cuda", "cuda:7", "foo", "meta", "", "cpu:0"]),
    "--precision": st.sampled_from(["fp32", "bf16", "auto", "fp16"]),
    "--metrics": st.sampled_from(["none", "", "bogus", "none,mig", "factor_vae,,"]),
    "--metric-protocol": st.sampled_from(["chyvae", "kim_mnih", "other"]),
    "--log-every": small_ints(1, 3),
    "--keep-checkpoints": small_ints(1, 3),
    "--num-samples": small_ints(1, 2),
    "--init": st.sampled_from(["torch", "glorot", "xavier"]),
    "--impl": st.sampled_from(["auto", "fused", "reference", "cuda"]),
}
CONFIG_VALUES = st.one_of(st.booleans(), st.integers(-5, 2**70), st.floats(allow_nan=False), junk_text, st.none(),
                          st.lists(st.integers(), max_size=2))
CONFIG_KEYS = st.sampled_from(["learn_nu", "z_dim", "nu", "lr", "seed", "device", "metrics", "beta", "dataset_size",
                               "include_shape", "posterior_jitter", "modle", "steps", "out"])


def config_file(tmp_path, draw_options: dict, raw: str | None) -> str:
    path = tmp_path / f"config-{next(counter)}.{'yaml' if raw is not None else 'json'}"
    path.write_text(raw if raw is not None else json.dumps(draw_options))
    return str(path)


def run_cli(main, argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse's refusals
            rc = exc.code
    return rc, err.getvalue()


def check_outcome(rc: int, err: str, argv) -> None:
    assert "Traceback" not in err, (argv, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if rc == 2:
        assert err.count("\n") == 1 and len(errors) == 1, (argv, err)
        assert NAMED.search(errors[0]), (argv, err)  # it names an option, a file or a directory
    elif rc == 1:
        assert errors, (argv, err)  # a failed (diverged) run says why
    else:
        assert rc == 0, (argv, rc, err)


@FUZZ
@given(flags=st.dictionaries(st.sampled_from(sorted(TRAIN_FLAGS)), st.none(), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: TRAIN_FLAGS[k] for k in keys})),
    config=st.one_of(st.none(), st.dictionaries(CONFIG_KEYS, CONFIG_VALUES, max_size=3).map(lambda d: (d, None)),
                     junk_text.map(lambda t: ({}, t))))
def test_train_under_random_flags_and_config_files_exits_0_or_names_what_is_wrong(tmp_path, flags, config):
    argv = list(SAFE)
    if config is not None:
        options, raw = config
        argv += ["--config", config_file(tmp_path, options, raw)]
    for flag, value in flags.items():
        argv += [f"{flag}={text_of(value)}"]
    argv += ["--out", str(tmp_path / f"run-{next(counter)}")]
    rc, err = run_cli(train_main, argv)
    check_outcome(rc, err, argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert train_main([*SAFE, "--steps", "2", "--out", str(out)]) == 0
    return out


@FUZZ
@given(which=st.sampled_from(["run", "missing", "file", "garbage"]),
       metrics=st.sampled_from(["none", "", "bogus", "mig,,"]),
       protocol=st.sampled_from(["chyvae", "kim_mnih", "x"]),
       seed=st.one_of(st.integers(-3, 2**70).map(str), junk_text),
       device=st.sampled_from([None, "cpu", "cuda", "foo"]),
       precision=st.sampled_from([None, "fp32", "bf16", "fp16"]),
       checkpoint=st.sampled_from([None, "real", "missing", "garbage"]))
def test_evaluate_under_random_arguments_exits_0_or_names_what_is_wrong(trained, tmp_path, which, metrics, protocol,
                                                                         seed, device, precision, checkpoint):
    garbage = tmp_path / "garbage"
    garbage.mkdir(exist_ok=True)
    (garbage / "config.json").write_text('{"model": "chyvae", ')
    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    run = {"run": trained, "missing": tmp_path / "nowhere", "file": tmp_path / "afile", "garbage": garbage}[which]
    argv = [str(run), f"--metrics={metrics}", f"--protocol={protocol}", f"--seed={seed}", "--no-pictures"]
    if device is not None:
        argv.append(f"--device={device}")
    if precision is not None:
        argv.append(f"--precision={precision}")
    if checkpoint is not None:
        path = {"real": trained / "checkpoints" / "step_00000002.pt", "missing": tmp_path / "no.pt",
                "garbage": tmp_path / "bad.pt"}[checkpoint]
        argv.append(f"--checkpoint={path}")
    rc, err = run_cli(evaluate_main, argv)
    check_outcome(rc, err, argv)


GRID_VALUES = st.one_of(CONFIG_VALUES, st.lists(CONFIG_VALUES, max_size=3))


@FUZZ
@given(grid=st.one_of(
    junk_text.map(lambda t: ("raw", t)),
    st.fixed_dictionaries(
        {"seeds": st.one_of(st.lists(st.integers(-2, 3), max_size=3), CONFIG_VALUES),
         "jobs": st.one_of(st.integers(-1, 3), CONFIG_VALUES),
         "common": st.one_of(st.dictionaries(CONFIG_KEYS, CONFIG_VALUES, max_size=3), CONFIG_VALUES),
         "runs": st.one_of(
             st.lists(st.fixed_dictionaries({"model": st.sampled_from([*MODELS, "betavea", 3])},
                                            optional={"nu": GRID_VALUES, "beta": GRID_VALUES,
                                                      "gamma": GRID_VALUES, "z_dim": GRID_VALUES}),
                      min_size=0, max_size=3),
             CONFIG_VALUES)},
        optional={"ensemble": CONFIG_VALUES, "bogus_key": CONFIG_VALUES}).map(lambda d: ("grid", d))),
    overrides=st.lists(st.tuples(CONFIG_KEYS, st.sampled_from(["1", "x", "[1, 2]", "true", "1e-3", ":"])),
                       max_size=2))
def test_sweep_dry_run_under_random_grid_files_exits_0_or_names_what_is_wrong(tmp_path, grid, overrides):
    kind, body = grid
    path = tmp_path / f"grid-{next(counter)}.yaml"
    if kind == "raw":
        path.write_text(body)
    else:
        path.write_text(json.dumps({"out": str(tmp_path / "runs"), **body}))
    argv = ["sweep", "--grid", str(path), "--dry-run"]
    for key, value in overrides:
        argv += ["--set", f"{key}={value}"]
    rc, err = run_cli(experiments_main, argv)
    check_outcome(rc, err, argv)


@pytest.fixture(scope="module")
def client(trained):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from chyvae_ext.explore import create_app, load_runs

    return TestClient(create_app(load_runs([str(trained)])), base_url="http://127.0.0.1")


query_text = st.one_of(junk_text, st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5).map(
    lambda v: ",".join(map(str, v))), st.integers(-5, 40).map(str))


@FUZZ
@given(endpoint=st.sampled_from(["decode", "traversal", "images/{i}.png", "encode/{i}", "reconstruction/{i}.png"]),
       run=st.one_of(st.just("0"), query_text), image=query_text,
       params=st.dictionaries(st.sampled_from(["z", "dim", "steps"]), query_text, max_size=3))
def test_the_explorer_under_random_query_parameters_answers_200_400_or_404(client, endpoint, run, image, params):
    run = run.replace("/", "")
    image = image.replace("/", "")
    url = f"/api/runs/{run}/" + endpoint.replace("{i}", image)
    r = client.get(url, params=params)
    assert r.status_code in (200, 400, 404), (url, params, r.status_code, r.text[:300])
    if r.status_code != 200:
        assert isinstance(r.json().get("error"), str) and r.json()["error"], (url, params)
