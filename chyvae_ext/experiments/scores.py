"""Second opinions and floors for ``collect``: every run's last checkpoint scored under both FactorVAE
protocols and MIG, and the same architectures scored untrained.

A number under the paper's protocol cannot be read alone: on CorrelatedEllipses a freshly
initialised encoder already scores about 0.48 there (and 0 under disentanglement_lib's protocol,
which prunes dimensions that barely move). So ``collect`` adds, for every run with a checkpoint:

- ``factor_vae_chyvae``, ``factor_vae_kim_mnih`` and ``mig_scored`` at ``scored_step`` (the last
  checkpoint), with metric seed 0. A value training already logged at that step with the same
  protocol is reused, not recomputed. Results are cached in the run's ``scores.json`` by step.
- with ``metric_seeds`` S > 1, the same scores under metric seeds 1 .. S-1 as well (``<key>_s1``, ...:
  the metric's own draws of factors, images and votes), and their mean and sample standard deviation
  over the S seeds, ``<key>_mean`` and ``<key>_sd`` (the metric's own noise, apart from training's).
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
from ..metrics.common import as_float_images
from ..metrics.suite import images_scored
from ..runfiles import SCORES, Run, checkpoint_step_of, read_config, read_metrics
from .collect import mean_std

PROTOCOL_NAMES = ("chyvae", "kim_mnih")
SCORE_KEYS = tuple(f"factor_vae_{p}" for p in PROTOCOL_NAMES) + ("mig_scored",)


def seed_key(key: str, seed: int) -> str:
    """The cache's name of score ``key`` under metric seed ``seed`` (seed 0: the key itself)."""
    return key if seed == 0 else f"{key}_s{seed}"


def _is_score(key: str) -> bool:
    return any(key == k or (key.startswith(k + "_s") and key[len(k) + 2:].isdigit()) for k in SCORE_KEYS)


def _wanted(metric_seeds: tuple[int, ...]) -> list[str]:
    return [seed_key(k, s) for s in metric_seeds for k in SCORE_KEYS]


def with_seed_means(scores: dict, metric_seeds: tuple[int, ...]) -> dict:
    """``scores`` with ``<key>_mean`` and ``<key>_sd`` (sample standard deviation) over the metric seeds
    among ``metric_seeds`` that it holds, where it holds two or more."""
    out = dict(scores)
    for key in SCORE_KEYS:
        values = [scores[seed_key(key, s)] for s in metric_seeds if seed_key(key, s) in scores]
        if len(values) > 1:
            out[f"{key}_mean"], out[f"{key}_sd"] = mean_std(values)
    return out


def _dataset(config: TrainConfig) -> GroundTruthDataset | None:
    """The run's metric dataset (the generator, also for a fixed set), None without ground-truth factors."""
    ds = open_dataset(config, fixed=False)
    return ds if isinstance(ds, GroundTruthDataset) else None


def score_encoder(model: torch.nn.Module, dataset: GroundTruthDataset, *, precision: str, known: dict,
                  progress: Callable[[str], None] | None = None, metric_seeds: tuple[int, ...] = (0,)) -> dict:
    """The factor_vae score under both protocols and MIG under each metric seed (keys :func:`seed_key`);
    ``known`` holds values to reuse."""
    encode = make_encoder(model.eval(), precision=precision)
    out = {k: v for k, v in known.items() if _is_score(k)}
    for seed in metric_seeds:
        for protocol in PROTOCOL_NAMES:
            key = seed_key(f"factor_vae_{protocol}", seed)
            if key not in out:
                summary, _ = score(encode, dataset, ["factor_vae"], protocol=protocol, seed=seed, progress=progress)
                out[key] = summary["factor_vae"]
        key = seed_key("mig_scored", seed)
        if key not in out:
            out[key] = score(encode, dataset, ["mig"], seed=seed, progress=progress)[0]["mig"]
    return out


def images_encoded(key: str) -> int:
    """How many images the score ``key`` (a SCORE_KEYS name, any metric seed) renders and encodes."""
    base = next(k for k in SCORE_KEYS if key == k or key.startswith(k + "_s"))
    if base == "mig_scored":
        return images_scored("mig")
    return images_scored("factor_vae", base.removeprefix("factor_vae_"))


def logged_scores(run_dir: Path, step: int, protocol: str) -> dict:
    """The scores training logged in its evaluation of ``step`` that collect reuses: its factor_vae (under
    the run's ``protocol``) and its MIG, under collect's names."""
    known = {}
    for row in read_metrics(run_dir):
        if row.get("kind") == "eval" and row.get("step") == step:
            if "factor_vae" in row:
                known[f"factor_vae_{protocol}"] = row["factor_vae"]
            if "mig" in row:
                known["mig_scored"] = row["mig"]
    return known


