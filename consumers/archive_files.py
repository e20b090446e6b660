"""The archive's files: row schema, names, manifests and the two file formats.

Layout (``date`` is the UTC date of the sender's timestamp, ``Record.timestamp_ms``,
so a record lands in the same directory however often it is re-read or replayed)::

    <root>/<job_id>/<site>/<YYYY-MM-DD>/<topic>+<partition>+<first offset, 20 digits>.avro
    <root>/<job_id>/<site>/<YYYY-MM-DD>/<same name>.manifest.json

A data file holds consecutive records of one (topic, partition) for one (job, site,
date), in offset order. Its manifest is written only after the data file is in
place; a data file without a manifest is incomplete and readers skip it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import IO, Any

from flarestream.consumers.sink import Delivered
from flarestream.errors import ConfigError, FlarestreamError
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
FORMATS = ("avro", "parquet")
DEFAULT_COMPRESSION = {"avro": "deflate", "parquet": "zstd"}
# user-facing name -> the backend's name, per format
COMPRESSIONS: Mapping[str, Mapping[str, str]] = {
    "avro": {"none": "null", "deflate": "deflate", "zstd": "zstandard", "snappy": "snappy",
             "bzip2": "bzip2", "xz": "xz", "lz4": "lz4"},
    "parquet": {"none": "none", "snappy": "snappy", "deflate": "gzip", "gzip": "gzip",
                "zstd": "zstd", "lz4": "lz4", "brotli": "brotli"},
}  # fmt: skip
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1

_DATA_NAME = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]+)\+(?P<partition>\d+)\+(?P<first>\d{20})\.(?P<ext>avro|parquet)$"
)
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")
_CODEC_PACKAGES = {"zstandard": "backports.zstd (Python < 3.14; 'flarestream[archive]')",
                   "snappy": "cramjam", "lz4": "lz4"}  # fmt: skip
_ROW_GROUP_ROWS = 8192  # Parquet rows buffered in memory before a row group is written
_ROW_GROUP_BYTES = 4 << 20
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_DAY_MS = 86_400_000


class ArchiveError(FlarestreamError):
    """The archive cannot be written or read as promised (bad manifest, failed upload)."""


@lru_cache(maxsize=1)
def archive_fingerprint() -> str:
    """CRC-64-AVRO fingerprint (hex) of :data:`ARCHIVE_SCHEMA`, computed once."""
    return schema_fingerprint(ARCHIVE_SCHEMA).hex()


def resolve_compression(fmt: str, compression: str | None) -> tuple[str, str]:
    """(user-facing name, backend codec name) for ``fmt``; ConfigError if unknown."""
    if fmt not in FORMATS:
        raise ConfigError(f"archive format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    name = (compression or DEFAULT_COMPRESSION[fmt]).lower()
    if fmt == "parquet" and name == "deflate":
        name = "gzip"  # Parquet's deflate-based codec, named as Parquet names it
    choices = COMPRESSIONS[fmt]
    if name not in choices:
        raise ConfigError(
            f"compression {name!r} is not available for {fmt}; choose one of {', '.join(choices)}"
        )
    return name, choices[name]


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


def iter_rows(fmt: str, fo: IO[bytes]) -> Iterator[dict[str, Any]]:
    """The rows of one data file, streamed block by block (row group for Parquet)."""
    if fmt == "avro":
        from fastavro import reader

        yield from reader(fo)  # type: ignore[misc]
    elif fmt == "parquet":
        pq = import_parquet()
        for batch in pq.ParquetFile(fo).iter_batches(batch_size=4096):
            yield from batch.to_pylist()
    else:
        raise ArchiveError(f"unknown archive format {fmt!r}")


def import_parquet() -> Any:
    """``pyarrow.parquet``, or ConfigError naming the extra to install."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "the Parquet archive format needs pyarrow: pip install 'flarestream[parquet]'"
        ) from None
    return pq


def file_digest(path: str) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a local file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fo:
        while chunk := fo.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@lru_cache(maxsize=1)
def _parsed_avro_schema() -> Any:
    from fastavro import parse_schema

    return parse_schema(dict(ARCHIVE_SCHEMA))


