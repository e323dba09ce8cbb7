"""The convolutional encoder and decoder shared by all models (SPEC 2; Kim & Mnih 2018, Higgins et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """(N, C, 64, 64) -> (N, out_dim): conv 4x4/2 with 32, 32, 64, 64 channels, FC hidden, FC out."""

    def __init__(self, channels: int, hidden: int, out_dim: int):
        super().__init__()
        layers, c_in = [], channels
        for c_out in (32, 32, 64, 64):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(64 * 4 * 4, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class Decoder(nn.Module):
    """(N, d) -> (N, C, 64, 64) logits: FC hidden, FC 1024, transposed conv 4x4/2 with 64, 32, 32, C."""

    def __init__(self, latent_dim: int, hidden: int, channels: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 64 * 4 * 4), nn.ReLU(inplace=True)
        )
        layers, c_in = [], 64
        for i, c_out in enumerate((64, 32, 32, channels)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < 3:
                layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).reshape(-1, 64, 4, 4))


def reconstruction_error(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood summed over pixels, per datapoint (N,), in nats."""
    if logits.dtype in (torch.bfloat16, torch.float16):  # the likelihood in float32 under autocast
        logits, x = logits.float(), x.float()
    return nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