def missing_scores(run_dir: Path, *, step: int | None = None, metric_seeds: tuple[int, ...] = (0,)) -> list[str]:
    """The scores :func:`score_run` would compute for the run (none cached, none training logged there);
    [] where it would compute nothing (no checkpoint of that step, everything cached)."""
    ckpt = Run(run_dir).checkpoint(step)
    if ckpt is None:
        return []
    step = checkpoint_step_of(ckpt)
    try:
        protocol = read_config(run_dir).get("metric_protocol", "chyvae")
    except ValueError:
        protocol = "chyvae"
    known = set(_read_json(run_dir / SCORES).get(str(step), {})) | set(logged_scores(run_dir, step, protocol))
    return [k for k in _wanted(metric_seeds) if k not in known]


def missing_untrained(configs: list[TrainConfig], cache_path: Path, metric_seeds: tuple[int, ...] = (0,)) -> list[str]:
    """The scores :func:`untrained_rows` would compute: each distinct initial encoder's missing keys."""
    cache, seen, out = _read_json(cache_path), set(), []
    for config in configs:
        dataset = _dataset(config)
        if dataset is None:
            continue
        key = _floor_key(config, initial_model(config, dataset.channels))
        if key not in seen:
            seen.add(key)
            out += [k for k in _wanted(metric_seeds) if k not in cache.get(key, {})]
    return out


def images_per_second(config: TrainConfig, n: int = 2000) -> float:
    """This machine's rate at rendering and encoding the run's images (the bulk of a score's time), timed
    on ``n`` images with the run's untrained model at its precision."""
    import time

    import numpy as np

    dataset = _dataset(config)
    encode = make_encoder(initial_model(config, dataset.channels).eval(), precision=config.resolved().precision)
    factors = dataset.sample_factors(n, np.random.default_rng(0))
    t0 = time.perf_counter()
    encode(as_float_images(dataset.pixels(factors)))
    return n / (time.perf_counter() - t0)


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
    metric_seeds: tuple[int, ...] = (0,),
) -> dict:
    """{scored_step, factor_vae_chyvae, factor_vae_kim_mnih, mig_scored} at the run's checkpoint of ``step``
    (default: its last; training keeps those of its evaluation steps), under each of ``metric_seeds``
    (:func:`seed_key`) with their means (:func:`with_seed_means`); {} without ground-truth factors,
    and without that checkpoint unless ``step`` is given and was scored before. Cached in
    ``run_dir/scores.json``; ``compute=False`` returns only what is cached there ({} otherwise)."""
    from ..evaluate import load_run

    ckpt = Run(run_dir).checkpoint(step)
    cache_path = run_dir / SCORES
    cache = _read_json(cache_path)
    if ckpt is None:  # nothing to score; what was scored at that step before is still shown
        if step is None or str(step) not in cache:
            return {}
        return {"scored_step": step} | with_seed_means(cache[str(step)], metric_seeds)
    step = checkpoint_step_of(ckpt)
    cached = cache.get(str(step), {})
    if not compute or all(k in cached for k in _wanted(metric_seeds)):
        return {"scored_step": step} | with_seed_means(cached, metric_seeds) if cached else {}
    model, config, _, _ = load_run(run_dir, checkpoint=ckpt)
    dataset = _dataset(config)
    if dataset is None:
        return {}
    known = dict(cached) | logged_scores(run_dir, step, config.metric_protocol)
    if progress is not None:
        progress(f"scoring {run_dir.name} at step {step}")
    got = score_encoder(model, dataset, precision=config.resolved().precision, known=known, progress=progress,
                        metric_seeds=metric_seeds)
    cache[str(step)] = got
    _write_json(cache_path, cache)
    return {"scored_step": step} | with_seed_means(got, metric_seeds)


def _floor_key(config: TrainConfig, model: torch.nn.Module) -> str:
    """The floor cache's key of an initial model: its dataset and its encoder's hash."""
    return f"{config.dataset}|{_encoder_hash(model)}"


def _encoder_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def untrained_rows(configs: list[TrainConfig], cache_path: Path, *, compute: bool = True,
                   progress: Callable[[str], None] | None = None, metric_seeds: tuple[int, ...] = (0,)) -> list[dict]:
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
        key = _floor_key(config, model)
        if key in rows:
            if config.model not in rows[key]["runs_like"].split():
                rows[key]["runs_like"] += f" {config.model}"
            continue
        if compute and not all(k in cache.get(key, {}) for k in _wanted(metric_seeds)):
            if progress is not None:
                progress(f"scoring the untrained {config.model} of seed {config.seed}")
            precision = config.resolved().precision
            cache[key] = score_encoder(model, dataset, precision=precision, known=cache.get(key, {}),
                                       progress=progress, metric_seeds=metric_seeds)
            _write_json(cache_path, cache)
        if key not in cache:
            continue
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
        } | with_seed_means(cache[key], metric_seeds)
    return list(rows.values())
