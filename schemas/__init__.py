"""The wire contract: the Avro schema of one analytics record, and its codec.

Nothing here imports a Kafka client.
"""

from flarestream.schemas.codec import (
    Codec,
    decode,
    default_codec,
    encode,
    load_schema,
    schema_fingerprint,
)
from flarestream.schemas.dxo import ReceivedData, create_analytic_dxo, from_dxo, to_dxo
from flarestream.schemas.record import (
    SCHEMA_VERSION,
    AnalyticsDataType,
    LogWriterName,
    Record,
    validate_call,
)

__all__ = [
    "SCHEMA_VERSION",
    "AnalyticsDataType",
    "Codec",
    "LogWriterName",
    "ReceivedData",
    "Record",
    "create_analytic_dxo",
    "decode",
    "default_codec",
    "encode",
    "from_dxo",
    "load_schema",
    "schema_fingerprint",
    "to_dxo",
    "validate_call",
]
