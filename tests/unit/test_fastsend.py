"""The C hot path for plain scalars (``flarestream.producer._fastsend``) repeats the
Python path exactly: the same bytes, one sequence counter without gaps or reordering
(also under threads), the same fallbacks, and ``FLARESTREAM_PURE_PYTHON=1`` turns it
off. The producer is replaced by a recording fake, so no broker is needed."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flarestream.errors import DeliveryError, FlarestreamError, QueueFullError
from flarestream.producer import AnalyticsDataType as T
from flarestream.producer import AnalyticsSender, LogWriterName, MLflowWriter, SummaryWriter
from flarestream.producer import sender as sender_module
from flarestream.schemas import Codec, Record
from flarestream.schemas.codec import default_codec

PURE = os.environ.get("FLARESTREAM_PURE_PYTHON", "").strip() not in ("", "0")
try:
    from flarestream.producer import _fastsend
except ImportError:  # reported by test_the_extension_is_built_and_used_unless_turned_off
    _fastsend = None

needs_c = pytest.mark.skipif(_fastsend is None, reason="the C extension is not built")
INT64 = st.integers(-(2**63), 2**63 - 1)


class FakeProducer:
    """Records what is produced; raises BufferError ``full`` times, then ``error``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.polls: list[int] = []  # how many records had been produced at each poll
        self.full = 0
        self.error: Exception | None = None
        self.on_poll = lambda: None

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        if self.error is not None:
            raise self.error
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.sent.append((topic, value, key))

    def poll(self, timeout: float = -1) -> int:
        self.polls.append(len(self.sent))
        self.on_poll()
        return 0

    def flush(self, timeout: float = -1) -> int:
        return 0

    def __len__(self) -> int:
        return 0


