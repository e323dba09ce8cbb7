"""The model registry: every ``--model`` kind, its class, its swept hyperparameter and how its
lone models stack into an ensemble, in one table.

A kind is registered once with :func:`register`; the training layer builds a model from a
configuration through :attr:`ModelKind.options` (chyvae_ext.build.build_model), ``collect`` groups
runs by :attr:`ModelKind.hyper`, and :func:`chyvae_ext.models.ensemble.stack_models` asks the kind
of its models' class what the members must share (:attr:`ModelKind.shape`) and what the ensemble is
built with (:attr:`ModelKind.stack`). Two kinds may share a class (``vae`` is ``betavae`` at
beta = 1); the class's first registered kind stacks it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from .baselines import DIPVAE, AnnealedVAE, BetaTCVAE
from .vae import BetaVAE, CHyVAE, FactorVAE


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """One ``--model`` kind.

    - ``cls``: the model class; built as ``cls(z_dim, channels, hidden, **options(config))``.
    - ``hyper``: the hyperparameter a sweep varies and ``collect`` groups the kind's runs by.
    - ``options``: a training configuration (its resolved attributes: nu, beta, gamma, ...) to the
      class's keyword arguments.
    - ``shape``: what an ensemble's members must share beyond latent_dim, channels and hidden.
    - ``stack``: the ensemble's keyword arguments from its lone members (per-member hyperparameters
      as lists, shared settings once).
    - ``after_stack``: copies state the constructor does not take (a step counter) into the ensemble.
    - ``variant``: a run's configuration (config.json's mapping) to a short name of the options beyond
      ``hyper`` that make it another setting ("" for the kind's defaults); ``collect`` keeps runs of
      different variants apart.
    """

    name: str
    cls: type[nn.Module]
    hyper: str
    options: Callable[[object], dict]
    shape: Callable[[nn.Module], dict]
    stack: Callable[[list[nn.Module]], dict]
    after_stack: Callable[[nn.Module, nn.Module], None] | None = None
    variant: Callable[[dict], str] = lambda config: ""


MODEL_KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Adds ``kind`` to the registry (a name registered twice is refused)."""
    if kind.name in MODEL_KINDS:
        raise ValueError(f"model kind {kind.name!r} is registered already")
    MODEL_KINDS[kind.name] = kind
    return kind


def kind_of(model: nn.Module) -> ModelKind:
    """The first registered kind whose class is exactly the model's."""
    for kind in MODEL_KINDS.values():
        if type(model) is kind.cls:
            return kind
    raise ValueError(f"no registered model kind has class {type(model).__name__}")


def _no_shape(model: nn.Module) -> dict:
    return {}


def _values(models: list[nn.Module], name: str) -> list[float]:
    return [getattr(m, name) for m in models]


def _chyvae_stack(models: list[CHyVAE]) -> dict:
    first = models[0]
    prior = first.prior_cov
    for i, m in enumerate(models):
        same = (m.prior_cov is None and prior is None) or (
            torch.is_tensor(prior) and torch.is_tensor(m.prior_cov) and torch.equal(m.prior_cov, prior)
        ) or (not torch.is_tensor(prior) and m.prior_cov == prior)
        if not same:
            raise ValueError(f"stack_models: models[{i}] has another prior_cov than models[0]")
    nus = [m.nu if isinstance(m.nu, float) else float(m.nu.detach()) for m in models]  # no float32 detour
    return {"nu": nus, "num_samples": first.num_samples, "learn_nu": first.learn_nu, "impl": first.impl,
            "posterior_jitter": first.posterior_jitter,
            "prior_cov": prior.detach().cpu() if torch.is_tensor(prior) else prior}


def _copy_iteration(ensemble: AnnealedVAE, first: AnnealedVAE) -> None:
    ensemble.iteration.copy_(first.iteration)


def _chyvae_variant(config: dict) -> str:
    parts = []
    if config.get("posterior_jitter", 0.0):
        parts.append(f"posterior_jitter {config['posterior_jitter']:g}")
    if config.get("learn_nu", False):
        parts.append("learn_nu")
    if config.get("num_samples", 1) != 1:
        parts.append(f"K {config['num_samples']}")
    return ", ".join(parts)


register(ModelKind(
    "chyvae", CHyVAE, "nu",
    options=lambda c: {"nu": c.nu, "learn_nu": c.learn_nu, "num_samples": c.num_samples, "impl": c.impl,
                       "posterior_jitter": c.posterior_jitter},
    shape=lambda m: {"num_samples": m.num_samples, "learn_nu": m.learn_nu, "impl": m.impl,
                     "posterior_jitter": m.posterior_jitter},
    stack=_chyvae_stack,
    variant=_chyvae_variant,
))
register(ModelKind(
    "betavae", BetaVAE, "beta",
    options=lambda c: {"beta": c.beta}, shape=_no_shape, stack=lambda ms: {"beta": _values(ms, "beta")},
))
register(ModelKind(
    "factorvae", FactorVAE, "gamma",
    options=lambda c: {"gamma": c.gamma},
    shape=lambda m: {"disc": [tuple(p.shape) for p in m.discriminator.parameters()]},
    stack=lambda ms: {"gamma": _values(ms, "gamma"), "disc_hidden": ms[0].discriminator[0].out_features,
                      "disc_layers": (len(ms[0].discriminator) - 1) // 2},
))
register(ModelKind(
    "vae", BetaVAE, "beta",
    options=lambda c: {"beta": c.beta}, shape=_no_shape, stack=lambda ms: {"beta": _values(ms, "beta")},
))
register(ModelKind(
    "betatcvae", BetaTCVAE, "beta",
    options=lambda c: {"beta": c.beta, "dataset_size": c.dataset_size},
    shape=lambda m: {"dataset_size": m.dataset_size},
    stack=lambda ms: {"beta": _values(ms, "beta"), "dataset_size": ms[0].dataset_size},
))
for _name, _kind in (("dipvae1", "i"), ("dipvae2", "ii")):
    register(ModelKind(
        _name, DIPVAE, "lambda_od",
        options=lambda c, k=_kind: {"kind": k, "lambda_od": c.lambda_od, "lambda_d_factor": c.lambda_d_factor},
        shape=lambda m: {"kind": m.kind},
        stack=lambda ms: {"kind": ms[0].kind, "lambda_od": _values(ms, "lambda_od"),
                          "lambda_d_factor": _values(ms, "lambda_d_factor")},
    ))
register(ModelKind(
    "annealedvae", AnnealedVAE, "c_max",
    options=lambda c: {"gamma": c.gamma, "c_max": c.c_max, "c_iters": c.c_iters},
    shape=lambda m: {"c_iters": m.c_iters, "iteration": int(m.iteration)},
    stack=lambda ms: {"gamma": _values(ms, "gamma"), "c_max": _values(ms, "c_max"), "c_iters": ms[0].c_iters},
    after_stack=_copy_iteration,
))
