"""Disentanglement metrics on the ground-truth interface of :mod:`chyvae_ext.data`."""

from .factor_vae import PROTOCOLS, factor_vae_score
from .information import mig, sap

__all__ = ["PROTOCOLS", "factor_vae_score", "mig", "sap"]
