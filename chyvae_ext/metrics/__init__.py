"""Disentanglement metrics on the ground-truth interface of :mod:`chyvae_ext.data`."""

from .dci import dci, dci_from_importance
from .factor_vae import PROTOCOLS, factor_vae_score
from .information import mig, sap
from .suite import METRICS, SharedEncodings, make_encoder, parse_metrics, score

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "SharedEncodings",
    "dci",
    "dci_from_importance",
    "factor_vae_score",
    "make_encoder",
    "mig",
    "parse_metrics",
    "sap",
    "score",
]
