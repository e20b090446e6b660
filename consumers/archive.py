"""The archive sink: every record, byte for byte, in immutable files.

Files are Avro object containers (default; codec ``deflate``, or ``--compression``)
or Parquet (``--format parquet``), laid out as ``<root>/<job_id>/<site>/<YYYY-MM-DD>/
<topic>+<partition>+<first offset>.<format>`` with a ``.manifest.json`` beside each
(see :mod:`flarestream.consumers.archive_files`; the date is the UTC date of the
sender's timestamp). Files are started and completed by
:mod:`flarestream.consumers.archive_open_file`; what a directory already holds is
read by :mod:`flarestream.consumers.archive_index`. The root is a directory or any
fsspec URL (``s3://bucket/p``).

Guarantees:

- A file is streamed to a temporary name and appears under its final name only
  when complete (closed by ``--max-records``, ``--max-bytes``, ``--max-age`` also
  when idle, by the open-file limit, or at ``close``); its manifest follows it.
- ``flush`` returns, per partition, the first offset of its oldest open file (or
  the offset after the last record seen): the loop commits no record that is not
  in a complete file.
- Exactly once across restarts: when the sink first writes to a directory it reads
  the manifests of the files there for the same partition and skips records they
  hold; records of files left open by a crash are written again under the same
  names (the first offset), replacing any incomplete file.
- Memory: one Avro block or Parquet row group per open file, and at most
  ``--max-open-files`` open files (the least recently used is completed first).
- A site or job name that would leave or hide in the root, or a sender timestamp
  that is no date, is returned as a Rejection (dead-letter topic).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flarestream.consumers.archive_files import (
    FORMATS,
    check_codec,
    resolve_compression,
    row_size,
    to_row,
    unsafe_name_reason,
    utc_date,
)
from flarestream.consumers.archive_index import FileKey, KnownFiles, scan_partition
from flarestream.consumers.archive_open_file import OpenFile, complete_file, start_file
from flarestream.consumers.archive_reader import Store, parse_storage_options, redacted
from flarestream.consumers.sink import Delivered, Rejection, Sink, TopicPartition
from flarestream.errors import ConfigError

_CACHE_LIMIT = 4096


class ArchiveSink(Sink):
    """Writes every record to immutable Avro/Parquet files with manifests."""

    name = "archive"
    description = "every record byte for byte in Avro/Parquet files with manifests (dir or URL)"

    def __init__(
        self,
        root: str | os.PathLike[str] = "archive",
        *,
        format: str = "avro",
        compression: str | None = None,
        max_records: int = 100_000,
        max_bytes: int = 64 << 20,
        max_age_s: float = 60.0,
        max_open_files: int = 32,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.compression, self._codec = resolve_compression(format, compression)
        if max_records < 1 or max_bytes < 1 or max_open_files < 1:
            raise ConfigError("max_records, max_bytes and max_open_files must be >= 1")
        if max_age_s <= 0:
            raise ConfigError(f"max_age_s must be > 0 seconds, got {max_age_s}")
        self.root, self.format = os.fspath(root), format
        self.max_records, self.max_bytes = max_records, max_bytes
        self.max_age_s, self.max_open_files = max_age_s, max_open_files
        self.storage_options = dict(storage_options or {})
        self._store: Store | None = None
        self._open: OrderedDict[FileKey, OpenFile] = OrderedDict()  # least recent first
        self._known: dict[FileKey, KnownFiles] = {}
        self._next: dict[TopicPartition, int] = {}  # offset after the highest record seen
        self._last: dict[TopicPartition, int] = {}  # offset of the latest record seen
        self._names: dict[tuple[str, str], str | None] = {}
        self._days: dict[int, str] = {}
        self._broken = False

    # -- the sink contract -----------------------------------------------------
    def open(self) -> None:
        """Check the codec's library and reach the root (ConfigError naming the fix)."""
        if self._store is None:
            check_codec(self.format, self._codec)
            self._store = Store(self.root, self.storage_options)
            if self._store.is_local:
                os.makedirs(self._store.root, exist_ok=True)

    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        self.open()
        rejections = []
        try:
            for d in batch:
                refused = self._write_one(d)
                if refused is not None:
                    rejections.append(Rejection(d, refused))
        except BaseException:
            self._broken = True  # a half-written file must not be completed by close()
            raise
        return rejections

    def flush(self) -> Mapping[TopicPartition, int]:
        """Complete files older than max-age; return the offsets safe to commit."""
        now = time.monotonic()
        for key in [k for k, f in self._open.items() if now - f.opened_at >= self.max_age_s]:
            self._finish(key)
        safe = dict(self._next)
        for f in self._open.values():
            pos = (f.key[1], f.key[2])
            safe[pos] = min(safe[pos], f.first_offset)
        for key, known in self._known.items():
            known.prune(safe.get((key[1], key[2]), -1))
        return safe

    def finish(self) -> None:
        """Complete every open file, so the next flush reports all records durable."""
        while self._open and not self._broken:
            self._finish(next(iter(self._open)))

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Discard open files of lost partitions (their records come again elsewhere)."""
        lost = set(partitions)
        for key in [k for k in self._open if (k[1], k[2]) in lost]:
            self._abort(key)
        for key in [k for k in self._known if (k[1], k[2]) in lost]:
            del self._known[key]
        for pos in lost:
            self._next.pop(pos, None)
            self._last.pop(pos, None)

    def close(self) -> None:
        """Complete every open file (discard them if a write failed); release the store."""
        if self._store is None:
            return
        try:
            self.finish()
        finally:
            for key in list(self._open):
                self._abort(key)
            self._store.close()
            self._store = None

    def pending_files(self) -> list[str]:
        """Paths (below the root) of files still open: not complete, not committed."""
        return [f.rel for f in self._open.values()]

    # -- one record ------------------------------------------------------------
    def _write_one(self, d: Delivered) -> str | None:
        pos = (d.topic, d.partition)
        if d.offset <= self._last.get(pos, -1):  # delivered again: re-read what is complete
            for key in [k for k in self._known if (k[1], k[2]) == pos]:
                del self._known[key]
        self._last[pos] = d.offset
        self._next[pos] = max(self._next.get(pos, 0), d.offset + 1)
        r = d.record
        reason = self._unsafe("job", r.job_id) or self._unsafe("site", r.site)
        if reason is not None:
            return reason
        day = self._date(r.timestamp_ms)
        if day is None:
            return f"sender timestamp {r.timestamp_ms} ms is not a date in years 1-9999"
        key = (f"{r.job_id}/{r.site}/{day}", d.topic, d.partition)
        f = self._open.get(key)
        if f is not None and f.first_offset <= d.offset <= f.last_offset:
            return None  # already in the open file
        known = self._known.get(key)
        if known is None:
            known = self._load(key, d.offset)
        covered = known.covers(d.offset)
        # a file holds consecutive records: a covered record after it, or an unarchived
        # one before it (delivered again), ends it
        if f is not None and (d.offset > f.last_offset if covered else d.offset < f.first_offset):
            self._finish(key)
            f = None
        if covered:
            return None  # already in a complete file
        if f is None:
            f = self._start(key, d.offset)
        row = to_row(d)
        f.writer.append(row, row_size(row))
        f.last_offset, f.count = d.offset, f.count + 1
        f.min_ts, f.max_ts = min(f.min_ts, d.timestamp_ms), max(f.max_ts, d.timestamp_ms)
        self._open.move_to_end(key)
        if f.count >= self.max_records or f.writer.size >= self.max_bytes:
            self._finish(key)
        return None

    def _unsafe(self, kind: str, name: str) -> str | None:
        try:
            return self._names[(kind, name)]
        except KeyError:
            if len(self._names) >= _CACHE_LIMIT:
                self._names.clear()
            reason = self._names[(kind, name)] = unsafe_name_reason(kind, name)
            return reason

    def _date(self, timestamp_ms: int) -> str | None:
        day = timestamp_ms // 86_400_000
        text = self._days.get(day)
        if text is None:
            try:
                text = utc_date(timestamp_ms)
            except (ValueError, OverflowError):
                return None
            if len(self._days) >= _CACHE_LIMIT:
                self._days.clear()
            self._days[day] = text
        return text

    # -- files -----------------------------------------------------------------
    def _load(self, key: FileKey, offset: int) -> KnownFiles:
        """What a directory already holds for the partition (see
        :func:`~flarestream.consumers.archive_index.scan_partition`)."""
        assert self._store is not None
        mine = {f.rel.rsplit("/", 1)[-1] for f in self._open.values() if f.key == key}
        known = self._known[key] = scan_partition(self._store, key, offset, mine)
        return known

    def _start(self, key: FileKey, offset: int) -> OpenFile:
        assert self._store is not None
        if len(self._open) >= self.max_open_files:
            self._finish(next(iter(self._open)))
        f = start_file(self._store, key, offset, self.format, self._codec)
        self._open[key] = f
        return f

    def _finish(self, key: FileKey) -> None:
        """Complete a file: data in place first, then its manifest."""
        assert self._store is not None
        f = self._open.pop(key)
        complete_file(self._store, f, self.format, self.compression)
        name = f.rel.rsplit("/", 1)[-1]
        known = self._known.setdefault(key, KnownFiles())
        known.add(f.first_offset, f.last_offset)
        for first in [o for o in known.orphans if f.first_offset <= o <= f.last_offset]:
            orphan = known.orphans.pop(first)
            if orphan != name:  # an incomplete file whose records this one now holds
                self._store.remove(f"{key[0]}/{orphan}")

    def _abort(self, key: FileKey) -> None:
        assert self._store is not None
        f = self._open.pop(key)
        f.writer.abort()
        self._store.discard(f.staging)

    # -- command line ----------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("archive")
        g.add_argument(
            "--root",
            default="archive",
            help="directory or fsspec URL, e.g. s3://bucket/prefix (%(default)s)",
        )
        g.add_argument("--format", choices=FORMATS, default="avro", help="(%(default)s)")
        g.add_argument(
            "--compression",
            default=None,
            help="avro: none|deflate|zstd|snappy|bzip2|xz|lz4 (deflate); "
            "parquet: none|snappy|gzip|zstd|lz4|brotli (zstd)",
        )
        for flag, kind, default, text in (
            ("--max-records", int, 100_000, "records per file"),
            ("--max-bytes", int, 64 << 20, "bytes per file, roughly"),
            ("--max-age", float, 60.0, "seconds a file stays open, also when idle"),
            ("--max-open-files", int, 32, "open files at most (least recently used completes)"),
        ):
            g.add_argument(flag, type=kind, default=default, help=f"{text} (%(default)s)")
        g.add_argument(
            "--storage-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="fsspec option, repeatable; a JSON VALUE is parsed "
            "(endpoint_url=http://..., client_kwargs={...})",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ArchiveSink:
        return cls(
            args.root,
            format=args.format,
            compression=args.compression,
            max_records=args.max_records,
            max_bytes=args.max_bytes,
            max_age_s=args.max_age,
            max_open_files=args.max_open_files,
            storage_options=parse_storage_options(args.storage_option),
        )

    def describe(self) -> Mapping[str, Any]:
        root, options = redacted(self.root, self.storage_options)
        limits = ("compression", "max_records", "max_bytes", "max_age_s", "max_open_files")
        about = {k: getattr(self, k) for k in limits}
        return {
            "sink": self.name,
            "root": root,
            "format": self.format,
            **about,
            "storage_options": options,
        }
