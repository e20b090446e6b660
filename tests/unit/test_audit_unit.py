"""Audit accounting as pure functions (gaps, duplicates, out of order, reconciliation),
and the pure parts of replay (ranges, times, JSON values, the archive merge, progress)."""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from flarestream.consumers.archive_source import merge_rows
from flarestream.consumers.audit import (
    Location,
    OffsetLedger,
    SeqSet,
    as_intervals,
    audit_sequences,
    compare_ids,
)
from flarestream.consumers.progress import Progress
from flarestream.consumers.replay_targets import json_safe
from flarestream.consumers.topic_range import RangeSpec, format_ms, parse_time
from flarestream.errors import ConfigError


def at(offset: int, partition: int = 0) -> Location:
    return Location("t", partition, offset)


def seqs_of(sender: str, seqs: list[int], partition: int = 0, job: str = "j", site: str = "s"):
    """Observations of one sender's sequence numbers at consecutive offsets."""
    return [(job, site, sender, n, at(i, partition)) for i, n in enumerate(seqs)]


# -- SeqSet ----------------------------------------------------------------------------
def test_seqset_merges_neighbours_and_counts_repeats() -> None:
    s = SeqSet([5, 1, 2, 9, 3, 7, 8, 2, 2])
    assert s.intervals() == [(1, 3), (5, 5), (7, 9)]
    assert len(s) == 7 and (s.min, s.max) == (1, 9)
    assert s.repeats == {2: 2} and s.count(2) == 3 and s.count(4) == 0
    s.add(4)
    s.add(6)
    assert s.intervals() == [(1, 9)]


def test_seqset_missing_and_difference_agree_with_plain_sets() -> None:
    rng = random.Random(7)
    for _ in range(200):
        a_items = rng.sample(range(60), rng.randint(0, 40))
        b_items = rng.sample(range(60), rng.randint(0, 40))
        a, b = SeqSet(a_items), SeqSet(b_items)
        expect = sorted(set(a_items) - set(b_items))
        assert [n for lo, hi in a.difference(b) for n in range(lo, hi + 1)] == expect
        if a_items:
            inside = set(range(0, max(a_items) + 1)) - set(a_items)
            assert [n for lo, hi in a.missing(0) for n in range(lo, hi + 1)] == sorted(inside)


# -- per-sender accounting ---------------------------------------------------------------
def test_skipped_sequence_number_is_a_gap_of_that_sender_only() -> None:
    audit = audit_sequences(seqs_of("a", [0, 1, 2, 4, 5, 8]) + seqs_of("b", [0, 1, 2], 1))
    gaps = {s.sender_id: s.gaps(from_start=True) for s in audit.sorted_senders()}
    assert gaps == {"a": [(3, 3), (6, 7)], "b": []}


def test_first_records_missing_is_a_gap_only_when_read_from_the_beginning() -> None:
    [sender] = audit_sequences(seqs_of("a", [3, 4, 5])).sorted_senders()
    assert sender.gaps(from_start=True) == [(0, 2)]
    assert sender.gaps(from_start=False) == []  # a range that starts mid-stream


def test_same_record_twice_is_a_duplicate_naming_both_positions_not_out_of_order() -> None:
    audit = audit_sequences(seqs_of("a", [0, 1, 2, 3, 1, 4]))
    [sender] = audit.sorted_senders()
    assert (sender.records, sender.duplicates, sender.out_of_order) == (6, 1, 0)
    [dup] = audit.duplicates
    assert (dup.record_id, dup.first, dup.again) == ("a-1", at(1), at(4))
    assert sender.gaps(True) == [] and (sender.seqs.min, sender.seqs.max) == (0, 4)


def test_lower_new_sequence_number_after_a_higher_one_is_out_of_order() -> None:
    audit = audit_sequences(seqs_of("a", [0, 1, 3, 2, 4]))
    [sender] = audit.sorted_senders()
    assert (sender.out_of_order, sender.duplicates, sender.gaps(True)) == (1, 0, [])
    [ooo] = audit.out_of_order
    assert (ooo.record_id, ooo.after_seq, ooo.where) == ("a-2", 3, at(3))


def test_order_is_judged_per_partition() -> None:
    """A sender's records in two partitions (e.g. after the partition count changed)
    are each in order; interleaving them across partitions is not out of order."""
    obs = [("j", "s", "a", 2, at(0, 1)), ("j", "s", "a", 0, at(0, 0)), ("j", "s", "a", 1, at(1, 0))]
    [sender] = audit_sequences(obs).sorted_senders()
    assert (sender.out_of_order, sender.gaps(True)) == (0, [])


def test_duplicate_listing_is_bounded_but_counts_are_exact() -> None:
    audit = audit_sequences(seqs_of("a", [0] * 50))
    audit2 = type(audit)("topic", max_listed=3)
    for obs in seqs_of("a", [0] * 50):
        audit2.observe(*obs)
    assert audit.senders["a"].duplicates == audit2.senders["a"].duplicates == 49
    assert len(audit2.duplicates) == 3


# -- reconciliation ----------------------------------------------------------------------
def test_compare_ids_finds_missing_and_doubled_records() -> None:
    topic = audit_sequences(seqs_of("a", [0, 1, 2, 3, 4]) + seqs_of("b", [0, 1]))
    archive = audit_sequences(seqs_of("a", [0, 1, 3, 4, 4]) + seqs_of("c", [0]), "archive")
    [a, b] = compare_ids(topic, archive)
    assert (a.sender_id, a.missing, a.extra) == ("a", ((2, 2),), ((4, 1, 2),))
    assert (b.sender_id, b.missing) == ("b", ((0, 1),))
    [c] = [d for d in compare_ids(archive, topic) if d.sender_id == "c"]
    assert c.missing == ((0, 0),)