class FileWriter(ABC):
    """Streams rows into one local file; memory held is one block or row group."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fo: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed by finish/abort

    @abstractmethod
    def append(self, row: Mapping[str, Any], size: int) -> None:
        """Add one row (``size``: its :func:`row_size`)."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Bytes the file will have, roughly (exact up to the block being filled)."""

    @abstractmethod
    def _complete(self) -> None:
        """Write what is buffered and the format's trailer."""

    def finish(self) -> None:
        """Complete the file and make it durable on the local disk (fsync)."""
        self._complete()
        self._fo.flush()
        os.fsync(self._fo.fileno())
        self._fo.close()

    def abort(self) -> None:
        """Close without completing (the file is then garbage)."""
        self._fo.close()


class AvroFileWriter(FileWriter):
    """An Avro object container file written block by block with fastavro."""

    def __init__(self, path: str, codec: str, metadata: Mapping[str, str]) -> None:
        from fastavro.write import Writer

        super().__init__(path)
        self._writer = Writer(self._fo, _parsed_avro_schema(), codec=codec, metadata=dict(metadata))
        self._on_disk = self._fo.tell()
        self._pending = 0  # uncompressed bytes of the block being filled

    def append(self, row: Mapping[str, Any], size: int) -> None:
        self._writer.write(dict(row) if not isinstance(row, dict) else row)
        pos = self._fo.tell()
        if pos != self._on_disk:  # fastavro wrote out a block, this row included
            self._on_disk, self._pending = pos, 0
        else:
            self._pending += size

    @property
    def size(self) -> int:
        return self._on_disk + self._pending

    def _complete(self) -> None:
        self._writer.flush()


class ParquetFileWriter(FileWriter):
    """A Parquet file written one row group at a time with pyarrow."""

    def __init__(self, path: str, codec: str, metadata: Mapping[str, str]) -> None:
        pq = import_parquet()
        import pyarrow as pa

        super().__init__(path)
        self._table = pa.Table
        self._schema = arrow_schema(metadata)
        self._writer = pq.ParquetWriter(self._fo, self._schema, compression=codec)
        self._rows: list[Mapping[str, Any]] = []
        self._buffered = 0

    def append(self, row: Mapping[str, Any], size: int) -> None:
        self._rows.append(row)
        self._buffered += size
        if len(self._rows) >= _ROW_GROUP_ROWS or self._buffered >= _ROW_GROUP_BYTES:
            self._write_group()

    def _write_group(self) -> None:
        if self._rows:
            self._writer.write_table(self._table.from_pylist(self._rows, schema=self._schema))
            self._rows, self._buffered = [], 0

    @property
    def size(self) -> int:
        return self._fo.tell() + self._buffered

    def _complete(self) -> None:
        self._write_group()
        self._writer.close()

    def abort(self) -> None:
        self._rows = []
        super().abort()


def arrow_schema(metadata: Mapping[str, str] | None = None) -> Any:
    """The Arrow schema of :data:`ARCHIVE_SCHEMA` (the Avro schema JSON in its metadata)."""
    import pyarrow as pa

    kinds = {"string": pa.string(), "int": pa.int32(), "long": pa.int64(), "bytes": pa.binary()}
    header = pa.struct(
        [pa.field("key", pa.string(), nullable=False), pa.field("value", pa.binary())]
    )
    fields = []
    for f in ARCHIVE_SCHEMA["fields"]:
        if f["name"] == "headers":  # the one nested field: an array of Header records
            fields.append(pa.field("headers", pa.list_(header), nullable=False))
            continue
        nullable = isinstance(f["type"], list)
        kind = f["type"][1] if nullable else f["type"]
        fields.append(pa.field(f["name"], kinds[kind], nullable=nullable))
    meta = {**(metadata or {}), "flarestream.archive.schema": json.dumps(ARCHIVE_SCHEMA)}
    return pa.schema(fields, metadata=meta)


def open_writer(fmt: str, codec: str, path: str, metadata: Mapping[str, str]) -> FileWriter:
    if fmt == "parquet":
        return ParquetFileWriter(path, codec, metadata)
    return AvroFileWriter(path, codec, metadata)


def check_codec(fmt: str, codec: str) -> None:
    """ConfigError naming what to install when the codec's library is missing."""
    if fmt == "parquet":
        import pyarrow as pa

        import_parquet()
        if codec != "none" and not pa.Codec.is_available(codec):
            raise ConfigError(f"this pyarrow build lacks the {codec} codec; choose another")
        return
    from fastavro.write import Writer

    try:
        Writer(io.BytesIO(), _parsed_avro_schema(), codec=codec).flush()
    except ValueError as exc:
        need = _CODEC_PACKAGES.get(codec, "its library")
        raise ConfigError(f"Avro codec {codec!r} is unavailable ({exc}); install {need}") from None
