"""Hostile files (issue 31, items 1-2): a data file or a checkpoint that would run code when read is
refused without running it, and a data file declaring a huge array is refused from its header."""

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from chyvae_ext.data import DataError, get_dataset
from chyvae_ext.data.files import load_npz_images


class Marker:
    """Unpickling this creates ``path`` (as a crafted file's payload would run any command)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_npz(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    return buf.getvalue()


def npy_header_only(shape, dtype) -> bytes:
    """A .npy that declares ``shape`` and holds no data (a few bytes claiming terabytes)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def evil_npz(path, marker):
    payload = np.empty(1, dtype=object)
    payload[0] = Marker(marker)
    classes = np.zeros((737280, 6), np.int64)
    write_npz(path, {"imgs": npy_bytes(payload), "latents_classes": npy_bytes(classes[:2]),
                     "latents_values": npy_bytes(np.zeros(2)), "metadata": npy_bytes(payload)})


def test_a_pickled_payload_in_dsprites_npz_is_refused_unrun(tmp_path):
    evil_npz(tmp_path / "evil.npz", tmp_path / "marker")
    with pytest.raises(DataError, match=r"key 'imgs' of .*evil.npz holds Python objects \(dtype object\); refused"):
        get_dataset("dsprites", tmp_path / "evil.npz")
    assert not (tmp_path / "marker").exists()


def test_the_training_cli_refuses_the_pickled_npz_without_running_it(tmp_path):
    evil_npz(tmp_path / "evil.npz", tmp_path / "marker")
    proc = subprocess.run([sys.executable, "-m", "chyvae_ext.train", "--dataset", "dsprites", "--data-root",
                           str(tmp_path / "evil.npz"), "--out", str(tmp_path / "run"), "--steps", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "holds Python objects" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "marker").exists()


def test_a_huge_declared_shape_is_refused_from_the_header(tmp_path):
    write_npz(tmp_path / "huge.npz", {"imgs": npy_header_only((737280, 64, 64000), np.uint8),
                                      "latents_classes": npy_header_only((737280, 6), np.int64),
                                      "latents_values": npy_header_only((2,), np.float64),
                                      "metadata": npy_header_only((1,), np.float64)})
    with pytest.raises(DataError, match=r"imgs must be uint8 \(737280, 64, 64\), got uint8 \(737280, 64, 64000\)"):
        get_dataset("dsprites", tmp_path / "huge.npz")
    write_npz(tmp_path / "images.npz", {"x": npy_header_only((10**9, 64, 64), np.uint8)})
    with pytest.raises(DataError, match=r"key 'x' of .*images.npz declares shape \(1000000000, 64, 64\) of uint8 "
                                        r"\(3814.7 GiB\), more than this machine's memory"):
        load_npz_images(tmp_path / "images.npz", key="x")


def test_an_object_array_in_a_plain_image_npz_is_refused_unrun(tmp_path):
    payload = np.empty(1, dtype=object)
    payload[0] = Marker(tmp_path / "marker")
    write_npz(tmp_path / "faces.npz", {"images": npy_bytes(payload)})
    with pytest.raises(DataError, match=r"holds Python objects"):
        load_npz_images(tmp_path / "faces.npz", key="images")
    assert not (tmp_path / "marker").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from chyvae_ext.train import TrainConfig, train

    out = tmp_path_factory.mktemp("hostile") / "run"
    train(TrainConfig(out=str(out), steps=2, batch_size=4, log_every=1, eval_every=2, ckpt_every=1,
                      precision="fp32", z_dim=3, hidden=16, nu=10.0, metrics="none"))
    return out


def plant_crafted_checkpoint(run, marker, step=3):
    import torch

    path = run / "checkpoints" / f"step_{step:08d}.pt"
    good = torch.load(run / "checkpoints" / "step_00000002.pt", weights_only=True)
    torch.save(dict(good, step=step, payload=Marker(marker)), path)
    return path


def test_evaluate_refuses_a_crafted_checkpoint_without_running_it(trained, tmp_path, capsys):
    import shutil

    from chyvae_ext.evaluate import main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    crafted = plant_crafted_checkpoint(run, tmp_path / "marker")
    assert main([str(run), "--checkpoint", str(crafted), "--metrics", "none", "--no-pictures"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {crafted} cannot be loaded as plain tensors and values" in err
    with pytest.warns(RuntimeWarning, match=rf"skipping checkpoint {crafted} cannot be loaded as plain tensors"):
        assert main([str(run), "--metrics", "none", "--no-pictures"]) == 0  # the newest that is plain data
    assert json.loads((run / "eval.json").read_text())["checkpoint"] != str(crafted)
    assert not (tmp_path / "marker").exists()


def test_resume_skips_a_crafted_checkpoint_without_running_it(trained, tmp_path):
    import shutil

    from chyvae_ext.train import main

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    crafted = plant_crafted_checkpoint(run, tmp_path / "marker")
    with pytest.warns(RuntimeWarning, match=rf"skipping checkpoint {crafted}: it cannot be loaded"):
        assert main(["--resume", str(run), "--steps", "3"]) == 0  # from step 2, the newest plain one
    assert not (tmp_path / "marker").exists()


def test_collect_and_explore_refuse_a_crafted_checkpoint_without_running_it(trained, tmp_path):
    import shutil

    from chyvae_ext.experiments.scores import score_run
    from chyvae_ext.explore import ExploredRun

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    crafted = plant_crafted_checkpoint(run, tmp_path / "marker")
    with pytest.raises(ValueError, match="cannot be loaded as plain tensors and values"):
        ExploredRun(run, checkpoint=crafted)
    with pytest.warns(RuntimeWarning, match=rf"skipping checkpoint {crafted} cannot be loaded as plain tensors"):
        assert ExploredRun(run).checkpoint != crafted
    with pytest.raises(ValueError, match="cannot be loaded as plain tensors and values"):
        score_run(run, compute=True)
    assert not (tmp_path / "marker").exists()
