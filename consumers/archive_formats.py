"""The archive's two file formats: Avro object containers and Parquet.

Writers stream rows of :data:`~flarestream.consumers.archive_rows.ARCHIVE_SCHEMA`
into one local file, holding one Avro block or Parquet row group in memory;
:func:`iter_rows` reads them back block by block. fastavro and pyarrow are imported
only when a file is written, read or a codec checked, and a missing library is a
ConfigError naming what to install.
"""

from __future__ import annotations

import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import IO, Any

from flarestream.consumers.archive_rows import ARCHIVE_SCHEMA, ArchiveError
from flarestream.errors import ConfigError

FORMATS = ("avro", "parquet")
DEFAULT_COMPRESSION = {"avro": "deflate", "parquet": "zstd"}
# user-facing name -> the backend's name, per format
COMPRESSIONS: Mapping[str, Mapping[str, str]] = {
    "avro": {"none": "null", "deflate": "deflate", "zstd": "zstandard", "snappy": "snappy",
             "bzip2": "bzip2", "xz": "xz", "lz4": "lz4"},
    "parquet": {"none": "none", "snappy": "snappy", "deflate": "gzip", "gzip": "gzip",
                "zstd": "zstd", "lz4": "lz4", "brotli": "brotli"},
}  # fmt: skip
_CODEC_PACKAGES = {"zstandard": "backports.zstd (Python < 3.14; 'flarestream[archive]')",
                   "snappy": "cramjam", "lz4": "lz4"}  # fmt: skip
_ROW_GROUP_ROWS = 8192  # Parquet rows buffered in memory before a row group is written
_ROW_GROUP_BYTES = 4 << 20


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
