"""A codec is shared by every thread of a process (``default_codec()``), and a
sender's encoder by every thread that logs through that sender: concurrent
encodes must give exactly the bytes a lone encode gives."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from flarestream.schemas import AnalyticsDataType, Codec, Record


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    # make the interpreter switch threads often, so a race shows up in a short run
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("frequent_thread_switches")
def test_threads_sharing_a_sender_encoder_write_their_own_timestamps() -> None:
    codec = Codec()
    n_threads, per_thread = 4, 3000
    errors: list[str] = []
    start = threading.Barrier(n_threads)

    def work(worker: int) -> None:
        start.wait()
        for i in range(per_thread):
            seq = worker * per_thread + i
            ts = 1_000_000 + worker  # each thread its own millisecond: the cache flips
            record = Record("site", "job", "sender", seq, ts, "loss", AnalyticsDataType.SCALAR,
                            float(i), step=i)  # fmt: skip
            back = codec.decode(codec.encode(record))
            if back != record:
                errors.append(f"thread {worker}: sent {record!r}\n    read {back!r}")
                return

    threads = [threading.Thread(target=work, args=(w,)) for w in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, "\n".join(errors[:3])
