"""Ensembles: M independent models of one kind and shape trained as one batched model.

How. Every model here takes ``members=M``: its networks then hold M copies of each parameter
stacked on a leading dimension, under the lone model's parameter names (``encoder.conv.0.weight``
is (M, 32, C, 4, 4) where a lone model's is (32, C, 4, 4)). The convolutions run either as one
grouped convolution per layer whose group m is member m's channels (on a GPU) or member by member in
the lone layout (on a CPU; :mod:`chyvae_ext.models.networks`), a linear layer as one batched matrix product,
and the loss code is the lone model's (it reduces over the last batch dimension), so every term
comes out per member, (M,). The CHyVAE regulariser takes all members' datapoints in one call, each
with its member's nu (nu of shape (N,)). Explicit stacked layers rather than torch.func's vmap:
the grouped convolutions are what vmap would build, but written out they compile, pick their
memory layout, can run member by member instead (the faster way on a CPU, see
:mod:`chyvae_ext.models.networks`) and keep the state dict's names.

What is shared and what is not. Members share only the shapes (model kind, dataset, z_dim,
hidden, batch size, K) and the step counter; each has its own parameters, hyperparameters (beta,
gamma, nu, learned nu), optimiser state (Adam is elementwise: member m's state is the stacked
state at m), data order and noise (one generator per member, drawn as its lone run draws). Member
m's gradient is its lone gradient: the summed loss's gradient with respect to m's parameters is
m's own loss's.

``stack_models(models)`` builds an ensemble from lone models (the lone runs' initialisations),
``member_state_dict(ensemble, m)`` gives back member m as a lone model's state dict,
``load_member_state_dict`` puts one in, and ``select_members`` keeps some members only (a failed
member leaves the ensemble). The optimiser helpers do the same for torch.optim.Adam's state.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .registry import kind_of
from .vae import BetaVAE, CHyVAE

__all__ = [
    "LoneMembers",
    "StackedMembers",
    "load_member_optimizer_states",
    "load_member_state_dict",
    "member_optimizer_state",
    "member_state_dict",
    "select_members",
    "select_optimizer_members",
    "stack_models",
]


def _shape_of(model: nn.Module) -> dict:
    shape = {"class": type(model).__name__, "latent_dim": model.latent_dim, "channels": model.channels,
             "hidden": model.hidden}
    return shape | kind_of(model).shape(model)


def stack_models(models: list[nn.Module]) -> nn.Module:
    """One ensemble holding ``models`` as its members, in order, with their parameters and
    hyperparameters (copies: the lone models are left as they are). They must be lone models of
    one class and shape; a CHyVAE prior covariance must be the same for all. What each kind shares
    and stacks is its entry of the model registry (chyvae_ext.models.registry)."""
    if not models:
        raise ValueError("stack_models: models must hold at least one model, got none")
    first = models[0]
    for i, m in enumerate(models):
        if not isinstance(m, (BetaVAE, CHyVAE)) or m.members is not None:
            raise ValueError(f"stack_models: models[{i}] must be a lone model of chyvae_ext.models, got {m!r:.80}")
        if _shape_of(m) != _shape_of(first):
            raise ValueError(
                f"stack_models: models[{i}] differs in kind or shape from models[0]: "
                f"{_shape_of(m)} vs {_shape_of(first)}"
            )
    kind = kind_of(first)
    common = {"latent_dim": first.latent_dim, "channels": first.channels, "hidden": first.hidden,
              "members": len(models)}
    ens = kind.cls(**common, **kind.stack(models))
    if kind.after_stack is not None:
        kind.after_stack(ens, first)
    lone_params = [dict(m.named_parameters()) for m in models]
    param = next(first.parameters())
    ens = ens.to(dtype=param.dtype)
    with torch.no_grad():
        for name, p in ens.named_parameters():
            p.copy_(torch.stack([lp[name].detach().cpu() for lp in lone_params]))
    return ens.to(device=param.device)


def _stacked_names(ens: nn.Module) -> set[str]:
    if getattr(ens, "members", None) is None:
        name = type(ens).__name__
        raise ValueError(f"expected an ensemble (a model built with members=M), got a lone {name}")
    return {name for name, _ in ens.named_parameters()}


def member_state_dict(ens: nn.Module, m: int) -> dict[str, torch.Tensor]:
    """Member m's parameters and buffers as its lone model's ``state_dict()`` (copies)."""
    stacked = _stacked_names(ens)
    _check_member(ens, m)
    return {k: (v[m] if k in stacked else v).detach().clone() for k, v in ens.state_dict().items()}


def load_member_state_dict(ens: nn.Module, m: int, state: dict[str, torch.Tensor]) -> None:
    """Puts a lone model's state dict into member m (a CHyVAE prior covariance must match)."""
    stacked = _stacked_names(ens)
    _check_member(ens, m)
    own = ens.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"load_member_state_dict: missing keys {missing}, unexpected keys {unexpected}")
    with torch.no_grad():
        for k, v in state.items():
            if k in stacked:
                if tuple(v.shape) != tuple(own[k].shape[1:]):
                    raise ValueError(f"load_member_state_dict: {k} has shape {tuple(v.shape)}, "
                                     f"expected {tuple(own[k].shape[1:])}")
                own[k][m].copy_(v)
            elif not torch.equal(v.to(own[k].device), own[k]):
                raise ValueError(f"load_member_state_dict: {k} is shared by the members and differs")


