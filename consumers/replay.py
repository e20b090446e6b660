"""Replay: re-drive a range of the topic, or an archive, into any sink.

Sources (:class:`~flarestream.consumers.topic_source.TopicSource`,
:class:`~flarestream.consumers.archive_source.ArchiveSource`) yield batches of
:class:`~flarestream.consumers.sink.Delivered` (and
:class:`~flarestream.consumers.replay_source.Undecodable` messages); :func:`replay`
feeds them to any :class:`~flarestream.consumers.sink.Sink` the way the live consumer
loop does (``open``, ``write``, ``flush``, ``close``). Guarantees:

- :class:`TopicSource` reads with a throwaway consumer group
  (``flarestream.replay.<uuid>``), assigns partitions explicitly, never subscribes
  and never commits: no live group's offsets move.
- The range is fixed when the source opens: the high watermarks then (or the
  resolved ``to`` bounds) end it; records produced later are not replayed.
- Offsets are ``[from, to)``. Times are ``[from, to)`` in Kafka message time (ms):
  resolved to offsets with ``offsets_for_times`` (the first offset whose timestamp
  is at or after the bound) and then checked per record, so only records inside
  the window are replayed.
- Per partition, records reach the sink in offset order; from an archive the
  files of a partition are merged by offset (few open at once).
- Undecodable messages never reach a sink: :func:`replay` counts them, sends them
  to a dead-letter topic when given one, or copies them byte for byte into a
  target that takes raw messages (a topic copy without record filters).
- With ``keys`` (:class:`~flarestream.signing.PublicKeys`), :func:`replay` passes
  on only records signed by the site they claim; the others are refused as the
  live loop refuses them (counted, and sent to the dead-letter topic when given).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from flarestream.consumers.archive_source import ArchiveSource
from flarestream.consumers.deadletter import DeadLetters
from flarestream.consumers.progress import Progress
from flarestream.consumers.replay_source import Batch, RecordFilter, Undecodable
from flarestream.consumers.sink import Delivered, Rejection, Sink
from flarestream.consumers.topic_range import RangeSpec
from flarestream.consumers.topic_source import TopicSource
from flarestream.signing import PublicKeys, Verdict

# the sources and the range, importable from here as documented in docs/replay-and-audit.md
__all__ = [
    "ArchiveSource",
    "RangeSpec",
    "RawTarget",
    "RecordFilter",
    "ReplayStats",
    "TopicSource",
    "replay",
]

log = logging.getLogger("flarestream.consumers.replay")


@runtime_checkable
class RawTarget(Protocol):
    """A target that can also take a message it cannot decode (a topic copy)."""

    def write_raw(self, message: Undecodable) -> None: ...


@dataclass
class ReplayStats:
    read: int = 0  # messages read from the source (filtered ones included)
    written: int = 0  # records the sink took
    rejected: int = 0  # records the sink refused
    undecodable: int = 0
    copied_raw: int = 0  # undecodable messages copied byte for byte
    flushes: int = 0
    first_undecodable: str | None = None
    first_rejection: str | None = None


def replay(
    batches: Iterable[Batch],
    sink: Sink,
    *,
    progress: Progress | None = None,
    dead_letters: DeadLetters | None = None,
    copy_raw: bool = False,
    flush_records: int = 10_000,
    keys: PublicKeys | None = None,
) -> ReplayStats:
    """Feed ``batches`` to ``sink``: ``open``, ``write`` per run of records, ``flush``
    every ``flush_records`` and at the end, ``close`` always (also after an error,
    as the live loop does). Rejected records and undecodable messages go to
    ``dead_letters`` when given; undecodable ones are copied with ``write_raw``
    instead when ``copy_raw`` and the sink is a :class:`RawTarget`. With ``keys``,
    records whose signature does not verify for their site are refused likewise."""
    stats = ReplayStats()
    pending = 0
    sink.open()
    try:
        for batch in batches:
            run: list[Delivered] = []
            for item in batch.items:
                if isinstance(item, Delivered):
                    site, raw, headers = item.record.site, item.raw, item.headers
                    if keys is None or (v := keys.check(site, raw, headers)) is Verdict.VERIFIED:
                        run.append(item)
                    else:  # refused like the live loop: it never reaches the sink
                        why = keys.explain(v, site, raw, headers)
                        _refuse(sink, Rejection(item, why), stats, dead_letters)
                    continue
                pending += _write(sink, run, stats, dead_letters)
                run = []
                _undecodable(sink, item, stats, dead_letters, copy_raw)
            pending += _write(sink, run, stats, dead_letters)
            stats.read += batch.read
            if progress is not None:
                progress.advance(batch.read)
            if pending >= flush_records:
                _flush(sink, stats, dead_letters)
                pending = 0
        _flush(sink, stats, dead_letters)
    finally:
        sink.close()
    return stats


def _write(sink: Sink, run: list[Delivered], stats: ReplayStats, dead: DeadLetters | None) -> int:
    if not run:
        return 0
    rejections = sink.write(run)
    stats.written += len(run) - len(rejections)
    for r in rejections:
        _refuse(sink, r, stats, dead)
    return len(run)


def _refuse(sink: Sink, r: Rejection, stats: ReplayStats, dead: DeadLetters | None) -> None:
    d = r.delivered
    stats.rejected += 1
    if stats.first_rejection is None:
        stats.first_rejection = f"{d.topic}[{d.partition}]@{d.offset}: {r.reason}"
    if dead is not None:
        dead.send(d.topic, d.partition, d.offset, d.raw, d.key, d.headers, r.reason)
    else:
        log.warning("%s refused %s[%d]@%d: %s", sink.name, d.topic, d.partition, d.offset, r.reason)


def _undecodable(
    sink: Sink, u: Undecodable, stats: ReplayStats, dead: DeadLetters | None, copy_raw: bool
) -> None:
    stats.undecodable += 1
    if stats.first_undecodable is None:
        stats.first_undecodable = f"{u.where}: {u.reason}"
    if copy_raw and isinstance(sink, RawTarget):
        sink.write_raw(u)
        stats.copied_raw += 1
    elif dead is not None:
        dead.send(
            u.topic, u.partition, u.offset, u.raw, u.key, u.headers, f"undecodable: {u.reason}"
        )


def _flush(sink: Sink, stats: ReplayStats, dead: DeadLetters | None) -> None:
    sink.flush()
    if dead is not None:
        dead.flush()
    stats.flushes += 1