def test_offset_ledger_tells_ok_missing_altered_doubled_and_unmatched() -> None:
    ledger = OffsetLedger([(0, 10, 20), (1, 0, 5)])
    assert ledger.add(0, 10, b"a") and ledger.add(0, 11, b"b") and ledger.add(0, 12, b"c")
    assert ledger.add(0, 12, b"c")  # the same offset in two files
    assert ledger.add(1, 4, b"x")
    assert not ledger.add(0, 25, b"outside") and not ledger.add(2, 0, b"unknown partition")
    verdicts = [ledger.match(0, o, v) for o, v in ((10, b"a"), (11, b"B"), (13, b"d"))]
    assert verdicts == ["ok", "altered", "missing"]
    assert ledger.doubled == [(0, 12)]
    assert sorted(ledger.unmatched()) == [(0, 12), (1, 4)]


def test_as_intervals() -> None:
    assert as_intervals([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 7), (9, 10)]
    assert as_intervals([]) == []


# -- replay's pure parts -----------------------------------------------------------------
def test_times_parse_as_utc_iso_or_epoch_ms() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000  # no zone: UTC
    assert parse_time("2023-11-15T00:13:20+02:00") == 1_700_000_000_000
    assert parse_time("2026-12-04T20:50:38.964Z") == 1_796_417_438_964  # no float rounding
    for ms in (0, 1, 999, 1_796_417_438_964, 4_102_444_799_999):
        assert parse_time(format_ms(ms)) == ms
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_time("last tuesday")


def test_range_spec_rejects_backwards_and_negative_bounds() -> None:
    with pytest.raises(ConfigError, match="before from-offset"):
        RangeSpec(from_offset=5, to_offset=4)
    with pytest.raises(ConfigError, match="not after from-time"):
        RangeSpec(from_time_ms=10, to_time_ms=10)
    with pytest.raises(ConfigError, match=">= 0"):
        RangeSpec(from_offset=-1)
    spec = RangeSpec(from_offset=2, to_offset=4, from_time_ms=100, to_time_ms=200)
    assert [spec.offset_ok(o) for o in (1, 2, 3, 4)] == [False, True, True, False]
    assert [spec.time_ok(t) for t in (99, 100, 199, 200)] == [False, True, True, False]


def test_json_values_are_strict_json_with_arrays_as_base64() -> None:
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": "NaN text", "n": None}
    out = json_safe(value)
    assert out == {"a": "NaN", "b": ["Infinity", "-Infinity", 1.5], "c": "NaN text", "n": None}
    json.dumps(out, allow_nan=False)
    arr = json_safe(np.array([[1, 2], [3, 4]], dtype=">i2"))
    assert arr == {"dtype": ">i2", "shape": [2, 2], "base64": "AAEAAgADAAQ="}


@dataclass(frozen=True)
class FakeFile:
    path: str
    topic: str
    partition: int
    first_offset: int


class FakeReader:
    """An archive reader whose files hold the given offsets; counts open files."""

    def __init__(
        self, files: dict[FakeFile, list[int]], broken: frozenset[str] = frozenset()
    ) -> None:
        self.files, self.broken = files, broken
        self.open_now = self.most_open = 0

    def rows(self, f: FakeFile) -> Iterator[dict[str, Any]]:
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            for n, offset in enumerate(self.files[f]):
                if f.path in self.broken and n == 1:
                    raise ValueError("corrupt block")
                yield {"offset": offset, "file": f.path}
        finally:
            self.open_now -= 1


def test_merge_gives_offset_order_per_partition_opening_few_files() -> None:
    # two jobs interleave on partition 0; partition 1 has three files in a row
    files = {
        FakeFile("a", "t", 0, 0): [0, 1, 4, 5],
        FakeFile("b", "t", 0, 2): [2, 3, 6],
        FakeFile("c", "t", 0, 7): [7, 8],
        FakeFile("d", "t", 1, 0): [0, 1],
        FakeFile("e", "t", 1, 2): [2],
        FakeFile("f", "t", 1, 3): [3, 4],
    }
    reader = FakeReader(files)
    merged = [(f.partition, row["offset"]) for f, row in merge_rows(reader, list(files))]  # type: ignore[arg-type]
    assert merged == [(0, o) for o in range(9)] + [(1, o) for o in range(5)]
    assert reader.most_open == 2


def test_merge_reports_a_broken_file_and_goes_on() -> None:
    files = {FakeFile("good", "t", 0, 0): [0, 2], FakeFile("bad", "t", 0, 1): [1, 3, 5]}
    errors: list[str] = []
    merged = [
        row["offset"]
        for _, row in merge_rows(
            FakeReader(files, frozenset({"bad"})),  # type: ignore[arg-type]
            list(files),  # type: ignore[arg-type]
            lambda f, exc: errors.append(f"{f.path}: {exc}"),
        )
    ]
    assert merged == [0, 1, 2] and errors == ["bad: corrupt block"]


def test_progress_writes_only_a_summary_line_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = Progress("replay", 100, stream=out)
    for _ in range(10):
        p.advance(10)
    line = p.finish("written 100")
    assert out.getvalue() == line + "\n"
    assert line.startswith("replay: 100 records in ") and line.endswith("; written 100")


def test_forced_progress_draws_rate_and_eta() -> None:
    out = io.StringIO()
    p = Progress("replay", 1000, stream=out, enabled=True, interval=0)
    p.advance(250)
    assert "25%" in out.getvalue() and "250/1,000 records" in out.getvalue()
    assert "ETA" in p.line() and "/s" in p.line()
    p.finish()
    assert out.getvalue().endswith("\n") and "replay: 250 records" in out.getvalue()
