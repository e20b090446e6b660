"""The archive's files: layout, names and manifests.

Layout (``date`` is the UTC date of the sender's timestamp, ``Record.timestamp_ms``,
so a record lands in the same directory however often it is re-read or replayed)::

    <root>/<job_id>/<site>/<YYYY-MM-DD>/<topic>+<partition>+<first offset, 20 digits>.avro
    <root>/<job_id>/<site>/<YYYY-MM-DD>/<same name>.manifest.json

A data file holds consecutive records of one (topic, partition) for one (job, site,
date), in offset order. Its manifest is written only after the data file is in
place; a data file without a manifest is incomplete and readers skip it.

The row schema is in :mod:`flarestream.consumers.archive_rows` and the Avro/Parquet
writers and readers in :mod:`flarestream.consumers.archive_formats`; their names
are re-exported here, where they were first defined.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass

from flarestream.consumers.archive_formats import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    FORMATS,
    AvroFileWriter,
    FileWriter,
    ParquetFileWriter,
    arrow_schema,
    check_codec,
    import_parquet,
    iter_rows,
    open_writer,
    resolve_compression,
)
from flarestream.consumers.archive_rows import (
    ARCHIVE_SCHEMA,
    ARCHIVE_SCHEMA_NAME,
    ArchiveError,
    archive_fingerprint,
    row_headers,
    row_size,
    to_row,
)

__all__ = [  # defined here, or re-exported from archive_rows and archive_formats
    "ARCHIVE_SCHEMA",
    "ARCHIVE_SCHEMA_NAME",
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "FORMATS",
    "MANIFEST_SUFFIX",
    "MANIFEST_VERSION",
    "ArchiveError",
    "AvroFileWriter",
    "DataName",
    "FileWriter",
    "Manifest",
    "ParquetFileWriter",
    "archive_fingerprint",
    "arrow_schema",
    "check_codec",
    "data_name",
    "file_digest",
    "import_parquet",
    "iter_rows",
    "open_writer",
    "parse_data_name",
    "resolve_compression",
    "row_headers",
    "row_size",
    "temp_name",
    "to_row",
    "unsafe_name_reason",
    "utc_date",
]

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1

_DATA_NAME = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]+)\+(?P<partition>\d+)\+(?P<first>\d{20})\.(?P<ext>avro|parquet)$"
)
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_DAY_MS = 86_400_000


def unsafe_name_reason(kind: str, name: str) -> str | None:
    """Why ``name`` cannot be a directory under the archive root, or None if it can."""
    if not name or not name.strip():
        return f"{kind} name is empty"
    if name.startswith(".") or _UNSAFE.search(name):
        return (
            f"{kind} name {name!r} would escape or hide in the archive root (it starts with "
            "'.' or contains '/', '\\' or a control character); rename the " + kind
        )
    if len(name.encode("utf-8")) > 200:
        return f"{kind} name is longer than 200 bytes, too long for a directory name"
    return None


def utc_date(timestamp_ms: int) -> str:
    """``YYYY-MM-DD`` of a millisecond timestamp in UTC; ValueError outside years 1-9999."""
    return dt.date.fromordinal(_EPOCH_ORDINAL + timestamp_ms // _DAY_MS).isoformat()


def data_name(topic: str, partition: int, first_offset: int, fmt: str) -> str:
    return f"{topic}+{partition}+{first_offset:020d}.{fmt}"


@dataclass(frozen=True)
class DataName:
    """The parts of a data file's name."""

    topic: str
    partition: int
    first_offset: int
    format: str


def parse_data_name(name: str) -> DataName | None:
    """The parts of a data file name, or None for anything else (manifests, temp files)."""
    m = _DATA_NAME.match(name)
    if m is None:
        return None
    return DataName(m["topic"], int(m["partition"]), int(m["first"]), m["ext"])


def temp_name(name: str) -> str:
    """Hidden name a file is written under until it is complete."""
    return f".{name}.tmp"


@dataclass(frozen=True)
class Manifest:
    """What a complete data file holds; written beside it as ``<name>.manifest.json``."""

    file: str
    format: str
    compression: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    record_count: int
    job_id: str
    site: str
    date: str
    size_bytes: int
    sha256: str
    created: str  # ISO 8601, UTC
    min_kafka_timestamp_ms: int
    max_kafka_timestamp_ms: int
    schema: str = ARCHIVE_SCHEMA_NAME
    schema_fingerprint: str = ""
    manifest_version: int = MANIFEST_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parse a manifest; ArchiveError naming ``where`` if it is not one."""
        try:
            raw = json.loads(data)
            known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
            manifest = cls(**known)
            if not isinstance(manifest.first_offset, int) or not isinstance(
                manifest.last_offset, int
            ):
                raise TypeError("offsets are not integers")
        except (ValueError, TypeError) as exc:
            raise ArchiveError(
                f"manifest {where} is unreadable ({exc}); delete it and its data file, then "
                "re-read the topic from before that file's first offset"
            ) from None
        return manifest


def file_digest(path: str) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a local file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fo:
        while chunk := fo.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
