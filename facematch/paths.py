"""Per-user folders: the cache (derived files, embedding caches) and the configuration (calibrated cards).

Nothing is created here; callers create what they write.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FACEMATCH_CACHE_DIR"
CONFIG_ENV = "FACEMATCH_CONFIG_DIR"
MODEL_DIR_ENV = "FACEMATCH_MODEL_DIR"  # folders of extra model cards and files (see facematch.model_files)


def user_cache_dir() -> Path:
    """``$FACEMATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/facematch``, else ``~/.cache/facematch``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "facematch"


def user_config_dir() -> Path:
    """``$FACEMATCH_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/facematch``, else ``~/.config/facematch``."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "facematch"


def user_cards_dir() -> Path:
    """Where a user's own model cards go (``facematch calibrate --write``): the first ``$FACEMATCH_MODEL_DIR``
    folder when set, else ``<user config>/models``. Card lookup by id searches it before the packaged cards."""
    env = os.environ.get(MODEL_DIR_ENV)
    first = next((p for p in env.split(os.pathsep) if p), None) if env else None
    return Path(first).expanduser() if first else user_config_dir() / "models"


__all__ = ["CACHE_ENV", "CONFIG_ENV", "MODEL_DIR_ENV", "user_cache_dir", "user_cards_dir", "user_config_dir"]
