"""Reaching and reading an archive: a local directory or any fsspec URL.

:class:`ArchiveReader` is the public API later tools build on (replay, audit)::

    with ArchiveReader("s3://bucket/prefix", {"endpoint_url": ...}) as archive:
        for file in archive.files(job_id="job-1"):      # complete files, by path
            assert not archive.verify(file)              # sha256, size, rows vs manifest
            for rec in archive.records(file):            # raw bytes + coordinates + Record
                ...

Only complete files (a data file with its manifest) are read unless asked
otherwise. Files are reached through :class:`~flarestream.consumers.archive_store.Store`
(re-exported here with :func:`parse_storage_options` and :func:`redacted`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from flarestream.consumers.archive_files import (
    MANIFEST_SUFFIX,
    Manifest,
    iter_rows,
    parse_data_name,
    row_headers,
)
from flarestream.consumers.archive_store import Store, parse_storage_options, redacted
from flarestream.schemas.codec import Codec, default_codec
from flarestream.schemas.record import Record

__all__ = [  # Store, parse_storage_options and redacted: re-exported from archive_store
    "ArchiveReader",
    "ArchivedFile",
    "ArchivedRecord",
    "Store",
    "parse_storage_options",
    "redacted",
]


@dataclass(frozen=True)
class ArchivedFile:
    """One data file; ``manifest`` is None when it is incomplete."""

    path: str  # relative to the root: job/site/date/name
    job_id: str
    site: str
    date: str
    topic: str
    partition: int
    first_offset: int
    format: str
    manifest: Manifest | None

    @property
    def complete(self) -> bool:
        return self.manifest is not None


@dataclass(frozen=True)
class ArchivedRecord:
    """One archived message: Kafka coordinates, the original bytes, the decoded record."""

    topic: str
    partition: int
    offset: int
    kafka_timestamp_ms: int
    raw: bytes
    record: Record
    headers: tuple[tuple[str, bytes | None], ...] = ()  # the message headers, if archived


class ArchiveReader(AbstractContextManager["ArchiveReader"]):
    """Reads an archive written by the archive sink (see the module doc)."""

    def __init__(
        self,
        root: str | Path,
        storage_options: Mapping[str, Any] | None = None,
        codec: Codec | None = None,
    ) -> None:
        self.store = Store(root, storage_options)
        self.codec = codec or default_codec()

    def files(
        self,
        job_id: str | None = None,
        site: str | None = None,
        date: str | None = None,
        include_incomplete: bool = False,
    ) -> Iterator[ArchivedFile]:
        """Data files (sorted by path), filtered by job, site and date (``YYYY-MM-DD``).
        Raises ArchiveError for an unreadable manifest."""
        prefix = []
        for part in (job_id, site, date):  # list only below the most specific directory
            if part is None:
                break
            prefix.append(part)
        paths = list(self.store.walk("/".join(prefix)))
        present = set(paths)
        for path in paths:
            parts = path.split("/")
            name = parse_data_name(parts[-1])
            if name is None or len(parts) != 4:
                continue
            job, where, day = parts[:3]
            if (job_id or job, site or where, date or day) != (job, where, day):
                continue
            manifest = None
            if path + MANIFEST_SUFFIX in present:
                manifest = Manifest.from_json(self.store.read_bytes(path + MANIFEST_SUFFIX), path)
            if manifest is None and not include_incomplete:
                continue
            yield ArchivedFile(
                path,
                job,
                where,
                day,
                name.topic,
                name.partition,
                name.first_offset,
                name.format,
                manifest,
            )

    def rows(self, file: ArchivedFile) -> Iterator[dict[str, Any]]:
        """The archive rows of one file, as stored (see ``ARCHIVE_SCHEMA``)."""
        with self.store.open(file.path) as fo:
            yield from iter_rows(file.format, fo)

    def records(self, file: ArchivedFile) -> Iterator[ArchivedRecord]:
        """The messages of one file with their coordinates, decoded with this codec
        (DecodeError for a message whose schema the codec does not know)."""
        for row in self.rows(file):
            raw = bytes(row["message"])
            yield ArchivedRecord(
                row["topic"],
                row["partition"],
                row["offset"],
                row["kafka_timestamp_ms"],
                raw,
                self.codec.decode(raw),
                row_headers(row),
            )

    def all_records(
        self, job_id: str | None = None, site: str | None = None
    ) -> Iterator[ArchivedRecord]:
        """Every record of every complete file (filtered), file by file."""
        for file in self.files(job_id, site):
            yield from self.records(file)

    def verify(self, file: ArchivedFile, deep: bool = True) -> list[str]:
        """Problems with a file (empty list: it matches its manifest). Checks size and
        sha256; ``deep`` also reads every row and checks count, offsets and placement."""
        m = file.manifest
        if m is None:
            return [f"{file.path}: no manifest (incomplete file)"]
        problems = []
        digest, size = hashlib.sha256(), 0
        with self.store.open(file.path) as fo:
            while chunk := fo.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        if size != m.size_bytes:
            problems.append(f"{file.path}: {size} bytes, manifest says {m.size_bytes}")
        if digest.hexdigest() != m.sha256:
            problems.append(f"{file.path}: sha256 differs from the manifest")
        expected = (file.path.rsplit("/", 1)[-1], file.topic, file.partition, file.first_offset)
        if (m.file, m.topic, m.partition, m.first_offset) != expected:
            problems.append(f"{file.path}: manifest names another file ({m.file})")
        if deep and not problems:
            problems += self._check_rows(file, m)
        return problems

    def _check_rows(self, file: ArchivedFile, m: Manifest) -> list[str]:
        offsets = []
        for row in self.rows(file):
            offsets.append(row["offset"])
            where = (row["topic"], row["partition"], row["job_id"], row["site"])
            if where != (m.topic, m.partition, m.job_id, m.site):
                return [f"{file.path}: row at offset {row['offset']} belongs elsewhere {where}"]
        if len(offsets) != m.record_count:
            return [f"{file.path}: {len(offsets)} rows, manifest says {m.record_count}"]
        if offsets != sorted(set(offsets)) or (
            offsets and (offsets[0], offsets[-1]) != (m.first_offset, m.last_offset)
        ):
            return [f"{file.path}: offsets are not increasing from first to last offset"]
        return []

    def close(self) -> None:
        self.store.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
