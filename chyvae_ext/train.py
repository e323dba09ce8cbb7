"""``python -m chyvae_ext.train``: train a model (``--model``: chyvae, betavae, factorvae, vae, betatcvae,
dipvae1, dipvae2, annealedvae) and write a run directory.

With no options it trains CHyVAE on procedural CorrelatedEllipses for a few minutes on a laptop
CPU. Everything a run produces lands in ``--out`` (default ``runs/<model>-<dataset>-seed<seed>``):

    config.json        the resolved configuration
    metrics.jsonl      one JSON object per logging interval (kind "train": losses and their terms,
                       steps/s, the time it was logged) and per evaluation (kind "eval": held-out
                       negative ELBO and terms, and the --metrics, by default the FactorVAE score,
                       on sets with ground-truth factors)
    status.json        running / finished / interrupted / failed, with the step
    tb/                TensorBoard event files
    checkpoints/       step_XXXXXXXX.pt, written atomically, the last few kept
    reconstructions.png, samples.png, traversals.png, traversals.gif, curves.png

``--resume RUN_DIR`` continues from the last checkpoint (model, optimisers, random states and data
order): on the CPU an interrupted and resumed run ends with the same parameters, bit for bit, as
one never interrupted. SIGINT or SIGTERM saves a checkpoint and exits with status 130.

``torchrun --nproc-per-node N -m -- chyvae_ext.train ...`` trains one run across N processes with
DistributedDataParallel (``--batch-size`` the global batch; see chyvae_ext.distributed).

``--ensemble RUN_DIR ...`` trains several runs as one batched model (``train_ensemble``; the sweep's
``--ensemble`` starts these): each RUN_DIR holds the run's options (``sweep_options.json``) or, with
``--resume``, its checkpoints, and ends up as the run directory its lone run writes. One loop,
:class:`Trainer`, runs both.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
import types
from pathlib import Path

import torch

from . import build
from .config import ENSEMBLE_SHARED, TrainConfig, check_config, check_ensemble, parse_args
from .data.base import GroundTruthDataset, StackedBatches
from .distributed import Distributed, rank_seed
from .looptools import Interrupted, NoWriter, StopRequested, flush_denormals, progress_bar, say, show_progress
from .metrics import SharedEncodings, make_encoder, parse_metrics, score
from .metrics.suite import chance_note, describe, pruned_note
from .models.ensemble import LoneMembers, StackedMembers, stack_models
from .plots import save_curves, save_model_pictures
from .runfiles import ReadOnlyRun, Run, checkpoint_step_of, load_checkpoint, newest_common, read_metrics
from .step import adam_options, make_step

__all__ = ["ENSEMBLE_SHARED", "Trainer", "TrainConfig", "TrainedRun", "flush_denormals", "main", "train",
           "train_ensemble", "train_from_python"]


class Member:
    """One run inside a Trainer: its configuration, run directory, generators and where it stands."""

    def __init__(self, config: TrainConfig, device: torch.device, dist: Distributed):
        self.config = config
        self.run = Run(Path(config.out)) if dist.is_main else ReadOnlyRun(Path(config.out))
        self.data_gen = torch.Generator().manual_seed(rank_seed(config.seed, dist.rank))
        self.noise_gen = torch.Generator(device=device).manual_seed(rank_seed(config.seed + 1, dist.rank))
        self.last_good: Path | None = None
        self.status: dict = {"state": "running", "step": 0}
        self.writer = None
        self.batches = None

    @property
    def name(self) -> str:
        return self.run.root.name

    def generators(self) -> dict:
        return {"data_gen": self.data_gen.get_state(), "noise_gen": self.noise_gen.get_state().cpu()}

    def set_generators(self, state: dict) -> None:
        self.data_gen.set_state(state["data_gen"])
        self.noise_gen.set_state(state["noise_gen"].to(self.noise_gen.get_state().device))


class Trainer:
    """The training loop, shared by a lone run and an ensemble. Phases: set-up (``__init__``), then
    per step ``step``, and at their intervals ``log``, ``checkpoint``, ``evaluate`` and ``pictures``;
    ``run`` drives them and ``finish`` writes the end state.

    A lone run is one member with a plain model. An ensemble (``ensemble=True``) holds its members
    in one model built with members=M (chyvae_ext.models.ensemble); each member writes the run
    directory its lone run writes (its checkpoints load as a lone run's). A member whose loss turns
    non-finite is marked failed and leaves the ensemble; the others go on. Per-member model and
    optimiser state goes through ``self.slots`` (LoneMembers or StackedMembers), the same calls for both.
    """

    def __init__(self, configs: list[TrainConfig], *, resume: bool = False, ensemble: bool | None = None,
                 overwrite: bool = False):
        if not configs:
            raise ValueError("configs must hold at least one TrainConfig, got none")
        self.dist = Distributed.from_env(configs[0].device)
        self.configs = [dataclasses.replace(c.resolved(), world_size=self.dist.world_size) for c in configs]
        for c in self.configs:
            check_config(c)
        self.stacked = len(configs) > 1 if ensemble is None else bool(ensemble)
        if len(configs) > 1 and not self.stacked:
            raise ValueError("several configs train together only as an ensemble (ensemble=True)")
        c = self.c = self.configs[0]
        if self.stacked:
            check_ensemble(self.configs)
        self.dataset = build.open_dataset(c)
        self.device = device = torch.device(self.dist.device(c.device))
        self.members = [Member(cfg, device, self.dist) for cfg in self.configs]
        self._locked = list(self.members)  # one trainer a run directory, for this trainer's life
        try:
            for m in self.members:
                m.run.lock()
            self._set_up(resume, overwrite)
        except BaseException:
            self.unlock()
            raise

    def unlock(self) -> None:
        """Releases the run directories' locks (run() does at its end)."""
        for m in self._locked:
            m.run.unlock()

    def _set_up(self, resume: bool, overwrite: bool) -> None:
        c, device = self.c, self.device
        if not resume:  # a fresh start: nothing of an earlier run may be mixed in
            for m in self.members:
                m.run.claim(overwrite)
            self.dist.barrier()
        for m in self.members:
            m.run.prepare()
        self.dist.barrier()  # rank 0 made the directories
        self.bf16 = c.precision == "bf16"
        self._build()
        self.step_count = 0
        if resume:
            self._resume()
        for m in self.members:
            m.run.write_config(dataclasses.asdict(m.config))
            m.batches = self.dataset.batches(c.batch_size // c.world_size, device=device, generator=m.data_gen)
        self.fixed, self.held_out = build.fixed_batches(self.dataset, device)
        self.metric_names = parse_metrics(c.metrics) if isinstance(self.dataset, GroundTruthDataset) else []
        from torch.utils.tensorboard import SummaryWriter

        for m in self.members:
            if self.dist.is_main:
                m.writer = SummaryWriter(str(m.run.root / "tb"), purge_step=self.step_count or None)
            else:
                m.writer = NoWriter()
            m.last_good = m.run.checkpoint()
        self.noise_gens = [m.noise_gen for m in self.members]  # shortened in place when a member leaves
        self.one_step = self._make_step()
        self.term_names: list[str] | None = None
        self.sums = None
        self.bad = None
        self.t_last, self.steps_since = time.perf_counter(), 0
        self.bar = None

    # ---- set-up ------------------------------------------------------------------------------------------------
    def _make_step(self):
        noise = self.noise_gens if self.stacked else self.members[0].noise_gen
        return make_step(self.model, self.opt, self.opt_d, self._batches(), noise, bf16=self.bf16,
                         compile="inductor" if self.c.compile else None, dist=self.dist)

    def _build(self) -> None:
        c, device = self.c, self.device
        lone = [build.initial_model(cfg, self.dataset.channels) for cfg in self.configs]  # the lone runs' step 0
        if self.stacked:
            self.model = stack_models(lone).to(device)
        else:
            self.model = lone[0].to(device)
            if self.bf16 and not c.compile:
                self.model = self.model.to(memory_format=torch.channels_last)
        vae_params = [p for n, p in self.model.named_parameters() if not n.startswith("discriminator.")]
        self.opt = torch.optim.Adam(vae_params, lr=c.lr, betas=(0.9, 0.999), **adam_options(c.compile, device))
        self.opt_d = (
            torch.optim.Adam(self.model.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
            if c.model == "factorvae"
            else None
        )
        self.slots = (StackedMembers if self.stacked else LoneMembers)(self.model, [self.opt, self.opt_d])

    def _resume(self) -> None:
        common, error, loaded = None, None, [None] * len(self.members)
        if self.dist.is_main:  # rank 0 decides (and sets damaged checkpoints aside); every rank loads that step
            try:
                common, loaded = newest_common([m.run for m in self.members], self.device)
            except ValueError as exc:
                error = str(exc)
        common, error = self.dist.broadcast((common, error))
        if error is not None:
            raise ValueError(error)
        states = [self._checked_state(m, state, common) for m, state in zip(self.members, loaded, strict=True)]
        self.slots.load([s["model"] for s in states], [[s["opt"] for s in states], [s.get("opt_d") for s in states]])
        for m, state in zip(self.members, states, strict=True):
            m.set_generators(state["ranks"][self.dist.rank] if self.dist.active else state)
        torch.set_rng_state(states[0]["torch_rng"])
        self.step_count = states[0]["step"]
        if self.c.steps < self.step_count:
            raise ValueError(f"--steps {self.c.steps} is fewer than the {self.step_count} steps the run has done; "
                             f"give --steps {self.step_count} or more (its config.json is left as it is)")
        for m in self.members:
            m.run.truncate_metrics(self.step_count)

    def _checked_state(self, m: Member, state: dict | None, step: int) -> dict:
        """Member m's checkpoint of ``step`` (loaded here where rank 0 has not), checked against this run."""
        if state is None:  # rank 0 loaded it while choosing the step; the other ranks load it here
            state = load_checkpoint(m.run.checkpoint(step), self.device)
        if state is None:
            raise ValueError(f"--resume {m.run.root}: its checkpoint of step {step} in {m.run.ckpt_dir} "
                             "cannot be loaded (the warning says why)")
        trained_on = state.get("channels", self.dataset.channels)
        if trained_on != self.dataset.channels:
            raise ValueError(
                f"--dataset {self.c.dataset} has {self.dataset.channels}-channel images, but the run in "
                f"{m.run.root} was trained on {trained_on}-channel images"
            )
        written_by = state.get("world_size", 1)
        if written_by != self.dist.world_size:
            raise ValueError(
                f"--resume {m.run.root}: its checkpoint was written by {written_by} process(es) and this run has "
                f"{self.dist.world_size}; resume with the same number (torchrun --nproc-per-node {written_by}"
                + (")" if written_by > 1 else ", or without torchrun)")
            )
        return state

    def _batches(self):
        """Each member's batch from its own data order: (N, ...) alone, stacked (M, N, ...) in an ensemble
        (a materialised set: one shared store and one gather for every member, StackedBatches; the
        batches are those the members' lone runs draw)."""
        if not self.stacked:
            yield from self.members[0].batches
        if self.dataset.uint8_array() is None or self.dist.active:
            while True:
                yield torch.stack([next(m.batches) for m in self.members])
        store = None
        while True:
            gens = [m.data_gen for m in self.members]
            self.stacked_batches = StackedBatches(self.dataset, self.c.batch_size, gens, device=self.device,
                                                  chunk=self.c.ckpt_every, store=store)
            store = self.stacked_batches.store
            while [m.data_gen for m in self.members] == gens:  # until a member leaves
                yield next(self.stacked_batches)
            self.stacked_batches.settle()

    stacked_batches = None  # the ensemble's StackedBatches, settled before the generators are saved

    # ---- the phases ---------------------------------------------------------------------------------------------
    def step(self) -> None:
        """One optimisation step for every member; the terms add up on the device (no host wait)."""
        out = self.one_step()
        self.step_count += 1
        self.steps_since += 1
        terms = {k: v.detach().float() for k, v in out.items() if k != "z"}
        if self.term_names is None:
            self.term_names = list(terms)
            self.sums = torch.zeros(len(self.members), len(self.term_names), device=self.device)
            self.bad = torch.zeros(len(self.members), dtype=torch.bool, device=self.device)
        values = torch.stack([terms[k] for k in self.term_names], -1).reshape(len(self.members), -1)
        self.sums += values
        self.bad |= ~torch.isfinite(values).all(-1)

    def log(self) -> None:
        """A train row per member (one host synchronisation per interval); members whose loss turned
        non-finite in the interval are marked failed and leave."""
        step, since = self.step_count, self.steps_since
        if self.dist.active:  # the global batch's terms
            self.dist.mean_(self.sums)
        self._fail_diverged()
        if not self.members:
            return
        now = time.perf_counter()
        rate = since / (now - self.t_last)
        nus = None
        if self.c.model == "chyvae" and self.c.learn_nu:
            nus = torch.as_tensor(self.model.nu).detach().float().reshape(-1).tolist()
        all_sums = self.sums.tolist()  # one transfer for the rows, the bar and the line
        for i, (m, sums) in enumerate(zip(self.members, all_sums, strict=True)):
            row = {
                "kind": "train",
                "step": step,
                **{k: v / since for k, v in zip(self.term_names, sums, strict=True)},
                "steps_per_s": rate,
                "time": round(time.time(), 3),  # when it was logged (which attempt of a retried run)
            }
            if nus is not None:
                row["nu"] = nus[i]
            m.run.append_metrics(row)
            for k, v in row.items():
                if k not in ("kind", "step"):
                    m.writer.add_scalar(f"train/{k}", v, step)
        self._print_progress(step, since, rate, all_sums)
        self.sums.zero_()
        self.t_last, self.steps_since = now, 0

    def _print_progress(self, step: int, since: int, rate: float, all_sums: list[list[float]]) -> None:
        """The progress bar's update, or (no terminal) one line on rank 0."""
        losses = [s[self.term_names.index("loss")] / since for s in all_sums]
        recon = None if self.stacked else all_sums[0][self.term_names.index("recon")] / since
        if self.bar is not None or self.dist.is_main:
            show_progress(self.bar, step, self.c.steps, since, rate, losses, recon)

    def _fail(self, failed: list[int], *, parameters: bool = False) -> None:
        """Members ``failed`` leave, marked failed: their loss (or, ``parameters``, their weights) turned
        non-finite. Their newest checkpoint is finite (none is written otherwise): the status names it."""
        step, since = self.step_count, self.steps_since
        values = self.sums  # the interval's sums: which terms are non-finite now
        for i in failed:
            m = self.members[i]
            if parameters:
                what = f"non-finite parameters at step {step}"
            else:
                bad = [k for k, v in zip(self.term_names, values[i].tolist(), strict=True) if not math.isfinite(v)]
                what = (f"non-finite loss within steps {step - since + 1}..{step} "
                        f"(terms now non-finite: {', '.join(bad) or 'earlier in the interval'})")
            good = (f"{m.last_good} (step {checkpoint_step_of(m.last_good)})" if m.last_good is not None
                    else "none (no finite checkpoint was written)")
            m.status = {
                "state": "failed",
                "step": step,
                "error": f"{what}; last finite checkpoint: {good}",
            }
            m.run.write_status(m.status)
            m.writer.close()
            if self.dist.is_main:
                who = f"{m.name}: " if self.stacked else ""
                print(f"error: {who}{m.status['error']}", file=sys.stderr)
        keep = [i for i in range(len(self.members)) if i not in failed]
        if keep:  # the others go on without them
            self.slots.select(keep)
            self.sums, self.bad = self.sums[keep], self.bad[keep]
        self.members = [self.members[i] for i in keep]
        self.noise_gens[:] = [m.noise_gen for m in self.members]
        if keep and self.dist.active:  # DistributedDataParallel holds the parameters it was given
            self.one_step = self._make_step()

    def _fail_diverged(self) -> None:
        """Members whose loss turned non-finite since the last row fail and leave (under torchrun in
        every process at once)."""
        if self.dist.active:
            self.bad = self.dist.max_(self.bad.to(torch.uint8)).bool()
        bad = self.bad.tolist()
        if any(bad):
            self._fail([i for i, b in enumerate(bad) if b])

    def _leave_if_non_finite(self) -> None:
        """Before a checkpoint: members whose loss turned non-finite since the last row (the check a row
        makes, done early), then those whose parameters are non-finite, fail and leave."""
        if self.bad is not None:
            self._fail_diverged()
        if self.members:
            finite = self.slots.finite()
            if not all(finite):
                self._fail([i for i, ok in enumerate(finite) if not ok], parameters=True)

    def member_state(self, i: int, ranks: list | None = None) -> dict:
        """Member i's checkpoint, exactly a lone run's. Under torchrun also every process's generators
        (``ranks``, in rank order: each process resumes its own)."""
        m = self.members[i]
        model, (opt, opt_d) = self.slots.state(i)
        return {
            "model": model,
            "opt": opt,
            "opt_d": opt_d,
            **m.generators(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step_count,
            "config": dataclasses.asdict(m.config),
            "channels": self.dataset.channels,
            "world_size": self.dist.world_size,
            **({"ranks": [r[i] for r in ranks]} if ranks is not None else {}),
        }

    def checkpoint(self) -> None:
        """Every member's checkpoint of this step (rank 0 writes; under torchrun every process takes part).
        A member whose loss since its last row, or whose parameters, are not finite leaves first
        (failed): no non-finite checkpoint is ever written."""
        self._leave_if_non_finite()
        if not self.members:
            return
        if self.stacked_batches is not None:
            self.stacked_batches.settle()  # the data generators as the lone runs' per-step draws leave them
        ranks = self.dist.gather([m.generators() for m in self.members]) if self.dist.active else None
        for i, m in enumerate(self.members):
            state = self.member_state(i, ranks) if self.dist.is_main else {}
            m.last_good = m.run.save_checkpoint(
                state, self.step_count, m.config.keep_checkpoints, keep_every=m.config.eval_every
            )
            m.status = {"state": "running", "step": self.step_count, "checkpoint": str(m.last_good)}
            m.run.write_status(m.status)  # where the run stands, for a reader while it trains

    def member_model(self, i: int) -> torch.nn.Module:
        """Member i as a lone model on the device (an ensemble's: a copy)."""
        config = self.members[i].config
        return self.slots.lone_model(i, lambda: build.build_model(config, self.dataset.channels).to(self.device))

    def evaluate(self) -> None:
        """Held-out negative ELBO and its terms on a fixed batch of 256 images, and the disentanglement
        metrics (same seed at every step, so that only the model changes), logged as kind "eval". An
        ensemble encodes every image once for all its members (SharedEncodings)."""
        step = self.step_count
        rows = [
            {"kind": "eval", "step": step, **terms}
            for terms in build.member_held_out_terms(self.model, self.held_out, bf16=self.bf16)
        ]
        if self.metric_names:
            together = f" for {len(self.members)} members from one encoding" if self.stacked else ""
            say(self.bar, f"step {step}: evaluating {describe(self.metric_names, self.c.metric_protocol)}{together}...")
            if self.stacked:  # one encoding and one rendering of the images for every member
                shared = SharedEncodings(self.model, precision=self.c.precision)
                encoders = [shared.encoder(i) for i in range(len(self.members))]
                metric_set = shared.dataset(self.dataset)
            else:
                encoders = [make_encoder(self.model, precision=self.c.precision)]
                metric_set = self.dataset
            for m, row, encode in zip(self.members, rows, encoders, strict=True):
                t0 = time.perf_counter()
                summary, details = score(encode, metric_set, self.metric_names, protocol=self.c.metric_protocol,
                                         seed=0)
                row.update(summary, metric_seconds=time.perf_counter() - t0)
                text = "  ".join(f"{k} {v:.3f}" for k, v in summary.items())
                who = f"{m.name}: " if self.stacked else ""
                say(self.bar, f"step {step}: {who}{text} ({self.c.metric_protocol} protocol"
                              f"{chance_note(summary, self.dataset)}, {row['metric_seconds']:.0f} s)"
                              f"{pruned_note(details)}")
        for m, row in zip(self.members, rows, strict=True):
            m.run.append_metrics(row)
            for k, v in row.items():
                if k not in ("kind", "step"):
                    m.writer.add_scalar(f"eval/{k}", v, step)

    def pictures(self) -> None:
        for i, m in enumerate(self.members):
            save_model_pictures(self.member_model(i), self.fixed, self.held_out, m.run.root, bf16=self.bf16)
            save_curves(m.run.root / "metrics.jsonl", m.run.root / "curves.png")

    # ---- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Trains to the configured steps (or a signal, or every member failing); returns each
        member's final status, in the order of the configs. The run directories' locks end with it."""
        try:
            return self._run()
        except OSError as exc:  # a full disk or another I/O error: one line, the status says why
            return self._write_failed(exc)
        finally:
            self.unlock()

    def _write_failed(self, exc: OSError) -> list[dict]:
        for m in self.members:
            m.status = {"state": "failed", "step": self.step_count,
                        "error": f"{exc}; free the space (or fix the device) and continue with --resume {m.run.root}"}
            try:
                m.run.write_status(m.status)
            except OSError:
                pass  # the disk is full: the message below still says it
            if self.dist.is_main:
                print(f"error: {m.status['error']}", file=sys.stderr, flush=True)
        return [m.status for m in self._locked if hasattr(m, "status")]

    def _run(self) -> list[dict]:
        c = self.c
        order = list(self.members)
        for m in self.members:
            m.status = {"state": "running", "step": self.step_count}
            m.run.write_status(m.status)
        self.bar = progress_bar(c.steps, self.step_count) if self.dist.is_main else None
        if self.dist.is_main:
            say(self.bar, self.opening_line())
        self.model.train()
        self.t_last, self.steps_since = time.perf_counter(), 0
        self.started_at = self.step_count
        with StopRequested() as stop, flush_denormals(self.device):
            if self._evaluation_missing():  # resumed at an evaluation step whose row was lost (a kill)
                self._evaluate_here(stop)
            while self.step_count < c.steps and not self._stopping(stop) and self.members:
                self.step()
                step = self.step_count
                if step % c.log_every == 0 or step == c.steps:
                    self.log()
                    if not self.members:
                        break
                if step % c.ckpt_every == 0 or step % c.eval_every == 0 or step == c.steps:
                    self.checkpoint()  # at every evaluation step too (kept: scored again there by collect)
                    if not self.members:  # the last ones turned non-finite
                        break
                if step % c.eval_every == 0 or step == c.steps:
                    self._evaluate_here(stop)
            self.finish(stop.signal if stop.signal is not None or not self._stopped_elsewhere else signal.SIGTERM)
        self.dist.close()
        if self.bar is not None:
            self.bar.close()
        return [m.status for m in order]

    def opening_line(self) -> str:
        """What this run is: the model, data, run directory, device, precision and the steps to train."""
        c = self.c
        what = f"an ensemble of {len(self.members)} {c.model} runs" if self.stacked else c.model
        where = f"{self.members[0].run.root}" + (f" (+{len(self.members) - 1} more)" if self.stacked else "")
        start = f"from step {self.step_count} " if self.step_count else ""
        procs = f" x {self.dist.world_size} processes" if self.dist.active else ""
        return (f"training {what} on {c.dataset} into {where}: {self.device}{procs}, {c.precision}, "
                f"{start}to step {c.steps}")

    def _evaluate_here(self, stop: StopRequested) -> None:
        """The evaluation and pictures of this step (rank 0; the others wait). A signal abandons it at
        once: the step's checkpoint is written already, and a resume evaluates the step again."""
        if self.dist.is_main:
            try:
                with stop.interrupting():
                    self.evaluate()
                    self.pictures()
            except Interrupted as why:
                print(f"stopped by {why} during the evaluation of step {self.step_count}: abandoned; its "
                      "checkpoint is kept and a resume evaluates it", file=sys.stderr, flush=True)
        self.dist.barrier()  # the other processes wait for rank 0's evaluation

    def _evaluation_missing(self) -> bool:
        """Whether this step is an evaluation step, checkpointed, without its eval row (a resumed run)."""
        step, c = self.step_count, self.c
        evaluation_step = step > 0 and (step % c.eval_every == 0 or step == c.steps)
        return evaluation_step and not all(m.run.has_evaluation(step) for m in self.members)

    def _stopping(self, stop: StopRequested) -> bool:
        """Whether a signal came (to any process under torchrun: every process stops after the same step)."""
        if not self.dist.active:
            return stop.signal is not None
        self._stopped_elsewhere = self.dist.any(stop.signal is not None)
        return self._stopped_elsewhere

    _stopped_elsewhere = False

    def finish(self, signum: int | None) -> None:
        """Writes each remaining member's end state: interrupted (with a checkpoint) or finished."""
        if signum is not None and self.members:
            self.checkpoint()
        for m in self.members:
            if signum is not None:
                m.status = {
                    "state": "interrupted",
                    "step": self.step_count,
                    "signal": signal.Signals(signum).name,
                    "checkpoint": str(m.last_good),
                }
                if self.dist.is_main:
                    n = self.dist.world_size
                    launcher = f"torchrun --nproc-per-node {n} -m" if self.dist.active else "python -m"
                    print(
                        f"stopped by {m.status['signal']} at step {self.step_count}; checkpoint {m.last_good}; "
                        f"continue with: {launcher} chyvae_ext.train --resume {m.run.root}",
                        file=sys.stderr,
                    )
            else:
                m.status = {"state": "finished", "step": self.step_count, "checkpoint": str(m.last_good)}
            m.run.write_status(m.status)
            m.writer.close()
        if signum is None and self.step_count == self.started_at and self.dist.is_main:
            self.pictures()  # a step run here drew them at its end


def train(config: TrainConfig, *, resume: Path | None = None, overwrite: bool = False) -> dict:
    """Train as configured; returns the final status dict. Raises ValueError for bad options, and for a
    fresh start into a directory that holds a run already, unless ``overwrite`` (its files are removed)."""
    if resume is not None:
        config = dataclasses.replace(config, out=str(resume))
    return Trainer([config], resume=resume is not None, overwrite=overwrite).run()[0]


def train_ensemble(configs: list[TrainConfig], *, resume: bool = False, overwrite: bool = False) -> list[dict]:
    """Train the runs ``configs`` as one ensemble (see Trainer); returns each run's final status.

    They must agree on every option of ENSEMBLE_SHARED; each keeps its seed, hyperparameters and
    run directory. ``resume``: every member continues from its last checkpoint (all at one step).
    ``overwrite``: as for :func:`train`, for every member's directory.
    """
    return Trainer(configs, resume=resume, ensemble=True, overwrite=overwrite).run()


@dataclasses.dataclass
class TrainedRun:
    """What :func:`train` returns: the run directory, its final status.json and its last evaluation
    (held-out terms and scores; {} where the run had none)."""

    run_dir: Path
    status: dict
    metrics: dict


def train_from_python(config=None, /, *, overwrite: bool = False, **options) -> TrainedRun:
    """Trains a run, as ``python -m chyvae_ext.train`` does: ``config`` a TrainConfig, or the options as
    keywords (``chyvae_ext.train(model="betavae", beta=4, steps=2000, out="runs/b4")``; see
    ``python -m chyvae_ext.train --help`` for each; ``overwrite``: replace a run already in ``out``, as
    ``--overwrite``). Returns a :class:`TrainedRun`; raises ValueError for a bad option, naming it."""
    if config is None:
        try:
            config = TrainConfig(**options)
        except TypeError as exc:
            known = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
            raise ValueError(f"{exc.args[0].split('() ')[-1]}; the options are: {known}") from None
    elif options:
        raise ValueError(f"give a TrainConfig or options, not both (got a config and {', '.join(options)})")
    elif not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a chyvae_ext TrainConfig, got {type(config).__name__}")
    status = train(config, overwrite=overwrite)
    run_dir = Path(config.resolved().out)
    evals = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"]
    metrics = {k: v for k, v in evals[-1].items() if k != "kind"} if evals else {}
    return TrainedRun(run_dir, status, metrics)


def main(argv: list[str] | None = None) -> int:
    try:
        configs, resume, ensemble, overwrite = parse_args(argv, description=__doc__)
        if ensemble:
            statuses = train_ensemble(configs, resume=resume, overwrite=overwrite)
        else:
            statuses = [train(configs[0], resume=Path(configs[0].out) if resume else None, overwrite=overwrite)]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for config, status in zip(configs, statuses, strict=True):
        if status["state"] == "finished" and int(os.environ.get("RANK", "0")) == 0:
            print(f"finished {status['step']} steps; run directory: {config.resolved().out}")
    states = {s["state"] for s in statuses}
    if states == {"finished"}:
        return 0
    return 130 if "interrupted" in states else 1


class _CallableModule(types.ModuleType):
    """This module, callable: ``chyvae_ext.train(...)`` is :func:`train_from_python` (importing
    ``chyvae_ext.train`` sets the package's attribute to this module, so the module itself answers)."""

    def __call__(self, config=None, /, **options) -> TrainedRun:
        return train_from_python(config, **options)  # overwrite among the options


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    raise SystemExit(main())
