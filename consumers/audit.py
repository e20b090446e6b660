"""Audit accounting, as pure functions and small accumulators (no Kafka, no files).

Sequence numbers count per SENDER INSTANCE (``sender_id``, from 0), so every
check is per sender and reported with the sender's job and site:

- gap: sequence numbers missing between the lowest and the highest seen (and below
  the lowest when the source is read from its very beginning, where a sender's
  first record, seq 0, must be present). Nothing is said past the highest seen:
  a sender may simply have sent more since.
- duplicate: a record id (``<sender_id>-<seq>``) seen again, at another position.
- out of order: a new sequence number lower than the previous one seen from that
  sender in the same partition, in offset order (a repeat is a duplicate instead).

Reconciliation compares two sources: by record id (per sender, the same sequence
numbers the same number of times) and by offset (:class:`OffsetLedger`: each
message of a topic range is in the archive exactly once, with the same bytes).
Memory: intervals of sequence numbers per sender; the ledger keeps 9 bytes per
offset of the range.
"""

from __future__ import annotations

import bisect
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

Interval = tuple[int, int]  # inclusive


class Location(NamedTuple):
    """Where a message was seen: Kafka coordinates, and the archive file if any."""

    topic: str
    partition: int
    offset: int
    file: str | None = None

    def __str__(self) -> str:
        at = f"{self.topic}[{self.partition}]@{self.offset}"
        return f"{at} in {self.file}" if self.file else at


class SeqSet:
    """A set of integers as sorted, disjoint, inclusive intervals, with a count of
    repeats. Adding in increasing order (the common case) is O(1)."""

    def __init__(self, items: Iterable[int] = ()) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []
        self.repeats: dict[int, int] = {}  # value -> times seen beyond the first
        for item in items:
            self.add(item)

    def add(self, n: int) -> bool:
        """Add ``n``; False (and a repeat counted) when it was already there."""
        lo, hi = self._lo, self._hi
        if hi and n == hi[-1] + 1:
            hi[-1] = n
            return True
        i = bisect.bisect_right(lo, n) - 1
        if i >= 0 and n <= hi[i]:
            self.repeats[n] = self.repeats.get(n, 0) + 1
            return False
        joins_left = i >= 0 and hi[i] == n - 1
        joins_right = i + 1 < len(lo) and lo[i + 1] == n + 1
        if joins_left and joins_right:
            hi[i] = hi[i + 1]
            del lo[i + 1], hi[i + 1]
        elif joins_left:
            hi[i] = n
        elif joins_right:
            lo[i + 1] = n
        else:
            lo.insert(i + 1, n)
            hi.insert(i + 1, n)
        return True

    def __contains__(self, n: object) -> bool:
        if not isinstance(n, int):
            return False
        i = bisect.bisect_right(self._lo, n) - 1
        return i >= 0 and n <= self._hi[i]

    def __len__(self) -> int:
        """Distinct values."""
        return sum(hi - lo + 1 for lo, hi in zip(self._lo, self._hi, strict=True))

    def count(self, n: int) -> int:
        return (1 + self.repeats.get(n, 0)) if n in self else 0

    @property
    def min(self) -> int | None:
        return self._lo[0] if self._lo else None

    @property
    def max(self) -> int | None:
        return self._hi[-1] if self._hi else None

    def intervals(self) -> list[Interval]:
        return list(zip(self._lo, self._hi, strict=True))

    def missing(self, start: int | None = None) -> list[Interval]:
        """Values absent between ``start`` (default: the lowest present) and the highest."""
        if not self._lo:
            return []
        out = []
        prev = (self._lo[0] if start is None else start) - 1
        for lo, hi in zip(self._lo, self._hi, strict=True):
            if lo > prev + 1:
                out.append((prev + 1, lo - 1))
            prev = max(prev, hi)
        return out

    def difference(self, other: SeqSet) -> list[Interval]:
        """Intervals of values in this set and not in ``other``."""
        out: list[Interval] = []
        for lo, hi in zip(self._lo, self._hi, strict=True):
            cur = lo
            j = max(0, bisect.bisect_right(other._lo, lo) - 1)
            while cur <= hi and j < len(other._lo):
                olo, ohi = other._lo[j], other._hi[j]
                if ohi < cur:
                    j += 1
                    continue
                if olo > hi:
                    break
                if olo > cur:
                    out.append((cur, olo - 1))
                cur = max(cur, ohi + 1)
                j += 1
            if cur <= hi:
                out.append((cur, hi))
        return out


def interval_size(intervals: Iterable[Interval]) -> int:
    return sum(hi - lo + 1 for lo, hi in intervals)


@dataclass(frozen=True)
class Duplicate:
    record_id: str
    first: Location | None  # None when it was seen too long ago to be remembered
    again: Location


@dataclass(frozen=True)
class OutOfOrder:
    record_id: str
    after_seq: int  # the previous sequence number seen from the sender in that partition
    where: Location


@dataclass
class SenderAudit:
    """What one source holds from one sender."""

    job_id: str
    site: str
    sender_id: str
    seqs: SeqSet = field(default_factory=SeqSet)
    records: int = 0
    duplicates: int = 0
    out_of_order: int = 0

    def gaps(self, from_start: bool) -> list[Interval]:
        return self.seqs.missing(0 if from_start else None)


