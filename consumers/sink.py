"""The sink contract: what a sink implements so the consumer loop can drive it.

Data flows one way: the loop polls Kafka, decodes each message into a
:class:`Delivered` (record + Kafka coordinates + original bytes), hands batches to
:meth:`Sink.write`, and on its flush schedule calls :meth:`Sink.flush`, then
commits exactly the offsets that flush reports durable. Sinks never touch the
consumer and never commit.

Promises a sink makes:

- ``write`` may buffer; whatever it buffers is bounded (the loop flushes at least
  every ``flush_records`` records and every ``flush_interval_s`` seconds).
- After ``flush`` returns, every record written so far (or, when ``flush`` returns
  positions, every record below them) survives a ``kill -9``.
- Writes are idempotent on (topic, partition, offset) or on the record id: the
  loop may hand a record again after a crash (it resumes from the last commit),
  and the sink must not show it twice.
- A record the sink cannot take (an unsafe site name, a value the backend
  refuses) is returned from ``write`` as a :class:`Rejection`; the loop sends it
  to the dead-letter topic and goes on. Anything else a sink raises stops the
  loop without committing what was not flushed.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from flarestream.schemas.record import Record

TopicPartition = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True, slots=True)
class Delivered:
    """One decoded record and where it came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # the Kafka message timestamp
    raw: bytes  # the message value exactly as read (the archive keeps it)
    record: Record
    key: bytes | None = None  # the message key (the site, as the sender wrote it)
    headers: tuple[tuple[str, bytes | None], ...] = ()  # the message headers, if any

    @property
    def position(self) -> TopicPartition:
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record the sink refused, and why (goes to the dead-letter topic)."""

    delivered: Delivered
    reason: str


class Sink(ABC):
    """Base class of every sink. Subclasses set ``name`` and implement ``write`` and
    ``flush``; the other methods have safe defaults.

    A sink is registered under the entry point group ``flarestream.sinks``
    (``name = "package.module:Class"``); ``flarestream sink NAME`` finds it there.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def open(self) -> None:  # noqa: B027 - an optional hook
        """Called once before the first write: create directories, connect.
        Raising here stops the loop with the error (never silently)."""

    @abstractmethod
    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        """Take a batch (in offset order per partition); return the refused ones."""

    @abstractmethod
    def flush(self) -> Mapping[TopicPartition, int] | None:
        """Make what was written durable. Return None when everything written is
        durable, or the next offset to commit per partition when only part is
        (e.g. an archive file still open). Must be safe to call when idle."""

    def finish(self) -> None:  # noqa: B027 - an optional hook
        """Complete everything written so far (e.g. close open files), so that the
        next :meth:`flush` reports all of it durable. Called before the last commit
        when the loop stops and before committing partitions being revoked."""

    def drop(self, partitions: Iterable[TopicPartition]) -> None:  # noqa: B027
        """Partitions were lost (not revoked cleanly): forget anything unflushed
        from them; they will be read again by whoever owns them now."""

    def close(self) -> None:  # noqa: B027
        """Release resources. Called after the final finish, flush and commit, and
        also when the loop stops on an error (then nothing more is committed)."""

    # -- command line ----------------------------------------------------------
    @classmethod  # noqa: B027 - an optional hook
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this sink's options to ``flarestream sink NAME``."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sink:
        """Build the sink from parsed options (default: no options)."""
        return cls()

    def describe(self) -> Mapping[str, Any]:
        """What and where this sink writes, for logs and summaries (no secrets)."""
        return {"sink": self.name}
