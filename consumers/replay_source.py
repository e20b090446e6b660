"""What a replay source yields, and what every source (topic or archive) shares.

A source yields :class:`Batch` es of items in read order: a
:class:`~flarestream.consumers.sink.Delivered` record, or an :class:`Undecodable`
message (never handed to a sink). :func:`decode_item` turns one message into an item
the same way for both sources, so a record replayed from the archive is exactly the
one the topic would have delivered.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar, Union

from flarestream.consumers.sink import Delivered
from flarestream.errors import DecodeError
from flarestream.schemas.codec import Codec
from flarestream.schemas.record import Record


@dataclass(frozen=True)
class Undecodable:
    """A message that is not a flarestream record, and where it was found."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    raw: bytes
    reason: str
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    file: str | None = None  # the archive file it came from, if any

    @property
    def where(self) -> str:
        at = f"{self.topic}[{self.partition}]@{self.offset}"
        return f"{self.file}: {at}" if self.file else at


Item = Union[Delivered, Undecodable]  # noqa: UP007 - a runtime alias on Python 3.10


@dataclass
class Batch:
    """Items in read order, and how many messages were read to get them (filtered
    ones included: that is the progress made)."""

    items: list[Item]
    read: int


@dataclass(frozen=True)
class RecordFilter:
    """Keep records of these sites, jobs and tags (an empty set keeps all)."""

    sites: frozenset[str] = frozenset()
    jobs: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.sites or self.jobs or self.tags)

    def matches(self, r: Record) -> bool:
        return (
            (not self.sites or r.site in self.sites)
            and (not self.jobs or r.job_id in self.jobs)
            and (not self.tags or r.tag in self.tags)
        )


def decode_item(
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    raw: bytes,
    key: bytes | None,
    headers: tuple[tuple[str, bytes | None], ...],
    *,
    codec: Codec,
    record_filter: RecordFilter,
    file: str | None = None,
) -> Item | None:
    """A message inside the range as the consumer loop would deliver it: an
    :class:`Undecodable` when ``codec`` cannot read it, None when ``record_filter``
    leaves the record out. ``file`` names the archive file it came from, if any."""
    try:
        record = codec.decode(raw)
    except DecodeError as exc:
        return Undecodable(
            topic, partition, offset, timestamp_ms, raw, str(exc), key, headers, file
        )
    if not record_filter.matches(record):
        return None
    return Delivered(topic, partition, offset, timestamp_ms, raw, record, key, headers)


SourceT = TypeVar("SourceT", bound="Source")


class Source(ABC):
    """A range to replay or audit: its size, its batches, and the resources it holds
    (released by :meth:`close`; use as a context manager)."""

    @property
    @abstractmethod
    def total(self) -> int:
        """Messages in the range (what progress counts towards)."""

    @abstractmethod
    def batches(self) -> Iterator[Batch]:
        """Every message of the range once, in offset order per partition."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self: SourceT) -> SourceT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