def _check_member(ens: nn.Module, m: int) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < ens.members:
        raise ValueError(f"member must be an integer in [0, {ens.members}), got {m!r}")


def select_members(ens: nn.Module, keep: list[int]) -> None:
    """Keeps only the members ``keep`` (in that order), in place: parameters (the same Parameter
    objects, so an optimiser keeps them; call select_optimizer_members first) and per-member buffers."""
    _stacked_names(ens)
    if not keep or any(not 0 <= i < ens.members for i in keep):
        raise ValueError(f"keep must list members in [0, {ens.members}), got {keep}")
    index = torch.tensor(keep)
    with torch.no_grad():
        for p in ens.parameters():
            p.data = p.data[index.to(p.device)]
            p.grad = None
        for name in _per_member_buffers(ens):  # beta, gamma, fixed nu, ...: (M,) at the top level
            b = ens._buffers[name]
            ens._buffers[name] = b[index.to(b.device)]
    for module in ens.modules():
        if getattr(module, "members", None) is not None:
            module.members = len(keep)


# the models' (M,) hyperparameters
PER_MEMBER_BUFFERS = ("beta", "gamma", "_nu_fixed", "lambda_od", "lambda_d_factor", "c_max")


def _per_member_buffers(ens: nn.Module) -> set[str]:
    return {n for n in PER_MEMBER_BUFFERS if isinstance(ens._buffers.get(n), torch.Tensor)}


