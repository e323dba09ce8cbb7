"""An ensemble's batches of a fixed set (issue 30, item 2, its data half): one store shared by every member,
one gather for all of them, indices drawn a chunk of steps at a time; each member's batches and generator
state are exactly its lone run's, across chunks, at a checkpoint in mid-chunk, and through a resume."""

import json
from pathlib import Path

import pytest
import torch

from chyvae_ext.build import open_dataset
from chyvae_ext.config import TrainConfig
from chyvae_ext.data import get_dataset
from chyvae_ext.data.base import StackedBatches
from chyvae_ext.train import Trainer, main, train_ensemble

FAST = {"batch_size": 4, "log_every": 2, "eval_every": 8, "ckpt_every": 3, "precision": "fp32", "z_dim": 3,
        "hidden": 16, "nu": 10.0, "metrics": "none", "dataset_size": 40}


def training_set():
    """The fixed set of 40 images training uses for --dataset-size 40."""
    return open_dataset(TrainConfig(dataset_size=40).resolved())


@pytest.fixture(scope="module")
def fixed_set():
    return training_set()


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_stacked_batches_are_each_members_lone_batches_across_chunks(fixed_set):
    stacked = StackedBatches(fixed_set, 4, generators([0, 1, 2]), chunk=3)
    lone = [fixed_set.batches(4, generator=g) for g in generators([0, 1, 2])]
    for _ in range(8):  # two chunks and part of a third
        got = next(stacked)
        assert got.shape == (3, 4, 1, 64, 64) and got.dtype == torch.float32
        assert torch.equal(got, torch.stack([next(b) for b in lone]))


def test_settle_leaves_each_generator_where_per_step_draws_would_and_the_batches_go_on(fixed_set):
    gens = generators([5, 6])
    stacked = StackedBatches(fixed_set, 4, gens, chunk=5)
    per_step = generators([5, 6])
    lone = [fixed_set.batches(4, generator=g) for g in per_step]
    for _ in range(2):  # in mid-chunk
        torch.testing.assert_close(next(stacked), torch.stack([next(b) for b in lone]), rtol=0, atol=0)
    assert not all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gens, per_step, strict=True))
    stacked.settle()
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gens, per_step, strict=True))
    for _ in range(6):
        assert torch.equal(next(stacked), torch.stack([next(b) for b in lone]))


def test_the_store_is_one_tensor_shared_by_every_member(fixed_set):
    stacked = StackedBatches(fixed_set, 4, generators([0, 1, 2, 3]), chunk=2)
    assert stacked.store.shape == (40, 1, 64, 64) and stacked.store.dtype == torch.uint8
    again = StackedBatches(fixed_set, 4, generators([0]), store=stacked.store)
    assert again.store is stacked.store


def test_stacked_batches_refuse_a_procedural_set_and_bad_sizes(fixed_set):
    with pytest.raises(ValueError, match=r"StackedBatches needs a materialised set .* got correlated_ellipses"):
        StackedBatches(get_dataset("correlated_ellipses"), 4, generators([0]))
    with pytest.raises(ValueError, match=r"chunk must be a positive integer, got 0"):
        StackedBatches(fixed_set, 4, generators([0]), chunk=0)


def member_configs(root, steps):
    return [TrainConfig(model="chyvae", seed=s, out=str(root / f"m{s}"), steps=steps, **FAST) for s in (0, 1)]


def final_state(run_dir):
    return torch.load(sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)


def test_an_ensemble_on_a_fixed_set_draws_its_members_lone_batches(tmp_path, monkeypatch):
    seen = []
    plain_next = StackedBatches.__next__

    def recording(self):
        batch = plain_next(self)
        seen.append(batch.clone())
        return batch

    monkeypatch.setattr(StackedBatches, "__next__", recording)
    trainer = Trainer(member_configs(tmp_path, 7), ensemble=True)
    trainer.run()
    assert len(seen) == 7  # the stacked path ran, with checkpoints at 3 and 6 inside chunks of 3
    dataset = training_set()
    from chyvae_ext.distributed import rank_seed

    for i, seed in enumerate((0, 1)):
        lone = dataset.batches(4, generator=torch.Generator().manual_seed(rank_seed(seed, 0)))
        for step, batch in enumerate(seen):
            assert torch.equal(batch[i], next(lone)), (i, step)


def test_an_interrupted_ensemble_on_a_fixed_set_resumes_to_the_uninterrupted_result(tmp_path):
    full = member_configs(tmp_path / "full", 8)
    train_ensemble(full)
    half = member_configs(tmp_path / "half", 4)  # stops at step 4, inside the chunk of steps 4-6
    train_ensemble(half)
    assert main(["--ensemble", *(c.out for c in half), "--resume", "--steps", "8"]) == 0
    for a, b in zip(full, half, strict=True):
        sa, sb = final_state(a.out), final_state(b.out)
        assert sa["step"] == sb["step"] == 8
        assert torch.equal(sa["data_gen"], sb["data_gen"])
        for k, v in sa["model"].items():
            assert torch.equal(v, sb["model"][k]), k
        rows = [[json.loads(x) for x in open(Path(c.out) / "metrics.jsonl")] for c in (a, b)]
        assert [r["loss"] for r in rows[0] if r["kind"] == "train"] == [r["loss"] for r in rows[1]
                                                                         if r["kind"] == "train"]
