"""flarestream inside NVFlare jobs (extra ``flarestream[nvflare]``).

- :class:`KafkaStreamer` (client side, in place of ``ConvertToFedEvent``): the
  site's analytics events, produced to Kafka under the site's NVFlare identity and
  NVFlare's job id.
- :class:`KafkaReceiver` (server side, an NVFlare ``AnalyticsReceiver``): the
  federated analytics events of every site, produced to Kafka.
- :func:`add_kafka_streaming`: put a ``KafkaStreamer`` into an NVFlare recipe.

The names are loaded on first use, so importing this package (or
``flarestream.producer``) never needs NVFlare; using one of them without NVFlare
raises :class:`MissingNVFlareError` naming the extra to install. In a JSON job
config the class paths are ``flarestream.producer.nvflare.KafkaStreamer`` and
``flarestream.producer.nvflare.KafkaReceiver``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flarestream.producer.nvflare.streaming import MissingNVFlareError

if TYPE_CHECKING:
    from flarestream.producer.nvflare.components import KafkaStreamer, add_kafka_streaming
    from flarestream.producer.nvflare.receiver import KafkaReceiver

_WHERE = {
    "KafkaStreamer": "flarestream.producer.nvflare.components",
    "add_kafka_streaming": "flarestream.producer.nvflare.components",
    "KafkaReceiver": "flarestream.producer.nvflare.receiver",
}

__all__ = ["KafkaReceiver", "KafkaStreamer", "MissingNVFlareError", "add_kafka_streaming"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
