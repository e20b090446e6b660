"""flarestream: NVFlare analytics over Kafka, lossless, ordered per site and auditable.

Import names map onto the repository's folders:

- ``flarestream.schemas``: the wire contract (Avro schemas and the codec)
- ``flarestream.producer``: what runs at a site (``AnalyticsSender`` and the writers)
- ``flarestream.consumers``: the consumer loop and the sinks
- ``flarestream.deploy``: the local broker and topic tools
"""

from flarestream.errors import FlarestreamError

__version__ = "0.1.0"

__all__ = ["FlarestreamError", "__version__"]
