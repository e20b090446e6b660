"""The archive's row: its Avro schema and how a delivered message becomes one.

Every archive file, Avro or Parquet, holds rows of :data:`ARCHIVE_SCHEMA`: the
Kafka message byte for byte, its coordinates and the decoded fields most queries
need. :class:`ArchiveError` lives here because every archive module imports this
one.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from flarestream.consumers.sink import Delivered
from flarestream.errors import FlarestreamError
from flarestream.schemas.codec import schema_fingerprint

ARCHIVE_SCHEMA_NAME = "flarestream.archive.ArchivedRecord"
ARCHIVE_SCHEMA: Mapping[str, Any] = {
    "type": "record",
    "name": "ArchivedRecord",
    "namespace": "flarestream.archive",
    "doc": "One Kafka message of the analytics topic, kept byte for byte, with its "
    "coordinates and the decoded fields most queries need.",
    "fields": [
        {"name": "topic", "type": "string"},
        {"name": "partition", "type": "int"},
        {"name": "offset", "type": "long"},
        {"name": "kafka_timestamp_ms", "type": "long", "doc": "Kafka's timestamp (-1 if none)."},
        {"name": "message", "type": "bytes", "doc": "The message value exactly as read."},
        {"name": "site", "type": "string"},
        {"name": "job_id", "type": "string"},
        {"name": "record_id", "type": "string"},
        {"name": "sender_id", "type": "string"},
        {"name": "seq", "type": "long"},
        {"name": "tag", "type": "string"},
        {"name": "data_type", "type": "string", "doc": "AnalyticsDataType member name."},
        {"name": "writer", "type": "string", "doc": "LogWriterName member name."},
        {"name": "step", "type": ["null", "long"], "default": None},
        {"name": "timestamp_ms", "type": "long", "doc": "Sender wall clock, ms since epoch."},
        {
            "name": "headers",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Header",
                    "fields": [
                        {"name": "key", "type": "string"},
                        {"name": "value", "type": ["null", "bytes"]},
                    ],
                },
            },
            "default": [],
            "doc": "The message headers in order (the site's signature, flarestream.sig, "
            "among them), so provenance can be checked later. Absent from files written "
            "before it was added: read with row.get('headers') or [].",
        },
    ],
}


class ArchiveError(FlarestreamError):
    """The archive cannot be written or read as promised (bad manifest, failed upload)."""


@lru_cache(maxsize=1)
def archive_fingerprint() -> str:
    """CRC-64-AVRO fingerprint (hex) of :data:`ARCHIVE_SCHEMA`, computed once."""
    return schema_fingerprint(ARCHIVE_SCHEMA).hex()


def to_row(d: Delivered) -> dict[str, Any]:
    """The archive row of one delivered message (field order as in the schema)."""
    r = d.record
    return {
        "topic": d.topic,
        "partition": d.partition,
        "offset": d.offset,
        "kafka_timestamp_ms": d.timestamp_ms,
        "message": d.raw,
        "site": r.site,
        "job_id": r.job_id,
        "record_id": r.record_id,
        "sender_id": r.sender_id,
        "seq": r.seq,
        "tag": r.tag,
        "data_type": r.data_type.name,
        "writer": r.writer.name,
        "step": r.step,
        "timestamp_ms": r.timestamp_ms,
        "headers": [{"key": k, "value": v} for k, v in d.headers],
    }


def row_headers(row: Mapping[str, Any]) -> tuple[tuple[str, bytes | None], ...]:
    """The message headers of an archive row (none in files older than the field)."""
    return tuple(
        (h["key"], None if h["value"] is None else bytes(h["value"]))
        for h in row.get("headers") or ()
    )


def row_size(row: Mapping[str, Any]) -> int:
    """Rough uncompressed size of a row, for rotation by bytes and buffer bounds."""
    headers = 80 * len(row["headers"]) if "headers" in row else 0  # a signature is 64 bytes
    return len(row["message"]) + len(row["tag"]) + len(row["record_id"]) + 64 + headers