def _params_by_index(opt: torch.optim.Optimizer) -> dict[int, torch.Tensor]:
    """state_dict index -> parameter (the order state_dict() numbers them in)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    return dict(enumerate(params))


def _is_per_member(key: str, value: object, member_shape: tuple) -> bool:
    """Whether an optimiser state entry is per element of its parameter (Adam's moments) rather than
    shared by all members (Adam's step count, a scalar even for a 0-d parameter such as nu_raw)."""
    return key != "step" and torch.is_tensor(value) and tuple(value.shape) == member_shape


def member_optimizer_state(opt: torch.optim.Optimizer, m: int) -> dict:
    """Member m's part of an optimiser over an ensemble's parameters, as its lone optimiser's
    ``state_dict()``: per-element state (Adam's moments) indexed at m, the step count copied."""
    state = opt.state_dict()
    params = _params_by_index(opt)

    def part(i, k, v):
        return v[m].clone() if _is_per_member(k, v, tuple(params[i].shape)) else copy.deepcopy(v)

    return {
        "state": {i: {k: part(i, k, v) for k, v in s.items()} for i, s in state["state"].items()},
        "param_groups": copy.deepcopy(state["param_groups"]),
    }


def load_member_optimizer_states(opt: torch.optim.Optimizer, states: list[dict]) -> None:
    """Loads the lone optimisers' ``state_dict()``s of all members, in member order, into an
    optimiser over the ensemble's parameters. Their step counts must agree."""
    first = states[0]
    params = _params_by_index(opt)
    stacked: dict = {"param_groups": copy.deepcopy(first["param_groups"]), "state": {}}
    for i in first["state"]:
        entry = {}
        for k, v in first["state"][i].items():
            values = [s["state"][i][k] for s in states]
            if _is_per_member(k, v, tuple(params[i].shape[1:])):
                entry[k] = torch.stack(values)
            else:
                if any(not torch.equal(torch.as_tensor(x), torch.as_tensor(v)) for x in values):
                    raise ValueError(f"load_member_optimizer_states: the members' optimiser {k!r} differs: {values}")
                entry[k] = v
        stacked["state"][i] = entry
    opt.load_state_dict(stacked)


def select_optimizer_members(opt: torch.optim.Optimizer, keep: list[int]) -> None:
    """Keeps the optimiser state of members ``keep`` only. Call it before select_members shortens
    the parameters (it reads their shapes)."""
    for p, state in opt.state.items():
        for k, v in state.items():
            if _is_per_member(k, v, tuple(p.shape)):
                state[k] = v[torch.tensor(keep, device=v.device)]


class LoneMembers:
    """A lone model and its optimisers seen member by member: an ensemble of one, member 0.

    The trainer reads and writes per-member state through this (or :class:`StackedMembers`), so a
    lone run and an ensemble take one code path. ``optimizers`` may hold None (FactorVAE's
    discriminator optimiser where there is none)."""

    def __init__(self, model: nn.Module, optimizers: list[torch.optim.Optimizer | None]):
        self.model, self.optimizers = model, optimizers

    def state(self, m: int) -> tuple[dict, list[dict | None]]:
        """Member m's model state dict and its optimisers' state dicts, as its lone run's."""
        return self.model.state_dict(), [o.state_dict() if o is not None else None for o in self.optimizers]

    def load(self, models: list[dict], optimizers: list[list[dict | None]]) -> None:
        """Loads every member's state: ``models[m]``, and ``optimizers[k][m]`` for optimiser k."""
        self.model.load_state_dict(models[0])
        for opt, states in zip(self.optimizers, optimizers, strict=True):
            if opt is not None:
                opt.load_state_dict(states[0])

    def select(self, keep: list[int]) -> None:
        """Keeps the members ``keep`` (a lone model's one member stays)."""

    def finite(self) -> list[bool]:
        """Per member, whether every floating-point value of its model state is finite (one read)."""
        return [_all_finite(self.model.state_dict())]

    def lone_model(self, m: int, build) -> nn.Module:
        """Member m as a lone model: the model itself (``build`` makes an empty lone model)."""
        return self.model


class StackedMembers(LoneMembers):
    """An ensemble (a model built with members=M) and its optimisers, member by member."""

    def state(self, m: int) -> tuple[dict, list[dict | None]]:
        opts = [member_optimizer_state(o, m) if o is not None else None for o in self.optimizers]
        return member_state_dict(self.model, m), opts

    def load(self, models: list[dict], optimizers: list[list[dict | None]]) -> None:
        for m, state in enumerate(models):
            load_member_state_dict(self.model, m, state)
        for opt, states in zip(self.optimizers, optimizers, strict=True):
            if opt is not None:
                load_member_optimizer_states(opt, states)

    def select(self, keep: list[int]) -> None:
        for opt in self.optimizers:  # first: it reads the parameters' shapes
            if opt is not None:
                select_optimizer_members(opt, keep)
        select_members(self.model, keep)  # the discriminator's parameters with the rest

    def finite(self) -> list[bool]:
        return [_all_finite(member_state_dict(self.model, m)) for m in range(self.model.members)]

    def lone_model(self, m: int, build) -> nn.Module:
        """Member m as a lone model (a copy, built by ``build`` and loaded with m's parameters)."""
        model = build()
        model.load_state_dict(member_state_dict(self.model, m))
        return model


def _all_finite(state: dict) -> bool:
    flags = [torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True