@pytest.fixture(params=["c", "pure"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Senders built here get a FakeProducer and the C path, or the pure one (whatever
    FLARESTREAM_PURE_PYTHON says: the environment is tested in a fresh interpreter)."""
    monkeypatch.setattr(sender_module, "Producer", FakeProducer)
    if request.param == "c" and _fastsend is None:
        pytest.skip("the C extension is not built")  # reported by the test below
    monkeypatch.setattr(sender_module, "_fastsend", _fastsend if request.param == "c" else None)
    return str(request.param)


def make(**kwargs: Any) -> AnalyticsSender:
    return AnalyticsSender(site="site-1", job_id="job-1", topic="t", **kwargs)


def payloads(sender: AnalyticsSender) -> list[bytes]:
    producer: FakeProducer = sender._producer  # type: ignore[assignment]
    return [value for _, value, _ in producer.sent]


def expected_bytes(sender: AnalyticsSender, record: Record) -> bytes:
    """What the pure-Python encoder writes for this record (its own timestamp)."""
    return sender._encoder(record.writer).encode(
        record.seq, record.timestamp_ms, record.tag, record.data_type, record.value,
        record.step, record.path, record.kwargs,
    )  # fmt: skip


def test_the_extension_is_built_and_used_unless_turned_off() -> None:
    if PURE:
        assert sender_module._fastsend is None
    else:
        assert _fastsend is not None, "flarestream.producer._fastsend was not built (C compiler?)"
        assert sender_module._fastsend is _fastsend
        assert _fastsend.POLL_EVERY == sender_module._POLL_EVERY


@pytest.mark.parametrize("value", ["1", "0", ""])
def test_pure_python_env_turns_the_c_path_off_in_a_fresh_interpreter(value: str) -> None:
    code = (
        "from flarestream.producer import sender as s, AnalyticsSender, AnalyticsDataType as T\n"
        "a = AnalyticsSender(site='s', job_id='j', bootstrap_servers='127.0.0.1:9', topic='t')\n"
        "a.add('loss', 0.5, T.SCALAR, 1)\n"
        "print(s._fastsend is None, a._fastpath is None, a.stats['accepted'])\n"
        "import contextlib\n"
        "with contextlib.suppress(Exception): a.close(timeout=0)\n"
    )
    env = {**os.environ, "FLARESTREAM_PURE_PYTHON": value}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    off = value == "1" or _fastsend is None
    assert done.stdout.split() == [str(off), str(off), "1"]


class FloatSub(float):
    pass


class StrSub(str):
    pass


# -- bytes ----------------------------------------------------------------------------
@needs_c
@settings(max_examples=600, deadline=None)
@given(
    site=st.text(min_size=1, max_size=12),
    writer=st.sampled_from(list(LogWriterName)),
    data_type=st.sampled_from([T.SCALAR, T.METRIC]),
    seq=INT64,
    timestamp_ms=INT64 | st.integers(1_600_000_000_000, 1_900_000_000_000),
    tag=st.text(max_size=40),
    value=st.floats() | INT64 | st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf]),
    step=st.none() | st.integers(0, 2**63 - 1),
)
def test_c_encoder_writes_the_bytes_of_the_python_encoder_and_of_fastavro(
    site: str, writer: LogWriterName, data_type: T, seq: int, timestamp_ms: int, tag: str,
    value: float | int, step: int | None,
) -> None:  # fmt: skip
    codec = default_codec()
    enc = codec.sender_encoder(site, "job-1", "0123456789abcdef", writer, 1)
    prefix, rid, scalar, metric = enc.scalar_layout()  # type: ignore[misc]
    code = scalar if data_type is T.SCALAR else metric
    c_bytes = _fastsend.encode_scalar(prefix, rid, code, seq, timestamp_ms, tag, value, step)
    record = Record(site, "job-1", "0123456789abcdef", seq, timestamp_ms, tag, data_type,
                    value, writer, step)  # fmt: skip
    assert c_bytes == enc.encode(seq, timestamp_ms, tag, data_type, value, step)
    assert c_bytes == codec.encode_record(record)


@needs_c
@pytest.mark.parametrize(
    ("tag", "value", "step"),
    [
        ("t", 2**63, None), ("t", -(2**63) - 1, None), ("t", True, None),
        ("t", np.float64(1), None), ("t", FloatSub(1), None), ("t", "text", None),
        ("t", None, None), ("t", 1.0, 2**63), ("t", 1.0, True), ("t", 1.0, np.int64(1)),
        ("\ud800", 1.0, None), (b"t", 1.0, None), (StrSub("t"), 1.0, None),
    ],
)  # fmt: skip
def test_c_encoder_declines_what_only_the_python_path_writes(
    tag: Any, value: Any, step: Any
) -> None:
    assert _fastsend.encode_scalar(b"p", b"r-", b"\x02", 0, 0, tag, value, step) is None


# -- through the sender -----------------------------------------------------------------
def _calls() -> Iterator[tuple[str, Any]]:
    yield "float", lambda s: s.add("loss", 0.25, T.SCALAR, 3)
    yield "int-metric-no-step", lambda s: s.add("n", -7, T.METRIC)
    yield "add_scalar", lambda s: s.add_scalar("lr", 1e-3, 2**63 - 1)
    yield "kwargs", lambda s: s.add("loss", 0.5, T.SCALAR, 1, walltime=2.0)
    yield "path", lambda s: s.add_scalar("loss", 0.5, 1, path="a/b")
    yield "step-kw", lambda s: s.add_scalar("loss", 0.5, global_step=4)
    yield "bool", lambda s: s.add("flag", True, T.SCALAR, 1)
    yield "big-int", lambda s: s.add("big", 2**64, T.SCALAR, 1)
    yield "numpy", lambda s: s.add("np", np.float32(0.5), T.METRIC, np.int64(5))
    yield "float-subclass", lambda s: s.add("sub", FloatSub(0.5), T.SCALAR, 1)
    yield "scalars", lambda s: s.add_scalars("d", {"a": 1.0}, 1)
    yield "text", lambda s: s.add_text("x", "hello", 2)
    yield "mlflow-writer", lambda s: MLflowWriter(s).log_metric("acc", 0.9, 6)
    yield "tb-writer", lambda s: SummaryWriter(s).add_scalar("acc", 0.8, 7)
    yield "float-again", lambda s: s.add("loss", math.nan, T.SCALAR, 8)


def test_mixed_fast_and_slow_calls_share_one_gapless_counter_and_bytes(mode: str) -> None:
    sender = make()
    calls = [call for _, call in _calls()] * 3
    for call in calls:
        call(sender)

    sent = payloads(sender)
    records = [default_codec().decode(p) for p in sent]
    assert [r.seq for r in records] == list(range(len(calls)))
    assert sender.stats["accepted"] == len(calls)
    for payload, record in zip(sent, records, strict=True):
        if record.tag != "sub":  # a float subclass is sent as JSON, read back as a float
            assert payload == expected_bytes(sender, record)
        assert abs(record.timestamp_ms - time.time() * 1000) < 60_000
    assert [r.writer for r in records[12:14]] == [LogWriterName.MLFLOW, LogWriterName.TORCH_TB]
    assert (records[0].tag, records[0].value, records[0].step) == ("loss", 0.25, 3)
    assert (records[1].data_type, records[1].value, records[1].step) == (T.METRIC, -7, None)


@pytest.mark.parametrize("call", [c for _, c in _calls()], ids=[n for n, _ in _calls()])
def test_each_call_gives_the_same_record_in_both_modes(
    call: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "Producer", FakeProducer)
    monkeypatch.setattr(sender_module, "_fastsend", _fastsend)
    fast = make()
    monkeypatch.setattr(sender_module, "_fastsend", None)
    pure = make()
    for sender in (fast, pure):
        call(sender)
        call(sender)
    got = [[default_codec().decode(p) for p in payloads(s)] for s in (fast, pure)]
    for a, b in zip(*got, strict=True):
        a.sender_id = b.sender_id = "x"
        a.timestamp_ms = b.timestamp_ms = 0
        assert repr(a) == repr(b)  # repr: NaN compares unequal to itself


def test_only_plain_scalars_take_the_c_path(mode: str) -> None:
    sender = make()
    fast = sender._fast
    if mode == "pure":
        assert fast is None
        return
    assert fast is not None
    tb = LogWriterName.TORCH_TB
    assert fast("loss", 0.5, T.SCALAR, 1, tb) is True
    declined = [
        (StrSub("loss"), 0.5, T.SCALAR, 1, tb), (1, 0.5, T.SCALAR, 1, tb),
        ("loss", 0.5, T.SCALARS, 1, tb), ("loss", 0.5, "SCALAR", 1, tb),
        ("loss", True, T.SCALAR, 1, tb), ("loss", 2**63, T.SCALAR, 1, tb),
        ("loss", FloatSub(1), T.SCALAR, 1, tb), ("loss", np.float64(1), T.SCALAR, 1, tb),
        ("loss", 0.5, T.SCALAR, -1, tb), ("loss", 0.5, T.SCALAR, True, tb),
        ("loss", 0.5, T.SCALAR, 2**63, tb), ("loss", 0.5, T.SCALAR, 1.0, tb),
        ("\udc80", 0.5, T.SCALAR, 1, tb), ("loss", 0.5, T.SCALAR, 1, LogWriterName.WANDB),
    ]  # fmt: skip
    for args in declined:
        assert fast(*args) is False, args
    assert sender.stats["accepted"] == 1
    assert len(payloads(sender)) == 1


def test_full_queue_retries_the_same_record_then_raises_without_a_number(mode: str) -> None:
    sender = make(max_block_s=0.05)
    producer: FakeProducer = sender._producer  # type: ignore[assignment]
    producer.full = 3
    sender.add("loss", 0.5, T.SCALAR, 1)
    assert [default_codec().decode(p).seq for p in payloads(sender)] == [0]
    producer.full = 10**9
    with pytest.raises(QueueFullError, match="'loss'"):
        sender.add("loss", 0.5, T.SCALAR, 2)
    producer.full = 0
    sender.add("loss", 0.5, T.SCALAR, 3)  # the lock was released
    assert [default_codec().decode(p).step for p in payloads(sender)] == [1, 3]
    assert sender.stats["accepted"] == 2


def test_produce_error_propagates_and_costs_no_number(mode: str) -> None:
    sender = make()
    producer: FakeProducer = sender._producer  # type: ignore[assignment]
    producer.error = ValueError("broken")
    with pytest.raises(ValueError, match="broken"):
        sender.add("loss", 0.5, T.SCALAR, 1)
    producer.error = None
    sender.add("loss", 0.5, T.SCALAR, 2)
    assert [default_codec().decode(p).seq for p in payloads(sender)] == [0]


def test_delivery_reports_are_served_every_1024_records(mode: str) -> None:
    sender = make()
    for i in range(3000):
        sender.add("loss", float(i), T.SCALAR, i)
    assert sender._producer.polls == [1, 1025, 2049]  # type: ignore[attr-defined]


def test_closed_and_fatally_failed_senders_refuse_scalars(mode: str) -> None:
    closed = make()
    closed.close()
    with pytest.raises(FlarestreamError, match="closed; 'loss' not sent"):
        closed.add("loss", 0.5, T.SCALAR, 1)
    failed = make()

    class Fatal:
        def fatal(self) -> bool:
            return True

        def str(self) -> str:
            return "fenced"

    failed._on_error(Fatal())  # type: ignore[arg-type]
    with pytest.raises(DeliveryError, match="fenced"):
        failed.add_scalar("loss", 0.5, 1)
    assert payloads(closed) == payloads(failed) == []


def test_threads_get_unique_contiguous_numbers_in_produce_order(mode: str) -> None:
    sender = make()
    producer: FakeProducer = sender._producer  # type: ignore[assignment]
    producer.on_poll = lambda: time.sleep(0)  # poll() lets other threads run, as librdkafka's
    n_threads, per_thread = 4, 2500
    start = threading.Barrier(n_threads)
    before = sys.getswitchinterval()

    def work(worker: int) -> None:
        start.wait()
        for i in range(per_thread):
            if i % 5 == 0:  # a slow call now and then
                sender.add(f"w{worker}", float(i), T.SCALAR, i, walltime=1.0)
            else:
                sender.add(f"w{worker}", float(i), T.SCALAR, i)

    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(w,)) for w in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(before)
    records = [default_codec().decode(p) for p in payloads(sender)]
    assert [r.seq for r in records] == list(range(n_threads * per_thread))
    for worker in range(n_threads):
        steps = [r.step for r in records if r.tag == f"w{worker}"]
        assert steps == list(range(per_thread))  # each thread's records in its call order


def test_a_dropped_sender_is_collected(mode: str) -> None:
    sender = make()
    sender.add("loss", 0.5, T.SCALAR, 1)
    ref = weakref.ref(sender)
    del sender
    gc.collect()
    assert ref() is None


@needs_c
def test_a_codec_of_another_layout_keeps_every_record_on_the_python_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sender_module, "Producer", FakeProducer)
    monkeypatch.setattr(sender_module, "_fastsend", _fastsend)
    raw = dict(default_codec().raw_schema)
    fields = list(raw["fields"])
    fields[1], fields[2] = fields[2], fields[1]  # job_id before site: no hand-written layout
    raw["fields"] = fields
    sender = make(codec=Codec(raw))
    assert sender._fast is not None
    assert sender._fast("loss", 0.5, T.SCALAR, 1, LogWriterName.TORCH_TB) is False
    sender.add("loss", 0.5, T.SCALAR, 1)
    assert Codec(raw).decode(payloads(sender)[0]).value == 0.5
