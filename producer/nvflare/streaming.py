"""NVFlare analytics DXOs produced to Kafka: the part that needs no NVFlare import.

:class:`SenderPool` keeps one :class:`~flarestream.producer.AnalyticsSender` per
(site, job id) and turns the ``data``/``meta`` of an NVFlare analytics DXO into one
record with everything NVFlare put in it: data type, writer kind, tag, value, step,
path and the other kwargs. Both NVFlare components (the client-side
:class:`~flarestream.producer.nvflare.KafkaStreamer` and the server-side
:class:`~flarestream.producer.nvflare.KafkaReceiver`) use it.

Guarantees:

- :meth:`SenderPool.produce` never raises and never waits longer than
  ``max_block_s`` (a full local producer queue; default 0): it is called from
  NVFlare's event dispatch, often on the training thread. A record it cannot take
  is counted and logged (the first of each kind of problem in full, then at 10, 100,
  1000... occurrences), and :meth:`SenderPool.close` logs the totals per site.
- Records of one site and job go through one sender, so they reach Kafka in the
  order :meth:`SenderPool.produce` was called for them.
- :meth:`SenderPool.close` waits up to ``flush_timeout`` seconds per sender for
  the broker to confirm every record, and reports how many were not confirmed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flarestream.errors import (
    ConfigError,
    DecodeError,
    DeliveryError,
    FlarestreamError,
    RecordTooLargeError,
)
from flarestream.producer.sender import AnalyticsSender
from flarestream.schemas.dxo import record_from_dxo
from flarestream.settings import DEFAULT_TOPIC, kafka_client_config

log = logging.getLogger("flarestream.producer.nvflare")

NVFLARE_EXTRA_HINT = "pip install 'flarestream[nvflare]'"


class MissingNVFlareError(ConfigError, ImportError):
    """The NVFlare components were imported where NVFlare is not installed."""


@dataclass(frozen=True)
class StreamSettings:
    """What every NVFlare component of flarestream is configured with (checked once)."""

    bootstrap_servers: str | None = None
    topic: str = DEFAULT_TOPIC
    config: Mapping[str, Any] | None = None
    flush_timeout: float = 30.0
    max_block_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bootstrap_servers is not None and (
            not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers.strip()
        ):
            raise ConfigError(
                f"bootstrap_servers must be 'host:port[,host:port...]' or None (then "
                f"FLARESTREAM_BOOTSTRAP_SERVERS on the site), got {self.bootstrap_servers!r}"
            )
        if not isinstance(self.topic, str) or not self.topic:
            raise ConfigError(f"topic must be a non-empty string, got {self.topic!r}")
        if self.config is not None and not isinstance(self.config, Mapping):
            raise ConfigError(
                f"config must be a dict of librdkafka settings, got {type(self.config).__name__}"
            )
        for name in ("flush_timeout", "max_block_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")


class _Problems:
    """Counts what could not be sent, by kind, and logs the 1st, 10th, 100th... of each."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._first: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, where: str, message: str) -> None:
        with self._lock:
            self._counts[kind] += 1
            n = self._counts[kind]
            self._first.setdefault(kind, message)
        if n == 1 or (n >= 10 and str(n).rstrip("0") == "1"):
            log.error("%s: %s record(s) %s so far; latest: %s", where, n, kind, message)

    def summary(self) -> str:
        with self._lock:
            return "; ".join(
                f"{n} {kind} (first: {self._first[kind]})" for kind, n in self._counts.items()
            )

    @property
    def total(self) -> int:
        return sum(self._counts.values())


