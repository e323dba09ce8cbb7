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
    recon = model.decode(model.encode(x))
    grid_image(torch.cat([x.float(), recon]), cols=len(x)).save(path)


@torch.no_grad()
def save_samples(model, z: torch.Tensor, path: Path) -> None:
    grid_image(model.decode(z), cols=int(np.ceil(np.sqrt(len(z))))).save(path)


@torch.no_grad()
def latent_spread(model, images: torch.Tensor, low: float = 0.02, high: float = 0.98) -> dict[str, torch.Tensor]:
    """Per latent dimension, over the posterior means of ``images`` (n, C, H, W): ``low`` and ``high``
    quantiles (the traversal range, covering where the data puts that dimension) and ``variance``
    (the variance of the means across images: near 0 for a dimension the encoder does not use)."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got low={low!r}, high={high!r}")
    if len(images) < 2:
        raise ValueError(f"the spread needs at least 2 images, got {len(images)}")
    mu = model.encode(images).float()
    q = torch.quantile(mu, torch.tensor([low, high], device=mu.device), dim=0)
    return {"low": q[0], "high": q[1], "variance": mu.var(dim=0)}


@torch.no_grad()
def traversal_images(model, x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """(d, steps, C, H, W): latent k of x[0]'s posterior mean set to ``steps`` values from low[k] to high[k]."""
    mu = model.encode(x[:1]).float()[0]
    d = mu.shape[0]
    if low.shape != (d,) or high.shape != (d,):
        raise ValueError(f"low and high must have shape ({d},), got {tuple(low.shape)} and {tuple(high.shape)}")
    t = torch.linspace(0.0, 1.0, steps, device=mu.device)
    values = low.to(mu.device)[:, None] + (high - low).to(mu.device)[:, None] * t  # (d, steps)
    z = mu.repeat(d, steps, 1)  # (d, steps, d)
    z[torch.arange(d), :, torch.arange(d)] = values
    images = model.decode(z.view(d * steps, d))
    return images.view(d, steps, *images.shape[1:])


def labelled_rows(grid: Image.Image, labels: list[str], row_height: int, pad: int = 2, width: int = 118) -> Image.Image:
    """``grid`` with a white margin on its left holding one label per row."""
    from PIL import ImageDraw

    out = Image.new("RGB", (grid.width + width, grid.height), (255, 255, 255))
    out.paste(grid, (width, 0))
    draw = ImageDraw.Draw(out)
    for i, label in enumerate(labels):
        draw.text((4, pad + i * (row_height + pad) + row_height // 2 - 6), label, fill=(0, 0, 0))
    return out


def save_traversals(
    model, x: torch.Tensor, held_out: torch.Tensor, png: Path, gif: Path, steps: int = 10
) -> list[int]:
    """A grid with one row per latent, sorted by the variance of its posterior means over ``held_out``
    (most used first) and labelled with it, each row traversing the range the held-out images span
    (:func:`latent_spread`) from x[0]'s posterior mean; and an animation whose frames sweep all latents
    together. Returns the row order (latent indices, most used first)."""
    spread = latent_spread(model, held_out)
    order = torch.argsort(spread["variance"], descending=True).cpu()
    t = traversal_images(model, x, spread["low"], spread["high"], steps)[order]
    h = t.shape[-2]
    low, high, var = (spread[k].tolist() for k in ("low", "high", "variance"))
    labels = [f"z{k}  var {var[k]:.3g}\n[{low[k]:.2f}, {high[k]:.2f}]" for k in order.tolist()]
    labelled_rows(grid_image(t.reshape(-1, *t.shape[2:]), cols=steps), labels, h).save(png)
    frames = [grid_image(t[:, s], cols=t.shape[0]) for s in list(range(steps)) + list(range(steps - 2, 0, -1))]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=120, loop=0)
    return order.tolist()


def save_model_pictures(model, fixed: torch.Tensor, held_out: torch.Tensor, root: Path, *, bf16: bool = False) -> None:
    """reconstructions.png, samples.png (64 prior samples), traversals.png and traversals.gif in ``root``
    (traversal ranges and row order from the posterior means of ``held_out``, see :func:`save_traversals`)."""
    from .models import sample_prior

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        save_reconstructions(model, fixed, root / "reconstructions.png")
        save_samples(model, sample_prior(model, 64, generator=torch.Generator().manual_seed(0)), root / "samples.png")
        save_traversals(model, fixed, held_out, root / "traversals.png", root / "traversals.gif")
    model.train(was_training)


def save_curves(metrics_path: Path, out: Path) -> None:
    """Loss terms against step from metrics.jsonl, one panel per term."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if r.get("kind") == "train"]
    if not rows:
        return
    curve_keys = ("loss", "neg_elbo", "recon", "kl", "regularizer", "tc", "disc_loss", "disc_accuracy", "steps_per_s")
    keys = [k for k in curve_keys if k in rows[0]]
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
