"""The consumer side: one loop per sink, the sinks, and the sink contract.

Nothing here imports another sink; heavy backends are imported lazily by each sink.
"""

from flarestream.consumers.loop import ConsumerLoop, LoopConfig, LoopStats
from flarestream.consumers.registry import available_sinks, load_sink
from flarestream.consumers.sink import Delivered, Rejection, Sink
from flarestream.consumers.sink_cli import run_sink

__all__ = [
    "ConsumerLoop",
    "Delivered",
    "LoopConfig",
    "LoopStats",
    "Rejection",
    "Sink",
    "available_sinks",
    "load_sink",
    "run_sink",
]
