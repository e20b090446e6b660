"""Defaults shared by every component, and how the environment overrides them.

Layering everywhere: built-in default -> environment (``FLARESTREAM_*``) -> explicit
argument. Nothing here imports a Kafka client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


ENV_KAFKA_PREFIX = "FLARESTREAM_KAFKA_"
_SECRET_WORDS = ("password", "secret", "key.pem", "token", "sasl.oauthbearer.config")


def kafka_config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings given as ``FLARESTREAM_KAFKA_<NAME>`` variables: the name
    lower-cased with ``_`` read as ``.`` (``FLARESTREAM_KAFKA_SECURITY_PROTOCOL`` ->
    ``security.protocol``). Every component (sender, sinks, topic tools) applies
    them beneath its explicit settings."""
    env = os.environ if environ is None else environ
    return {
        name[len(ENV_KAFKA_PREFIX) :].lower().replace("_", "."): value
        for name, value in env.items()
        if name.startswith(ENV_KAFKA_PREFIX) and len(name) > len(ENV_KAFKA_PREFIX)
    }


def kafka_client_config(explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Environment settings, then ``explicit`` ones on top."""
    return {**kafka_config_from_env(), **(explicit or {})}


def is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a client config safe to print: secret values replaced by ``***``."""
    return {k: ("***" if is_secret(k) and v else v) for k, v in config.items()}
