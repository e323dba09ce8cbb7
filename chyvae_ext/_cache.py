"""Where chyvae_ext keeps what it makes once and reuses: datasets' caches, fixed sets, modules built on import."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$CHYVAE_EXT_CACHE, else $XDG_CACHE_HOME/chyvae_ext, else ~/.cache/chyvae_ext."""
    if os.environ.get("CHYVAE_EXT_CACHE"):
        return Path(os.environ["CHYVAE_EXT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "chyvae_ext"
