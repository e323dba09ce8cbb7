"""Disentanglement metrics on the ground-truth interface of :mod:`chyvae_ext.data`."""

from .beta_vae import beta_vae_score
from .dci import dci, dci_from_importance
from .factor_vae import PROTOCOLS, factor_vae_score
from .information import mig, sap
from .modularity import modularity_explicitness, modularity_from_mi
from .suite import METRICS, SharedEncodings, make_encoder, parse_metrics, score
from .unsupervised import gaussian_scores, unsupervised_scores

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "SharedEncodings",
    "beta_vae_score",
    "dci",
    "dci_from_importance",
    "factor_vae_score",
    "gaussian_scores",
    "make_encoder",
    "mig",
    "modularity_explicitness",
    "modularity_from_mi",
    "parse_metrics",
    "sap",
    "score",
    "unsupervised_scores",
]
