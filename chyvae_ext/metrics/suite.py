"""Scoring a trained model: its encoder as a batched function, and the metrics by name.

Used by ``python -m chyvae_ext.evaluate`` and by training at every ``--eval-every``, so a score in
``metrics.jsonl`` and one in ``eval.json`` come from the same code.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch

from ..data.base import GroundTruthDataset
from .beta_vae import beta_vae_score
from .common import LazyPixels, as_float_images
from .dci import dci
from .factor_vae import factor_vae_score
from .information import mig, sap
from .modularity import modularity_explicitness
from .unsupervised import unsupervised_scores

METRICS = ("factor_vae", "mig", "sap", "dci", "beta_vae", "modularity_explicitness", "unsupervised")


def parse_metrics(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """"factor_vae,mig" / ["mig"] / "all" / "none" to a list of known metric names."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["none"]:
        return []
    if names == ["all"]:
        return list(METRICS)
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"metrics must be a comma-separated list of {', '.join(METRICS)} (or 'all' or 'none'), got {spec!r}"
        )
    return list(dict.fromkeys(names))


def make_encoder(model: torch.nn.Module, *, precision: str = "fp32", chunk: int | None = None) -> Callable:
    """A function from float images (n, C, 64, 64) on any device to posterior means, float32 (n, d) on the CPU
    ((M, n, d) for an ensemble of M members: every member's, see SharedEncodings).

    ``precision`` "bf16" runs a bf16 copy of the model in channels-last layout (about 2-3x faster on
    CPUs with bf16 matrix units); "fp32" runs the model as it is. The model itself is not changed.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    device = next(model.parameters()).device
    chunk = chunk or (200 if device.type == "cpu" else 4096)
    net = copy.deepcopy(model).eval()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    net = net.to(dtype)
    if precision == "bf16":
        net = net.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def encode(x: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(x), chunk):
            xb = x[start : start + chunk].to(device, dtype, non_blocking=True)
            if precision == "bf16":
                xb = xb.contiguous(memory_format=torch.channels_last)
            out.append(net.encode(xb).float().cpu())
        if not out:
            members = getattr(model, "members", None)
            return torch.zeros(0, model.latent_dim) if members is None else torch.zeros(members, 0, model.latent_dim)
        return torch.cat(out, dim=-2)

    return encode


class SharedEncodings:
    """An ensemble's member encoders that encode each image once for all members.

    The metrics call ``encode(images)`` in an order fixed by their seed and the dataset alone, so
    member m's k-th call asks for the images member 0's k-th call asked for. The first member to
    make call k encodes its images for every member (one pass of the ensemble) and keeps the other
    members' codes until they ask; a member whose k-th images differ (compared through a fixed random
    projection of every image) is encoded afresh, so a score never depends on this sharing: each
    member gets the factors, votes and codes of its lone evaluation with the same seed.
    ``passes`` counts the ensemble's encoder calls.
    """

    def __init__(self, model: torch.nn.Module, *, precision: str = "fp32", chunk: int | None = None):
        members = getattr(model, "members", None)
        if members is None:
            name = type(model).__name__
            raise ValueError(f"SharedEncodings needs an ensemble (a model built with members=M), got a lone {name}")
        self.members = members
        self.passes = 0
        self.rendered = 0  # images rendered for the lazy view (:meth:`dataset`)
        self._encode_all = make_encoder(model, precision=precision, chunk=chunk)
        self._calls: list[tuple[tuple, torch.Tensor, list]] = []  # (shape, projection, codes per member)
        self._next = [0] * members
        self._proj: torch.Tensor | None = None

    @staticmethod
    def _factor_print(x: LazyPixels) -> tuple[tuple, torch.Tensor]:
        """Unrendered images are named by their factors (the images are a function of them)."""
        return ("factors", *x.factors.shape), torch.from_numpy(np.ascontiguousarray(x.factors, dtype=np.int64))

    def _fingerprint(self, x: torch.Tensor) -> tuple[tuple, torch.Tensor]:
        flat = x.reshape(len(x), -1).float().cpu()
        if self._proj is None or len(self._proj) != flat.shape[1]:
            self._proj = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0))
        return tuple(x.shape), flat @ self._proj

    def dataset(self, dataset: GroundTruthDataset) -> GroundTruthDataset:
        """``dataset`` as the members' evaluations should see it: the same factors and draws, but pixels that
        stay unrendered (:class:`~chyvae_ext.metrics.common.LazyPixels`) until an encoder needs them, so the
        images of one evaluation are rendered once for all the members, not once per member."""
        return _LazyPixelsView(dataset)

    def encoder(self, m: int) -> Callable:
        """Member m's encode: images (n, C, 64, 64) to its posterior means, float32 (n, d) on the CPU."""
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < self.members:
            raise ValueError(f"member must be an integer in [0, {self.members}), got {m!r}")

        def encode(x: torch.Tensor) -> torch.Tensor:
            k = self._next[m]
            self._next[m] += 1
            lazy = isinstance(x, LazyPixels)
            shape, proj = self._factor_print(x) if lazy else self._fingerprint(x)
            if k < len(self._calls):
                shape_k, proj_k, codes = self._calls[k]
                if shape_k == shape and torch.equal(proj_k, proj) and codes[m] is not None:
                    mine, codes[m] = codes[m], None
                    return mine
            self.passes += 1
            if lazy:
                self.rendered += len(x)
                x = as_float_images(x.render())
            codes = list(self._encode_all(x).unbind(0))
            mine = codes[m]
            if k == len(self._calls):
                codes[m] = None
                self._calls.append((shape, proj, codes))
            return mine

        return encode


