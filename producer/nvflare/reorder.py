"""Step order for records that NVFlare hands over out of order.

A trainer in another process (the Client API's external-process and attach modes,
or NVFlare's ``MetricRelay``) sends each record to the client job as its own
message, fire-and-forget, and NVFlare's messaging layer hands incoming messages to
a pool of 100 threads: records reach the client job's components in an order that
is not the order they were logged in (in a 3-site burst of 300 scalars, about 40%
of one site's records came out of step order). Nothing in such a record says when
it was logged, but its step does say where it belongs.

:class:`StepReorderer` releases each tag's records in step order. A record whose
step follows the last one released (the same step or the next; steps start at 0)
goes out at once, with any held records that now follow on. Any other record waits
for the records before it, at most a window of time: when its time is up it goes out
together with every held record of its tag with a smaller or equal step. So a tag's
records leave in step order whenever no record is held up inside NVFlare for longer
than the window, and a training loop that counts its steps one by one loses no time.
A record that comes later than the window (its step is below one already released)
is released at once, and the window doubles for the records after it (at most once
per window), up to ``max_window_s``: NVFlare's delays grow with the load of the
machine.

Records without a step are not held. Records of one tag with the same step keep
their arrival order. Not promised: the order between different tags; step order for
a record held up inside NVFlare for longer than the window. Released records go to
``emit`` from one thread at a time, in release order; an exception from ``emit`` is
logged and does not stop the releasing. Memory is bounded by what arrives within
one window.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("flarestream.producer.nvflare")

T = TypeVar("T")
_Held = tuple[int, int, T]  # (step, arrival number, item)


class StepReorderer(Generic[T]):
    """Holds stepped records for ``window_s`` seconds (growing on late arrivals, see
    the module doc) and releases them per tag in step order. A window of 0 holds
    nothing."""

    def __init__(
        self, window_s: float, emit: Callable[[T], object], max_window_s: float = 60.0
    ) -> None:
        self.window_s = window_s
        self.max_window_s = max(window_s, max_window_s)
        self.late = 0  # records that came after a larger step of their tag had left
        self._emit = emit
        self._held: dict[str, list[_Held[T]]] = {}  # tag -> heap by (step, arrival)
        self._top: dict[str, int] = {}  # tag -> largest step released (-1: none yet)
        # deadlines in arrival order (the window never shrinks): (deadline, tag, step);
        # an entry whose record already left with a larger step releases nothing
        self._due: deque[tuple[float, str, int]] = deque()
        self._count = 0
        self._arrivals = itertools.count()
        self._cond = threading.Condition()
        self._emit_lock = threading.Lock()  # one releasing thread at a time keeps order
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._grown_at = -float("inf")

    @property
    def held(self) -> int:
        return self._count

    def add(self, tag: str, step: int | None, item: T) -> None:
        if step is None or self.window_s <= 0:
            self._release([item])
            return
        # the emit lock first: what this call releases must not cross a batch of the
        # releasing thread
        with self._emit_lock:
            with self._cond:
                if step < self._top.get(tag, -1):
                    self._note_late(tag, step)
                    ready = [item]
                else:
                    heap = self._held.setdefault(tag, [])
                    heapq.heappush(heap, (step, next(self._arrivals), item))
                    self._count += 1
                    ready = self._pop_following(tag, heap)
                    if heap:
                        self._due.append((time.monotonic() + self.window_s, tag, step))
                        self._start_thread()
                        if len(self._due) == 1:  # the thread waits with no deadline: wake it
                            self._cond.notify()
                    else:
                        del self._held[tag]
            self._release(ready, locked=True)

    def drain(self) -> None:
        """Release everything held now, each tag in step order."""
        with self._emit_lock:
            with self._cond:
                due = self._take(float("inf"))
            self._release(due, locked=True)

    def close(self) -> None:
        """Release everything and stop the releasing thread (a later ``add`` starts it again)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self.drain()

    # -- under self._cond --------------------------------------------------------------
    def _note_late(self, tag: str, step: int) -> None:
        self.late += 1
        now = time.monotonic()
        grown = min(self.max_window_s, self.window_s * 2)
        # at most once per window: one stall makes many records late at once
        if grown > self.window_s and now - self._grown_at >= self.window_s:
            self._grown_at = now
            log.warning(
                "a record of tag %r (step %s) reached the client job after step %s had "
                "been sent: NVFlare held it up for more than %.3g s; holding records from "
                "trainer processes for %.3g s from now on",
                tag, step, self._top[tag], self.window_s, grown,
            )  # fmt: skip
            self.window_s = grown

    def _pop_following(self, tag: str, heap: list[_Held[T]]) -> list[T]:
        """Pop the held records that follow on from the last step released."""
        top, out = self._top.get(tag, -1), []
        while heap and heap[0][0] <= top + 1:
            step, _, item = heapq.heappop(heap)
            out.append(item)
            top = max(top, step)
        self._top[tag] = top
        self._count -= len(out)
        return out

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped = False
            self._thread = threading.Thread(
                target=self._run, name="flarestream-reorder", daemon=True
            )
            self._thread.start()

    def _take(self, now: float) -> list[T]:
        """Pop what is due: per tag, every record up to the largest step whose deadline
        has passed."""
        limits: dict[str, int] = {}
        while self._due and self._due[0][0] <= now:
            _, tag, step = self._due.popleft()
            limits[tag] = max(step, limits.get(tag, step))
        out: list[T] = []
        for tag, limit in limits.items():
            heap = self._held.get(tag)
            while heap and heap[0][0] <= limit:
                step, _, item = heapq.heappop(heap)
                out.append(item)
                self._top[tag] = max(step, self._top.get(tag, step))
            if heap is not None and not heap:
                del self._held[tag]
        self._count -= len(out)
        return out

    # -- the releasing thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._emit_lock:
                with self._cond:
                    if self._stopped:
                        return
                    due = self._take(time.monotonic())
                self._release(due, locked=True)
            with self._cond:
                if self._stopped:
                    return
                timeout = None
                if self._due:
                    timeout = max(0.0, self._due[0][0] - time.monotonic())
                if timeout is None or timeout > 0:
                    self._cond.wait(timeout)

    def _release(self, items: list[T], locked: bool = False) -> None:
        if not items:
            return
        if not locked:
            with self._emit_lock:
                self._release(items, locked=True)
            return
        for item in items:
            try:
                self._emit(item)
            except Exception:  # a record must not stop the others
                log.exception("sending a reordered analytics record failed")
