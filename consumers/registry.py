"""Finding sinks: every sink, built-in or third-party, is an entry point in the
group ``flarestream.sinks`` naming a :class:`~flarestream.consumers.sink.Sink`
subclass. Adding a sink is installing a package that declares one."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from flarestream.consumers.sink import Sink
from flarestream.errors import ConfigError

GROUP = "flarestream.sinks"


def available_sinks() -> dict[str, EntryPoint]:
    """Installed sinks by name (not imported yet)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_sink(name: str) -> type[Sink]:
    """The sink class registered as ``name``; ConfigError naming the known ones."""
    sinks = available_sinks()
    if name not in sinks:
        known = ", ".join(sorted(sinks)) or "none"
        raise ConfigError(f"no sink named {name!r} is installed (installed: {known})")
    cls = sinks[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise ConfigError(f"entry point {sinks[name].value!r} for sink {name!r} is not a Sink")
    return cls
