"""Reads the archive sink's files as if they were the topic, for replay and audit.

Guarantees: only complete files (with a manifest) are read; per partition, the
files are merged by offset (:func:`merge_rows`, few open at once), so records come
in offset order, inside the range and filter asked for; with ``verify``, every
selected file's size and sha256 are checked against its manifest before anything
is read.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from flarestream.consumers.archive_files import row_headers
from flarestream.consumers.archive_reader import ArchivedFile, ArchiveReader
from flarestream.consumers.replay_source import Batch, Item, RecordFilter, Source, decode_item
from flarestream.consumers.topic_range import RangeSpec
from flarestream.errors import ConfigError, FlarestreamError
from flarestream.schemas.codec import Codec, default_codec

Row = dict[str, Any]


def merge_rows(
    reader: ArchiveReader,
    files: Iterable[ArchivedFile],
    on_error: Callable[[ArchivedFile, Exception], None] | None = None,
) -> Iterator[tuple[ArchivedFile, Row]]:
    """Rows of ``files`` partition by partition, in offset order within each: the
    files of a partition are opened when the merge reaches their first offset, so
    only files whose offsets interleave are open at once. A file that cannot be read
    is passed to ``on_error`` (its remaining rows skipped), or raises ArchiveError."""
    by_part: dict[tuple[str, int], list[ArchivedFile]] = {}
    for f in files:
        by_part.setdefault((f.topic, f.partition), []).append(f)
    for key in sorted(by_part):
        pending = deque(sorted(by_part[key], key=lambda f: (f.first_offset, f.path)))
        heap: list[tuple[int, int, ArchivedFile, Row, Iterator[Row]]] = []
        while heap or pending:
            while pending and (not heap or pending[0].first_offset <= heap[0][0]):
                f = pending.popleft()
                _push(heap, f, reader.rows(f), on_error)
            if heap:
                _, _, f, row, rows = heapq.heappop(heap)
                yield f, row
                _push(heap, f, rows, on_error)


_tie = itertools.count()  # orders heap entries with equal offsets without comparing files


def _push(
    heap: list[tuple[int, int, ArchivedFile, Row, Iterator[Row]]],
    f: ArchivedFile,
    rows: Iterator[Row],
    on_error: Callable[[ArchivedFile, Exception], None] | None,
) -> None:
    try:
        row = next(rows)
    except StopIteration:
        return
    except Exception as exc:  # a corrupt file: fastavro and pyarrow raise many types
        _file_error(f, exc, on_error)
        return
    heapq.heappush(heap, (row["offset"], next(_tie), f, row, rows))


def _file_error(
    f: ArchivedFile, exc: Exception, on_error: Callable[[ArchivedFile, Exception], None] | None
) -> None:
    if on_error is None:
        raise FlarestreamError(
            f"cannot read archive file {f.path}: {type(exc).__name__}: {exc}; run "
            "`flarestream audit --archive ROOT` to see what else is wrong"
        ) from None
    on_error(f, exc)


def open_archive(
    root: str, storage_options: Mapping[str, Any] | None = None, codec: Codec | None = None
) -> ArchiveReader:
    """An :class:`ArchiveReader`; ConfigError when a local root does not exist."""
    reader = ArchiveReader(root, storage_options, codec)
    if reader.store.is_local and not os.path.isdir(reader.store.root):
        reader.close()
        raise ConfigError(f"archive root {root!r} is not a directory; check --archive")
    return reader


def file_selected(
    f: ArchivedFile, spec: RangeSpec, flt: RecordFilter, topic: str | None = None
) -> bool:
    """Whether a complete file may hold records of the range (by its manifest)."""
    m = f.manifest
    if m is None:
        return False
    return (
        (topic is None or f.topic == topic)
        and (spec.partitions is None or f.partition in spec.partitions)
        and (not flt.jobs or f.job_id in flt.jobs)
        and (not flt.sites or f.site in flt.sites)
        and (spec.from_offset is None or m.last_offset >= spec.from_offset)
        and (spec.to_offset is None or m.first_offset < spec.to_offset)
        and (spec.from_time_ms is None or m.max_kafka_timestamp_ms >= spec.from_time_ms)
        and (spec.to_time_ms is None or m.min_kafka_timestamp_ms < spec.to_time_ms)
    )


def archived_records(files: Iterable[ArchivedFile]) -> int:
    """Records the manifests of ``files`` count (a file without one counts none)."""
    return sum(f.manifest.record_count for f in files if f.manifest is not None)


def row_item(
    f: ArchivedFile, row: Row, spec: RangeSpec, flt: RecordFilter, codec: Codec
) -> Item | None:
    """An archive row as the consumer loop would have delivered it (the key is the
    site, as the sender keys), or None when the range or the filter leaves it out."""
    offset, ts = row["offset"], row["kafka_timestamp_ms"]
    if not (spec.offset_ok(offset) and spec.time_ok(ts)):
        return None
    return decode_item(
        row["topic"],
        row["partition"],
        offset,
        ts,
        bytes(row["message"]),
        row["site"].encode("utf-8"),
        row_headers(row),
        codec=codec,
        record_filter=flt,
        file=f.path,
    )


class ArchiveSource(Source):
    """Reads the archive sink's files as if they were the topic (see the module doc).

    The key of each message is its site (what the sender keys by; the archive does
    not keep keys); its headers are the archived ones (none in files written before
    the archive kept headers). ``verify`` checks each selected file's size and sha256
    against its manifest before anything is replayed."""

    def __init__(
        self,
        root: str,
        storage_options: Mapping[str, Any] | None = None,
        spec: RangeSpec | None = None,
        record_filter: RecordFilter | None = None,
        *,
        topic: str | None = None,
        verify: bool = True,
        codec: Codec | None = None,
        batch_size: int = 2000,
    ) -> None:
        self.spec = spec or RangeSpec()
        self.filter = record_filter or RecordFilter()
        self.topic = topic
        self.codec = codec or default_codec()
        self.batch_size = batch_size
        self.reader = open_archive(root, storage_options, self.codec)
        try:
            self.files = [
                f for f in self._listing() if file_selected(f, self.spec, self.filter, topic)
            ]
            if verify:
                problems = [p for f in self.files for p in self.reader.verify(f, deep=False)]
                if problems:
                    raise FlarestreamError(
                        f"{len(problems)} archive problem(s), nothing replayed: "
                        + "; ".join(problems[:5])
                        + " (run `flarestream audit --archive ...`; --no-verify replays anyway)"
                    )
        except BaseException:
            self.reader.close()
            raise

    def _listing(self) -> Iterator[ArchivedFile]:
        jobs, sites = sorted(self.filter.jobs), sorted(self.filter.sites)
        # a single job (and site) lists only below its directory
        return self.reader.files(
            job_id=jobs[0] if len(jobs) == 1 else None, site=sites[0] if len(sites) == 1 else None
        )

    @property
    def total(self) -> int:
        return archived_records(self.files)

    def batches(self) -> Iterator[Batch]:
        items: list[Item] = []
        read = 0
        for f, row in merge_rows(self.reader, self.files):
            read += 1
            item = row_item(f, row, self.spec, self.filter, self.codec)
            if item is not None:
                items.append(item)
            if read >= self.batch_size:
                yield Batch(items, read)
                items, read = [], 0
        if read:
            yield Batch(items, read)

    def close(self) -> None:
        self.reader.close()
