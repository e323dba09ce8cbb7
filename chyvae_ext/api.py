"""The Python front's reader: load a run's model (``chyvae_ext.load``). Training from Python is
``chyvae_ext.train(...)``, the trainer module itself (callable: chyvae_ext.train.train_from_python).

    import chyvae_ext
    run = chyvae_ext.train(steps=200, out="runs/quick")      # a TrainConfig, or its options
    model = chyvae_ext.load(run.run_dir)                      # eval mode; model.config, model.step
    z = model.encode(images)                                  # uint8 or float, numpy or torch
    x = model.decode(z)                                       # (N, C, 64, 64) in [0, 1]
    grid = model.traverse(images[0])                          # (d, 9, C, 64, 64)

``encode``, ``decode``, ``reconstruct`` and ``traverse`` are methods of every model
(chyvae_ext.models; the images they take: :func:`chyvae_ext.models.inputs.as_images`); this module
holds :func:`load`.
"""

from __future__ import annotations

from pathlib import Path

import torch


def load(run_dir, *, device: str | None = None, checkpoint: str | Path | None = None) -> torch.nn.Module:
    """The model of a run directory, in eval mode, from its newest checkpoint that loads (or
    ``checkpoint``), read as plain data (``torch.load(weights_only=True)``). The model carries
    ``config`` (its TrainConfig), ``checkpoint`` (the file) and ``step``. ``device``: default the run's.
    Raises ValueError naming what is missing or wrong."""
    from .evaluate import load_run

    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"chyvae_ext.load: no run directory {path}")
    model, config, ckpt, step = load_run(path, checkpoint=checkpoint, device=device)
    model.config, model.checkpoint, model.step = config, ckpt, step
    return model
