"""The convolutional encoder and decoder shared by all models (docs/math.md 2; Kim & Mnih 2018, Higgins et al. 2017).

Built with ``members=M``, the same networks hold M independent copies (an ensemble's members, see
:mod:`chyvae_ext.models.ensemble`): every parameter gains a leading member dimension and keeps its
name, so member m's state dict is the stacked one indexed at m. Linear layers run as one batched
matrix product. The convolution stacks run in one of two ways (``conv_mode``, the same parameters
either way): "grouped", one grouped convolution per layer whose group m is member m's channels
(channels-last), which keeps a GPU busy with one launch per layer; or "members", each member's
convolutions on its own images in the lone layout (on a multi-threaded CPU members side by side on
threads, one intra-op thread each: models._threaded). On the CPU "members" is faster: a grouped
layer's activations are M times larger and fall out of the caches that hold a lone run's (the
measurements: benchmarks/RESULTS.md, bench_ensemble.py). "auto" (the default) picks "members" on
the CPU and "grouped" elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _threaded

LAYOUT = torch.channels_last  # the grouped convolutions' memory layout


class StackedLinear(nn.Module):
    """M independent nn.Linear layers: (M, N, in) -> (M, N, out). weight (M, out, in), bias (M, out)."""

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        layers = [nn.Linear(in_features, out_features) for _ in range(members)]  # each initialised as alone
        self.weight = nn.Parameter(torch.stack([lin.weight.detach() for lin in layers]))
        self.bias = nn.Parameter(torch.stack([lin.bias.detach() for lin in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.mT)


class StackedConv2d(nn.Module):
    """M independent 4x4 stride-2 convolutions (or transposed ones) on member-grouped channels:
    (N, M * in, H, W) -> (N, M * out, H', W'), member m reading channels [m * in, (m + 1) * in).
    weight (M, out, in, 4, 4), or (M, in, out, 4, 4) transposed, as nn.Conv2d / nn.ConvTranspose2d
    hold theirs; bias (M, out)."""

    def __init__(self, members: int, in_channels: int, out_channels: int, *, transposed: bool = False):
        super().__init__()
        cls = nn.ConvTranspose2d if transposed else nn.Conv2d
        layers = [cls(in_channels, out_channels, 4, stride=2, padding=1) for _ in range(members)]
        self.weight = nn.Parameter(torch.stack([c.weight.detach() for c in layers]))
        self.bias = nn.Parameter(torch.stack([c.bias.detach() for c in layers]))
        self.transposed = transposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One grouped convolution: (N, M * in, H, W) -> (N, M * out, H', W')."""
        m = self.weight.shape[0]
        conv = nn.functional.conv_transpose2d if self.transposed else nn.functional.conv2d
        w, b = self.weight.flatten(0, 1), self.bias.flatten()
        return conv(x, w, b, stride=2, padding=1, groups=m)


CONV_MODES = ("auto", "grouped", "members")


def _members_mode(mode: str, x: torch.Tensor) -> bool:
    if mode not in CONV_MODES:
        raise ValueError(f"conv_mode must be one of {', '.join(CONV_MODES)}, got {mode!r}")
    return mode == "members" or (mode == "auto" and x.device.type == "cpu")


def _member_stack(layers: nn.Sequential):
    """(fn, params): fn(x, [p[m] for p in params]) runs member m's convolutions and ReLUs on x, as
    its lone network would (channels-last under autocast, as a lone bf16 run)."""
    convs = [layer for layer in layers if isinstance(layer, StackedConv2d)]
    params = [t for c in convs for t in (c.weight, c.bias)]

    def fn(x: torch.Tensor, ps: list[torch.Tensor]) -> torch.Tensor:
        channels_last = torch.is_autocast_enabled(x.device.type)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        i = 0
        for layer in layers:
            if isinstance(layer, StackedConv2d):
                w, b = ps[i], ps[i + 1]
                i += 2
                if channels_last:
                    w = w.contiguous(memory_format=torch.channels_last)
                conv = nn.functional.conv_transpose2d if layer.transposed else nn.functional.conv2d
                x = conv(x, w, b, stride=2, padding=1)
            elif isinstance(layer, nn.ReLU):
                x = nn.functional.relu(x, inplace=layer.inplace)
            elif not isinstance(layer, nn.Identity):
                raise TypeError(f"no member-by-member rule for {type(layer).__name__}")
        return x

    return fn, params