class SequenceAudit:
    """Per-sender accounting of one source. Feed :meth:`observe` in offset order
    per partition; partitions may interleave. Lists of duplicates and out-of-order
    records keep the first ``max_listed`` (the counts are exact)."""

    def __init__(self, source: str, *, max_listed: int = 1000, remember: int = 100_000) -> None:
        self.source = source
        self.max_listed = max_listed
        self.senders: dict[str, SenderAudit] = {}
        self.duplicates: list[Duplicate] = []
        self.out_of_order: list[OutOfOrder] = []
        self._prev: dict[tuple[str, str, int], int] = {}  # (sender, topic, partition) -> seq
        self._seen: OrderedDict[tuple[str, int], Location] = OrderedDict()  # recent ids
        self._remember = remember

    def observe(self, job_id: str, site: str, sender_id: str, seq: int, where: Location) -> None:
        s = self.senders.get(sender_id)
        if s is None:
            s = self.senders[sender_id] = SenderAudit(job_id, site, sender_id)
        s.records += 1
        rid = (sender_id, seq)
        lane = (sender_id, where.topic, where.partition)
        if not s.seqs.add(seq):
            s.duplicates += 1
            if len(self.duplicates) < self.max_listed:
                self.duplicates.append(Duplicate(f"{sender_id}-{seq}", self._seen.get(rid), where))
        else:
            prev = self._prev.get(lane)
            if prev is not None and seq < prev:
                s.out_of_order += 1
                if len(self.out_of_order) < self.max_listed:
                    self.out_of_order.append(OutOfOrder(f"{sender_id}-{seq}", prev, where))
            self._prev[lane] = seq  # a repeat does not move it: what came after still counts
            self._seen[rid] = where
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.senders.values())

    def sorted_senders(self) -> list[SenderAudit]:
        return sorted(self.senders.values(), key=lambda s: (s.job_id, s.site, s.sender_id))

    def gaps(self, from_start: bool) -> Iterator[tuple[SenderAudit, Interval]]:
        for s in self.sorted_senders():
            for gap in s.gaps(from_start):
                yield s, gap


def audit_sequences(
    observations: Iterable[tuple[str, str, str, int, Location]], source: str = "topic"
) -> SequenceAudit:
    """Account ``(job_id, site, sender_id, seq, location)`` observations, in order."""
    audit = SequenceAudit(source)
    for job, site, sender, seq, where in observations:
        audit.observe(job, site, sender, seq, where)
    return audit


@dataclass(frozen=True)
class IdDifference:
    """Record ids of one sender present in one source and not (or not as often) in
    the other."""

    job_id: str
    site: str
    sender_id: str
    missing: tuple[Interval, ...] = ()  # sequence numbers absent from the other side
    extra: tuple[tuple[int, int, int], ...] = ()  # (seq, count here, count there)


def compare_ids(ours: SequenceAudit, theirs: SequenceAudit) -> list[IdDifference]:
    """Per sender: sequence numbers ``ours`` has and ``theirs`` lacks, and those
    ``theirs`` holds more often than ``ours`` (doubled there)."""
    out = []
    for s in ours.sorted_senders():
        other = theirs.senders.get(s.sender_id)
        other_seqs = other.seqs if other is not None else SeqSet()
        missing = tuple(s.seqs.difference(other_seqs))
        extra = tuple(
            (seq, s.seqs.count(seq), n)
            for seq in sorted(other_seqs.repeats)
            if (n := other_seqs.count(seq)) > s.seqs.count(seq) and seq in s.seqs
        )
        if missing or extra:
            out.append(IdDifference(s.job_id, s.site, s.sender_id, missing, extra))
    return out


class OffsetLedger:
    """Archive rows of a topic range by (partition, offset): each is matched against
    the topic's message at that offset. 8 bytes (a hash of the bytes) and one state
    byte per offset of the range."""

    _PRESENT, _DOUBLED, _MATCHED = 1, 2, 4

    def __init__(self, ranges: Iterable[tuple[int, int, int]]) -> None:
        """``ranges``: (partition, start, end) with end exclusive."""
        self._start: dict[int, int] = {}
        self._hash: dict[int, array[int]] = {}
        self._state: dict[int, bytearray] = {}
        for partition, start, end in ranges:
            n = max(0, end - start)
            self._start[partition] = start
            self._hash[partition] = array("q", bytes(8 * n))
            self._state[partition] = bytearray(n)
        self.doubled: list[tuple[int, int]] = []  # (partition, offset) held twice or more

    def _index(self, partition: int, offset: int) -> int | None:
        start = self._start.get(partition)
        if start is None or not 0 <= offset - start < len(self._state[partition]):
            return None
        return offset - start

    def add(self, partition: int, offset: int, raw: bytes) -> bool:
        """Record an archive row; False when it is outside the range."""
        i = self._index(partition, offset)
        if i is None:
            return False
        state = self._state[partition]
        if state[i] & self._PRESENT:
            if not state[i] & self._DOUBLED:
                self.doubled.append((partition, offset))
            state[i] |= self._DOUBLED
        else:
            state[i] |= self._PRESENT
            self._hash[partition][i] = hash(raw)
        return True

    def match(self, partition: int, offset: int, raw: bytes) -> str:
        """The topic's message at an offset: ``ok``, ``missing`` (no archive row) or
        ``altered`` (the archive holds other bytes)."""
        i = self._index(partition, offset)
        if i is None:
            return "missing"
        state = self._state[partition]
        if not state[i] & self._PRESENT:
            return "missing"
        state[i] |= self._MATCHED
        return "ok" if self._hash[partition][i] == hash(raw) else "altered"

    def unmatched(self) -> Iterator[tuple[int, int]]:
        """(partition, offset) of archive rows no topic message matched."""
        for partition, state in self._state.items():
            start = self._start[partition]
            for i, flags in enumerate(state):
                if flags & self._PRESENT and not flags & self._MATCHED:
                    yield partition, start + i


def as_intervals(values: Iterable[int]) -> list[Interval]:
    """Sorted values as inclusive intervals."""
    out: list[Interval] = []
    for v in values:
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out
