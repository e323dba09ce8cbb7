"""Second opinions and floors for ``collect``: every run's last checkpoint scored under both FactorVAE
protocols and MIG, and the same architectures scored untrained.

A number under the paper's protocol cannot be read alone: on CorrelatedEllipses a freshly
initialised encoder already scores about 0.48 there (and 0 under disentanglement_lib's protocol,
which prunes dimensions that barely move). So ``collect`` adds, for every run with a checkpoint:

- ``factor_vae_chyvae``, ``factor_vae_kim_mnih`` and ``mig_scored`` at ``scored_step`` (the last
  checkpoint), with metric seed 0. A value training already logged at that step with the same
  protocol is reused, not recomputed. Results are cached in the run's ``scores.json`` by step.
- "untrained" rows: the run's model at step 0 (its seed and ``init``, :func:`chyvae_ext.build.initial_model`),
  scored the same way. Runs whose initial encoders are equal (same architecture, seed and
  initialisation: a CHyVAE and a beta-VAE of one seed) share one row. Cached in the output
  directory's ``untrained_scores.json`` by a hash of the encoder's parameters.

Each score takes minutes on a CPU (the kim_mnih protocol encodes about a million images), so
``collect --no-score`` computes none: it shows only the scores already cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from ..build import initial_model, open_dataset
from ..config import TrainConfig
from ..data.base import GroundTruthDataset
from ..metrics import make_encoder, score
from ..runfiles import SCORES, Run, checkpoint_step_of, read_metrics

PROTOCOL_NAMES = ("chyvae", "kim_mnih")
SCORE_KEYS = tuple(f"factor_vae_{p}" for p in PROTOCOL_NAMES) + ("mig_scored",)


def _dataset(config: TrainConfig) -> GroundTruthDataset | None:
    """The run's metric dataset (the generator, also for a fixed set), None without ground-truth factors."""
    ds = open_dataset(config, fixed=False)
    return ds if isinstance(ds, GroundTruthDataset) else None


def score_encoder(model: torch.nn.Module, dataset: GroundTruthDataset, *, precision: str, known: dict,
                  progress: Callable[[str], None] | None = None) -> dict:
    """The factor_vae score under both protocols and MIG (metric seed 0); ``known`` holds values to reuse."""
    encode = make_encoder(model.eval(), precision=precision)
    out = {k: v for k, v in known.items() if k in SCORE_KEYS}
    for protocol in PROTOCOL_NAMES:
        key = f"factor_vae_{protocol}"
        if key not in out:
            summary, _ = score(encode, dataset, ["factor_vae"], protocol=protocol, seed=0, progress=progress)
            out[key] = summary["factor_vae"]
    if "mig_scored" not in out:
        out["mig_scored"] = score(encode, dataset, ["mig"], seed=0, progress=progress)[0]["mig"]
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    Run(path.parent).write_json(path.name, data)  # atomically, as a run's own files


def score_run(
    run_dir: Path,
    *,
    step: int | None = None,
    compute: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """{scored_step, factor_vae_chyvae, factor_vae_kim_mnih, mig_scored} at the run's checkpoint of ``step``
    (default: its last; training keeps those of its evaluation steps); {} without ground-truth factors,
    and without that checkpoint unless ``step`` is given and was scored before. Cached in
    ``run_dir/scores.json``; ``compute=False`` returns only what is cached there ({} otherwise)."""
    from ..evaluate import load_run

    ckpt = Run(run_dir).checkpoint(step)
    cache_path = run_dir / SCORES
    cache = _read_json(cache_path)
    if ckpt is None:  # nothing to score; what was scored at that step before is still shown
        return {"scored_step": step} | cache[str(step)] if step is not None and str(step) in cache else {}
    step = checkpoint_step_of(ckpt)
    if str(step) in cache:
        return {"scored_step": step} | cache[str(step)]
    if not compute:
        return {}
    model, config, _, _ = load_run(run_dir, checkpoint=ckpt)
    dataset = _dataset(config)
    if dataset is None:
        return {}
    known = {}
    for row in read_metrics(run_dir):
        if row.get("kind") == "eval" and row.get("step") == step:
            if "factor_vae" in row:
                known[f"factor_vae_{config.metric_protocol}"] = row["factor_vae"]
            if "mig" in row:
                known["mig_scored"] = row["mig"]
    if progress is not None:
        progress(f"scoring {run_dir.name} at step {step}")
    got = score_encoder(model, dataset, precision=config.resolved().precision, known=known, progress=progress)
    cache[str(step)] = got
    _write_json(cache_path, cache)
    return {"scored_step": step} | got


def _encoder_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def untrained_rows(configs: list[TrainConfig], cache_path: Path, *, compute: bool = True,
                   progress: Callable[[str], None] | None = None) -> list[dict]:
    """One "untrained" row per distinct initial encoder among ``configs`` (model at step 0), scored as
    :func:`score_run` scores trained runs; cached in ``cache_path`` by the encoder's hash (``compute=False``:
    only the cached ones)."""
    cache = _read_json(cache_path)
    rows: dict[str, dict] = {}
    for config in configs:
        dataset = _dataset(config)
        if dataset is None:
            continue
        model = initial_model(config, dataset.channels)
        key = f"{config.dataset}|{_encoder_hash(model)}"
        if key in rows:
            if config.model not in rows[key]["runs_like"].split():
                rows[key]["runs_like"] += f" {config.model}"
            continue
        if key not in cache:
            if not compute:
                continue
            if progress is not None:
                progress(f"scoring the untrained {config.model} of seed {config.seed}")
            precision = config.resolved().precision
            cache[key] = score_encoder(model, dataset, precision=precision, known={}, progress=progress)
            _write_json(cache_path, cache)
        rows[key] = {
            "run": f"untrained-{config.model}-seed{config.seed}",
            "model": "untrained",
            "hyper": "step",
            "value": 0,
            "seed": config.seed,
            "step": 0,
            "state": "untrained",
            "runs_like": config.model,
            "scored_step": 0,
            # in the columns trained runs fill from training's evaluations (the paper's protocol, MIG)
            "factor_vae": cache[key]["factor_vae_chyvae"],
            "mig": cache[key]["mig_scored"],
        } | cache[key]
    return list(rows.values())
