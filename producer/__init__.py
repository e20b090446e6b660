"""What runs at a site: the ``AnalyticsSender`` and NVFlare-style tracking writers.

The producer never imports consumer code.
"""

from flarestream.producer.sender import AnalyticsSender
from flarestream.producer.writers import MLflowWriter, SummaryWriter, WandBWriter
from flarestream.schemas.record import AnalyticsDataType, LogWriterName

__all__ = [
    "AnalyticsDataType",
    "AnalyticsSender",
    "LogWriterName",
    "MLflowWriter",
    "SummaryWriter",
    "WandBWriter",
]