class _LazyPixelsView(GroundTruthDataset):
    """A ground-truth dataset whose ``pixels`` are :class:`LazyPixels` (see SharedEncodings.dataset); its
    factors, their draws and everything else are the dataset's own."""

    def __init__(self, inner: GroundTruthDataset):
        self.inner = inner
        self.name, self.channels, self.num_images = inner.name, inner.channels, inner.num_images
        self.factor_names, self.factor_sizes = inner.factor_names, inner.factor_sizes

    def random_images(self, n, rng):
        return self.inner.random_images(n, rng)

    def sample_factors(self, n, rng):
        return self.inner.sample_factors(n, rng)

    def sample_fixed_factor_classes(self, k, n, rng):
        return self.inner.sample_fixed_factor_classes(k, n, rng)

    def images(self, factors):
        return self.inner.images(factors)

    def pixels(self, factors) -> LazyPixels:
        return LazyPixels(self.inner, np.asarray(factors))


def score(
    encode: Callable,
    dataset: GroundTruthDataset,
    metrics: list[str],
    *,
    protocol: str = "chyvae",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict, dict]:
    """Run the named metrics. Returns (summary: name -> float, details: each metric's output, JSON-ready).

    ``progress``, when given, receives a line before and after each metric (they take from seconds
    to minutes on a CPU).
    """
    summary: dict[str, float] = {}
    details: dict[str, dict] = {}
    for name in metrics:
        t0 = time.perf_counter()
        label = f"{name} ({protocol} protocol)" if name == "factor_vae" else name
        if progress is not None:
            progress(f"{describe([name], protocol)}: computing ...")
        before = set(summary)
        if name == "factor_vae":
            out = factor_vae_score(encode, dataset, protocol=protocol, seed=seed)
            summary["factor_vae"] = out["eval_accuracy"]
            summary["factor_vae_train"] = out["train_accuracy"]
        elif name == "mig":
            out = mig(encode, dataset, seed=seed)
            summary["mig"] = out["mig"]
        elif name == "sap":
            out = sap(encode, dataset, seed=seed)
            summary["sap"] = out["sap"]
        elif name == "dci":
            out = dci(encode, dataset, seed=seed)
            summary.update({f"dci_{k}": out[k] for k in ("disentanglement", "completeness", "informativeness_test")})
        elif name == "beta_vae":
            out = beta_vae_score(encode, dataset, seed=seed)
            summary["beta_vae"] = out["eval_accuracy"]
            summary["beta_vae_train"] = out["train_accuracy"]
        elif name == "modularity_explicitness":
            out = modularity_explicitness(encode, dataset, seed=seed)
            summary.update({k: out[k] for k in ("modularity", "explicitness_test", "explicitness_train")})
        elif name == "unsupervised":
            out = unsupervised_scores(encode, dataset, seed=seed)
            summary["gaussian_tc"] = out["gaussian_total_correlation"]
            summary["wasserstein_correlation"] = out["gaussian_wasserstein_correlation_norm"]
            summary["mutual_info_score"] = out["mutual_info_score"]
        else:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
        details[name] = {k: _jsonable(v) for k, v in out.items()} | {"seconds": time.perf_counter() - t0}
        if progress is not None:
            got = "  ".join(f"{k} {v:.4f}" for k, v in summary.items() if k not in before)
            progress(f"{label}: {got} ({details[name]['seconds']:.1f} s){pruned_note(details)}")
    return summary, details


def images_scored(name: str, protocol: str = "chyvae") -> int | None:
    """How many images metric ``name`` renders and encodes at its default constants (None where that is
    not a fixed count)."""
    from .factor_vae import PROTOCOLS

    if name == "factor_vae":
        p = PROTOCOLS[protocol]
        return p.std_images + (p.train_votes + p.eval_votes) * p.votes_per_sample
    return {"mig": 10_000, "sap": 15_000, "dci": 15_000, "beta_vae": 1_920_000, "modularity_explicitness": 15_000,
            "unsupervised": 10_000}.get(name)


def describe(names: list[str], protocol: str) -> str:
    """"factor_vae (chyvae protocol, 325,000 images), mig (10,000 images)": what an evaluation computes."""
    parts = []
    for name in names:
        n = images_scored(name, protocol)
        what = [f"{protocol} protocol"] if name == "factor_vae" else []
        what += [f"{n:,} images"] if n else []
        parts.append(f"{name} ({', '.join(what)})" if what else name)
    return ", ".join(parts)


def chance_note(summary: dict, dataset: GroundTruthDataset) -> str:
    """"; chance 0.25" for a FactorVAE score: a classifier from dimension to factor guessing at random is
    right 1 / K of the time (K ground-truth factors); "" without one."""
    return f"; chance {1 / dataset.num_factors:.2f}" if "factor_vae" in summary else ""


def pruned_note(details: dict) -> str:
    """", every latent dimension pruned ..." where the FactorVAE metric found no dimension that moves (its
    score is then 0 by definition, not a measured failure); "" otherwise."""
    fv = details.get("factor_vae")
    if fv is None or len(fv.get("active_dims", [None])) > 0:
        return ""
    below = fv["protocol"]["prune_below"]
    return f"; every latent dimension pruned (standard deviation below {below:g}), so the score is 0 by definition"


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v