class SenderPool:
    """One sender per (site, job id), made on first use; thread-safe."""

    def __init__(self, settings: StreamSettings, component: str) -> None:
        self.settings = settings
        self.component = component  # names the component in log lines
        self._senders: dict[tuple[str, str], AnalyticsSender] = {}
        self._broken: dict[tuple[str, str], str] = {}  # sender could not be made: why
        self._problems: dict[tuple[str, str], _Problems] = {}
        self._lock = threading.Lock()

    def sender(self, site: str, job_id: str) -> AnalyticsSender | None:
        """The sender of (site, job), made now if needed; None (logged once) when it
        cannot be made: a bad setting or a site/job name that is unsafe as a directory."""
        key = (site, job_id)
        found = self._senders.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._senders.get(key)
            if found is not None or key in self._broken:
                return found
            s = self.settings
            try:
                found = AnalyticsSender(
                    site=site,
                    job_id=job_id,
                    bootstrap_servers=s.bootstrap_servers,
                    topic=s.topic,
                    max_block_s=s.max_block_s,
                    config=kafka_client_config(s.config),
                )
            except FlarestreamError as exc:
                self._broken[key] = str(exc)
                log.error(
                    "%s: analytics of site %r, job %r will NOT be streamed: %s",
                    self.component, site, job_id, exc,
                )  # fmt: skip
                return None
            self._senders[key] = found
            self._problems[key] = _Problems()
        log.info(
            "%s: streaming analytics of site %r, job %r to topic %r at %s",
            self.component, site, job_id, found.topic, found.bootstrap_servers,
        )  # fmt: skip
        return found

    def produce(self, site: str, job_id: str, data: object, meta: object) -> bool:
        """Send one analytics DXO's ``data`` and ``meta`` as a record of (site, job).
        True when the record was accepted; never raises (see the module doc)."""
        sender = self.sender(site, job_id)
        if sender is None:
            why = self._broken.get((site, job_id), "the run has ended")
            self.refuse(site, job_id, "not sent (no sender)", why)
            return False
        if not isinstance(data, dict) or not isinstance(meta, dict):
            self.refuse(site, job_id, "invalid", "the DXO's data or meta is not a dict")
            return False
        try:
            rec = record_from_dxo(
                {"data": data, "meta": meta},
                site=site, job_id=job_id, sender_id="", seq=0, timestamp_ms=0,
            )  # fmt: skip
            kwargs = rec.kwargs if rec.path is None else {**rec.kwargs, "path": rec.path}
            sender.send(rec.tag, rec.value, rec.data_type, rec.step, rec.writer, kwargs)
        except DecodeError as exc:  # no data type: NVFlare's receivers skip these too
            self.refuse(site, job_id, "skipped (no data type)", str(exc))
            return False
        except RecordTooLargeError as exc:  # valid, but more than Kafka takes
            self.refuse(site, job_id, "not sent", f"{type(exc).__name__}: {exc}")
            return False
        except (TypeError, ValueError) as exc:  # NVFlare's and flarestream's validation
            self.refuse(site, job_id, "invalid", f"{type(exc).__name__}: {exc}")
            return False
        except Exception as exc:  # queue full, closed, failed; Kafka refusing a large record
            # never into NVFlare's event dispatch: it runs on the training thread
            self.refuse(site, job_id, "not sent", f"{type(exc).__name__}: {exc}")
            return False
        return True

    def refuse(self, site: str, job_id: str, kind: str, message: str) -> None:
        """Count (and log, see the module doc) one record that was not sent."""
        problems = self._problems.setdefault((site, job_id), _Problems())
        problems.add(kind, f"{self.component} site {site!r} job {job_id!r}", message)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for the broker to confirm what was sent so far; log what was not."""
        for sender in list(self._senders.values()):
            try:
                sender.flush(self.settings.flush_timeout if timeout is None else timeout)
            except DeliveryError as exc:
                log.error("%s: %s", self.component, exc)

    def close(self) -> int:
        """Flush and close every sender (the pool can be used again afterwards: a
        later record makes a new sender). Logs one summary line per (site, job) and
        returns how many records were not delivered or not accepted."""
        with self._lock:
            senders, self._senders = self._senders, {}
            problems, self._problems = self._problems, {}
            self._broken.clear()
        lost = 0
        for key, sender in senders.items():
            try:
                sender.close(self.settings.flush_timeout)
            except DeliveryError as exc:
                log.error("%s: %s", self.component, exc)
            stats = sender.stats  # counts since the sender was made, earlier flushes too
            undelivered = stats["failed"] + stats["pending"]
            refused = problems.pop(key, _Problems())
            lost += undelivered + refused.total
            line = (
                f"{self.component}: site {key[0]!r} job {key[1]!r}: {stats['accepted']} "
                f"records accepted, {stats['delivered']} delivered to {sender.topic!r} at "
                f"{sender.bootstrap_servers}"
            )
            if refused.total or undelivered:
                parts = [refused.summary()] if refused.total else []
                if undelivered:
                    parts.insert(0, f"{undelivered} accepted but not confirmed by the broker")
                log.error("%s; NOT delivered: %s", line, "; ".join(parts))
            else:
                log.info("%s", line)
        for key, refused in problems.items():  # sites whose sender was never made
            lost += refused.total
            log.error("%s: site %r job %r: %s", self.component, *key, refused.summary())
        return lost


class SeenOnce:
    """Tells whether an event's data object is seen for the first time.

    The same Shareable can reach a component twice: as the local event and again
    when NVFlare's ConvertToFedEvent (still in a job) re-fires it as a federated
    event. Objects are tracked by identity through weak references, so memory stays
    bounded by the objects NVFlare itself still holds.
    """

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[Any]] = {}
        # re-entrant: a weakref callback may run on this thread while the lock is held
        self._lock = threading.RLock()

    def first_time(self, obj: object) -> bool:
        key = id(obj)
        with self._lock:
            ref = self._refs.get(key)
            if ref is not None and ref() is obj:
                return False
            # an object that is not weakly referenceable cannot be told apart: take it
            with contextlib.suppress(TypeError):
                self._refs[key] = weakref.ref(obj, functools.partial(self._forget, key))
            return True

    def _forget(self, key: int, ref: weakref.ref[Any]) -> None:
        with self._lock:
            if self._refs.get(key) is ref:
                del self._refs[key]

    def __len__(self) -> int:
        return len(self._refs)
