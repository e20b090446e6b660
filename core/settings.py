"""Defaults shared by every component, and how the environment overrides them.

Layering everywhere: built-in default -> environment (``FLARESTREAM_*``) -> explicit
argument. Nothing here imports a Kafka client.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TOPIC = "flare.analytics"
LOCAL_BROKER_PORT = 9092
LOCAL_BROKER_HOST = "127.0.0.1"
ENV_BOOTSTRAP = "FLARESTREAM_BOOTSTRAP_SERVERS"


def default_bootstrap_servers() -> str:
    """``FLARESTREAM_BOOTSTRAP_SERVERS`` when set, else the local broker's address."""
    return os.environ.get(ENV_BOOTSTRAP) or f"{LOCAL_BROKER_HOST}:{LOCAL_BROKER_PORT}"


def home_dir() -> Path:
    """Where flarestream keeps state outside a repository (``FLARESTREAM_HOME``)."""
    return Path(os.environ.get("FLARESTREAM_HOME") or Path.home() / ".flarestream")


def cache_dir() -> Path:
    """Where downloaded artefacts such as the Kafka jars live (``FLARESTREAM_CACHE``)."""
    env = os.environ.get("FLARESTREAM_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "flarestream"
