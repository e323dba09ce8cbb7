"""chyvae_ext: CHyVAE (Ansari & Soh, AAAI 2019) with a fused C++/CUDA regulariser.

The rooms, from the op up (each module imports only rooms listed above it, and nothing but
``train.py`` itself and its CLI's users run the trainer):

- the op: ``ops.py`` (chyvae_regularizer, the compiled module's front), ``reference.py`` (the pure
  PyTorch oracle), ``sampling.py`` (inverse-Wishart prior draws); the compiled sources are ``csrc/``.
- ``data/``: the datasets and their ground-truth factors; ``metrics/``: the disentanglement metrics.
- ``models/``: the models, their ensembles (``models/ensemble.py``) and the model registry
  (``models/registry.py``: each ``--model`` kind's class, swept hyperparameter and stacking).
- the training layer, in five rooms:
  ``config.py`` (TrainConfig, its checks, config files, the command line's parsing),
  ``runfiles.py`` (the run directory's format: the one module that knows its file names),
  ``build.py`` (a configuration to its model, dataset, fixed batches and held-out terms),
  ``step.py`` (one optimisation step, eager or compiled), and
  ``train.py`` (the loop, Trainer, and ``python -m chyvae_ext.train``);
  ``distributed.py`` holds what torchrun changes in the loop, ``looptools.py`` what the loop runs
  inside (signals as a flag, the progress bar, flushed denormals).
- the readers of runs: ``evaluate.py`` (score a run), ``plots.py`` (its pictures), ``explore.py``
  (the explorer page), ``experiments/`` (grids, sweeps and their launchers, collect, figures), and
  ``api.py`` (``chyvae_ext.load``: a run's model for Python; the models' encode, decode, reconstruct
  and traverse take the images of ``models/inputs.py``).

The Python front: ``chyvae_ext.train(**options)`` trains (the trainer module, callable, reached
through this package's ``__getattr__`` on first use, so that nothing here imports the trainer) and
``chyvae_ext.load(run_dir)`` gives the trained model.
"""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the compiled module)

__version__ = "0.1.0"

from ._loader import load_extension  # noqa: E402

_C = load_extension()

from ._validate import PriorCov  # noqa: E402
from .api import load  # noqa: E402
from .ops import chyvae_regularizer, fused_available, jittered_cholesky  # noqa: E402
from .reference import chyvae_regularizer_ref  # noqa: E402


def __getattr__(name: str):
    """``chyvae_ext.train``: the trainer module, imported on first use (``import chyvae_ext`` stays light)
    and callable, ``chyvae_ext.train(steps=200, out="runs/quick")`` (chyvae_ext.train.train_from_python)."""
    if name == "train":
        import importlib

        return importlib.import_module(f"{__name__}.train")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_info() -> dict:
    """How the compiled module was built.

    Returns a dict with ``version`` (package), ``torch_version`` (the torch it was built against),
    ``cuda`` (whether CUDA kernels were compiled), ``cuda_version`` and ``cuda_archs`` (None without
    CUDA).
    """
    return dict(_C.build_info())


__all__ = [
    "PriorCov",
    "build_info",
    "load",
    "chyvae_regularizer",
    "chyvae_regularizer_ref",
    "fused_available",
    "jittered_cholesky",
    "__version__",
]