def _run_members(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Every member's stack on x[m], stacked: members side by side on threads on a multi-threaded
    CPU (models._threaded), else one after another."""
    fn, params = _member_stack(layers)
    # A traced graph runs the members one after another (checked first: Dynamo cannot trace the threads).
    if not torch.compiler.is_compiling() and x.device.type == "cpu" and _threaded.workers() > 1 and x.shape[0] > 1:
        return _threaded.run_stacks(fn, x, params)
    unbound = [p.unbind(0) for p in params]  # one gradient node per parameter for all members
    return torch.stack([fn(x[m], [u[m] for u in unbound]) for m in range(x.shape[0])])


def members_to_channels(x: torch.Tensor) -> torch.Tensor:
    """(M, N, C, H, W) -> (N, M * C, H, W), channels_last (the grouped convolutions' fast layout on
    the CPU, measured: benchmarks/RESULTS.md)."""
    m, n, c, h, w = x.shape
    out = x.transpose(0, 1).reshape(n, m * c, h, w)
    return out.contiguous(memory_format=LAYOUT)


def channels_to_members(x: torch.Tensor, members: int) -> torch.Tensor:
    """(N, M * C, H, W) -> (M, N, C, H, W), a view."""
    n, mc, h, w = x.shape
    return x.reshape(n, members, mc // members, h, w).transpose(0, 1)


class Encoder(nn.Module):
    """(N, C, 64, 64) -> (N, out_dim): conv 4x4/2 with 32, 32, 64, 64 channels, FC hidden, FC out.

    With members=M: (M, N, C, 64, 64) -> (M, N, out_dim), or (N, C, 64, 64) -> (M, N, out_dim) (the
    same images through every member).
    """

    def __init__(self, channels: int, hidden: int, out_dim: int, *, members: int | None = None):
        super().__init__()
        self.members = members
        self.conv_mode = "auto"
        layers, c_in = [], channels
        for c_out in (32, 32, 64, 64):
            if members is None:
                conv = nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)
            else:
                conv = StackedConv2d(members, c_in, c_out)
            layers += [conv, nn.ReLU(inplace=True)]
            c_in = c_out
        self.conv = nn.Sequential(*layers, nn.Flatten() if members is None else nn.Identity())
        linear = nn.Linear if members is None else (lambda i, o: StackedLinear(members, i, o))
        self.fc = nn.Sequential(linear(64 * 4 * 4, hidden), nn.ReLU(inplace=True), linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.members is None:
            return self.fc(self.conv(x))
        if _members_mode(self.conv_mode, x):
            if x.dim() == 4:
                x = x.unsqueeze(0).expand(self.members, *x.shape)
            return self.fc(_run_members(self.conv, x).flatten(2))
        if x.dim() == 4:
            x = x.unsqueeze(0).expand(self.members, *x.shape)
        h = self.conv(members_to_channels(x))  # (N, M * 64, 4, 4)
        n = h.shape[0]
        return self.fc(h.reshape(n, self.members, 64 * 4 * 4).transpose(0, 1))


class Decoder(nn.Module):
    """(N, d) -> (N, C, 64, 64) logits: FC hidden, FC 1024, transposed conv 4x4/2 with 64, 32, 32, C.

    With members=M: (M, N, d) -> (M, N, C, 64, 64).
    """

    def __init__(self, latent_dim: int, hidden: int, channels: int, *, members: int | None = None):
        super().__init__()
        self.members = members
        self.conv_mode = "auto"
        linear = nn.Linear if members is None else (lambda i, o: StackedLinear(members, i, o))
        self.fc = nn.Sequential(
            linear(latent_dim, hidden), nn.ReLU(inplace=True), linear(hidden, 64 * 4 * 4), nn.ReLU(inplace=True)
        )
        layers, c_in = [], 64
        for i, c_out in enumerate((64, 32, 32, channels)):
            if members is None:
                layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            else:
                layers.append(StackedConv2d(members, c_in, c_out, transposed=True))
            if i < 3:
                layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.members is None:
            return self.deconv(self.fc(z).reshape(-1, 64, 4, 4))
        h = self.fc(z)  # (M, N, 1024)
        m, n = h.shape[:2]
        if _members_mode(self.conv_mode, h):
            return _run_members(self.deconv, h.reshape(m, n, 64, 4, 4))
        h = h.transpose(0, 1).reshape(n, m * 64, 4, 4).contiguous(memory_format=LAYOUT)
        return channels_to_members(self.deconv(h), m)


INITS = ("torch", "glorot")


def initialise(model: nn.Module, scheme: str = "torch") -> nn.Module:
    """Re-initialises a lone model's layers in place and returns it: "torch" leaves PyTorch's default
    (Kaiming-uniform weights and fan-in-scaled uniform biases) as built; "glorot" gives every
    convolution, transposed convolution and linear layer Glorot-uniform weights and zero biases, as
    TensorFlow's defaults did for the paper's code (U(-a, a), a = sqrt(6 / (fan_in + fan_out))).
    Draws from torch's global generator, like the default initialisation."""
    if scheme not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {scheme!r}")
    if scheme == "glorot":
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
    return model


def reconstruction_error(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood summed over pixels, per datapoint, in nats: (N,) for
    (N, C, H, W) images, (M, N) for an ensemble's (M, N, C, H, W)."""
    if logits.dtype in (torch.bfloat16, torch.float16):  # the likelihood in float32 under autocast
        logits, x = logits.float(), x.float()
    return nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(-3).sum(-1)
