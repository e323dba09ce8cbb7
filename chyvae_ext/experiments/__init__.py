"""Sweeps of training runs, their collection into CSV and the paper's figures.

``python -m chyvae_ext.experiments sweep --grid FILE``, ``... collect ROOT``, ``... plot CSV``.
"""

from .collect import collect_runs, summarise
from .grid import RunSpec, expand_grid, load_grid
from .plot import plot_all
from .sweep import sweep

__all__ = ["RunSpec", "collect_runs", "expand_grid", "load_grid", "plot_all", "summarise", "sweep"]
