"""Pictures of a run: reconstructions, prior samples, latent traversals (PNG and GIF), loss curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .runfiles import read_metrics


def grid_image(images: torch.Tensor, cols: int, pad: int = 2) -> Image.Image:
    """images (n, C, H, W) in [0, 1] to one RGB PIL image, row-major, grey padding."""
    x = images.detach().float().clamp(0, 1).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, _, h, w = x.shape
    rows = (n + cols - 1) // cols
    canvas = torch.full((3, rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = x[i]
    return Image.fromarray((canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@torch.no_grad()
def save_reconstructions(model, x: torch.Tensor, path: Path) -> None:
    """Inputs (top row) over their reconstructions from the posterior mean (bottom row)."""
    recon = torch.sigmoid(model.decode(model.encode(x)).float())
    grid_image(torch.cat([x.float(), recon]), cols=len(x)).save(path)


@torch.no_grad()
def save_samples(model, z: torch.Tensor, path: Path) -> None:
    grid_image(torch.sigmoid(model.decode(z).float()), cols=int(np.ceil(np.sqrt(len(z))))).save(path)


@torch.no_grad()
def traversal_images(model, x: torch.Tensor, steps: int = 10, span: float = 3.0) -> torch.Tensor:
    """(d, steps, C, H, W): latent k of x's posterior mean moved over [-span, span] about its value."""
    mu = model.encode(x[:1]).float()[0]
    d = mu.shape[0]
    offsets = torch.linspace(-span, span, steps, device=mu.device)
    z = mu.repeat(d, steps, 1)  # (d, steps, d)
    z[torch.arange(d), :, torch.arange(d)] += offsets
    images = torch.sigmoid(model.decode(z.view(d * steps, d).to(next(model.parameters()).dtype)).float())
    return images.view(d, steps, *images.shape[1:])


def save_traversals(model, x: torch.Tensor, png: Path, gif: Path, steps: int = 10) -> None:
    """A grid (one row per latent) and an animation whose frames sweep all latents together."""
    t = traversal_images(model, x, steps)
    d = t.shape[0]
    grid_image(t.reshape(-1, *t.shape[2:]), cols=steps).save(png)
    frames = [grid_image(t[:, s], cols=d) for s in list(range(steps)) + list(range(steps - 2, 0, -1))]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=120, loop=0)


def save_model_pictures(model, fixed: torch.Tensor, root: Path, *, bf16: bool = False) -> None:
    """reconstructions.png, samples.png (64 prior samples), traversals.png and traversals.gif in ``root``."""
    from .models import sample_prior

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        save_reconstructions(model, fixed, root / "reconstructions.png")
        save_samples(model, sample_prior(model, 64, generator=torch.Generator().manual_seed(0)), root / "samples.png")
        save_traversals(model, fixed, root / "traversals.png", root / "traversals.gif")
    model.train(was_training)


def save_curves(metrics_path: Path, out: Path) -> None:
    """Loss terms against step from metrics.jsonl, one panel per term."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if r.get("kind") == "train"]
    if not rows:
        return
    keys = [
        k for k in ("loss", "neg_elbo", "recon", "kl", "regularizer", "tc", "disc_loss", "steps_per_s") if k in rows[0]
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, k in zip(axes[0], keys, strict=True):
        ax.plot(steps, [r[k] for r in rows], lw=1.2)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
