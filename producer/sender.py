"""``AnalyticsSender``: NVFlare's analytics API, delivered through Kafka.

Every call is validated with NVFlare's rules, encoded and handed to
confluent-kafka's idempotent producer, keyed by site, so a site's records land
on one partition in call order, with retries that never duplicate or reorder.

Guarantees:

- ``add()`` raises at the call (TypeError/ValueError subclasses naming the tag)
  for bad input; a rejected call changes nothing and costs no sequence number.
- ``add()`` never drops a record: when the local queue is full it serves
  delivery reports for up to ``max_block_s`` and then raises
  :class:`QueueFullError` (that record was not accepted; earlier ones were).
- ``flush()`` and ``close()`` return only when every accepted record is
  confirmed by the broker, or raise :class:`DeliveryError` with the count of
  records that were not. A broker outage shorter than ``message.timeout.ms``
  loses nothing.

Plain scalar records (str tag, SCALAR/METRIC, float or int64 value, no kwargs) take
a C path (``flarestream.producer._fastsend``) when it was built: the same bytes,
sequence numbers and errors, about 4x faster. ``FLARESTREAM_PURE_PYTHON=1`` (read at
import) turns it off; without a C compiler at install time it is simply absent.

With a signing key (``signing_key=`` or ``FLARESTREAM_SIGNING_KEY``: a key file, or a
directory holding ``<site>.key``; ``signing_key=False`` never signs) every record
carries an Ed25519 signature of its bytes in the ``flarestream.sig`` header (see
:mod:`flarestream.signing`); the record bytes are unchanged. Signed records take the
Python path (the C path sends no headers); a bad key raises ConfigError when the
sender is made.
"""

from __future__ import annotations

import importlib
import logging
import os
import reprlib
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from types import ModuleType, TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from flarestream.connection import check_connection
from flarestream.errors import (
    ConfigError,
    DeliveryError,
    FlarestreamError,
    InvalidRecordError,
    InvalidRecordValueError,
    QueueFullError,
    RecordTooLargeError,
)
from flarestream.schemas.codec import Codec, default_codec
from flarestream.schemas.fastpath import SenderEncoder
from flarestream.schemas.record import (
    SCHEMA_VERSION,
    UNSAFE_NAME_CHARS,
    AnalyticsDataType,
    LogWriterName,
    coerce_writer,
    validate_call,
)
from flarestream.settings import DEFAULT_TOPIC, default_bootstrap_servers, kafka_client_config
from flarestream.signing import SIGNATURE_HEADER, resolve_signing_key

log = logging.getLogger("flarestream.producer")

# Settings flarestream relies on for its guarantees; a caller may not weaken them.
REQUIRED_SETTINGS: Mapping[str, Any] = {"enable.idempotence": True, "acks": "all"}
DEFAULT_SETTINGS: Mapping[str, Any] = {
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    "message.timeout.ms": 300_000,
}
_POLL_EVERY = 1024  # serve delivery reports every N accepted records


def _load_fastsend() -> ModuleType | None:
    """The C hot path for plain scalars, or None: not built (no compiler at install
    time) or turned off with ``FLARESTREAM_PURE_PYTHON=1``. Either way every call
    behaves the same; the pure-Python path is the reference, only slower."""
    if os.environ.get("FLARESTREAM_PURE_PYTHON", "").strip() not in ("", "0"):
        return None
    try:
        return importlib.import_module("flarestream.producer._fastsend")
    except ImportError:
        return None


_fastsend = _load_fastsend()


def _setting_text(key: str, value: object) -> str:
    """A setting as librdkafka reads it (``acks=-1`` is ``acks=all``)."""
    text = str(value).strip().lower()
    return "all" if key == "acks" and text == "-1" else text


def check_name(kind: str, name: object) -> str:
    """A site or job name that is safe as a directory name in every sink."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{kind} must be a non-empty string, got {name!r}")
    if UNSAFE_NAME_CHARS.search(name) or name in (".", ".."):
        raise ConfigError(
            f"{kind} {name!r} contains a path separator or control character; "
            "sinks use it as a directory name"
        )
    return name


def _naming_tag(
    exc: InvalidRecordError | InvalidRecordValueError, tag: object
) -> InvalidRecordError | InvalidRecordValueError:
    """``exc`` itself when its message names the tag, else the same error type with
    the tag in front (NVFlare's messages about the step, path or data type do not)."""
    name = f"'{tag}'" if isinstance(tag, str) else f"tag {reprlib.repr(tag)}"
    message = str(exc)
    if name in message or (isinstance(tag, str) and f"'{tag}." in message):
        return exc  # already names it ('tag.key' names a dict entry)
    return type(exc)(f"{name}: {message}")


class _Counter:
    """The sequence counter when there is no C path (FastPath has its own)."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0


class AnalyticsSender:
    """Sends one site's analytics records to a Kafka topic.

    ``config`` passes librdkafka settings through (security, tuning...);
    ``enable.idempotence`` and ``acks`` are fixed. ``signing_key`` signs every
    record (see the module doc). Use as a context manager, or
    call :meth:`close`. Thread-safe: calls from several threads are serialised,
    so sequence numbers follow the order in which records were accepted.
    """

    def __init__(
        self,
        *,
        site: str,
        job_id: str,
        bootstrap_servers: str | None = None,
        topic: str = DEFAULT_TOPIC,
        writer_name: object = LogWriterName.TORCH_TB,
        event_type: str = "analytix_log_stats",
        max_block_s: float = 5.0,
        config: Mapping[str, Any] | None = None,
        codec: Codec | None = None,
        signing_key: object = None,
    ) -> None:
        self.site = check_name("site", site)
        self.job_id = check_name("job_id", job_id)
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"topic must be a non-empty string, got {topic!r}")
        if max_block_s < 0:
            raise ConfigError(f"max_block_s must be >= 0, got {max_block_s}")
        self.topic = topic
        self.event_type = event_type
        self.writer_name = coerce_writer(writer_name)
        self.max_block_s = max_block_s
        self.sender_id = uuid.uuid4().hex[:16]
        self.bootstrap_servers = bootstrap_servers or default_bootstrap_servers()
        self.signing_key = resolve_signing_key(signing_key, self.site)  # before connecting
        self._codec = codec or default_codec()
        self._encoders: dict[LogWriterName, SenderEncoder] = {}
        self._key = self.site.encode("utf-8")
        self._lock = threading.Lock()
        self._counter: Any = _Counter()  # _seq: the FastPath's own when there is one
        self._failed = 0
        self._failed_total = 0
        self._first_error: KafkaError | None = None
        self._fatal: KafkaError | None = None
        self._closed = False
        client_config = kafka_client_config(config)
        # secured settings fail here, before any record is accepted (wrong password,
        # refused certificate, missing key file); plaintext needs no broker yet
        check_connection(self.bootstrap_servers, client_config, who=f"site {self.site!r}")
        try:
            self._producer = Producer(self._settings(client_config))
        except (KafkaException, TypeError, ValueError) as exc:
            reason = exc.args[0].str() if isinstance(exc, KafkaException) else str(exc)
            raise ConfigError(f"invalid producer setting: {reason}") from None
        # Plain scalars skip validate_call and encoding in Python: under self._lock
        # the C path does what _send() does, on the same sequence counter.
        self._fastpath: Any = None
        self._fast: Callable[[Any, Any, Any, Any, LogWriterName], bool] | None = None
        if _fastsend is not None and self.signing_key is None:
            self._fastpath = self._counter = _fastsend.FastPath(
                self, self._lock, self._producer, self.topic, self._key,
                AnalyticsDataType.SCALAR, AnalyticsDataType.METRIC,
            )  # fmt: skip
            self._fast = self._fastpath.add
            self._encoder(self.writer_name)

    def _settings(self, config: Mapping[str, Any]) -> dict[str, Any]:
        for key, value in REQUIRED_SETTINGS.items():
            if key in config and _setting_text(key, config[key]) != _setting_text(key, value):
                raise ConfigError(f"{key}={config[key]!r} would break ordering or dedup")
        settings = {**DEFAULT_SETTINGS, **config, **REQUIRED_SETTINGS}
        settings["bootstrap.servers"] = self.bootstrap_servers
        settings.setdefault("client.id", f"flarestream-{self.site}")
        settings.setdefault("logger", log)
        # only failures call back into Python: successes are counted as
        # accepted - failed - pending, which saves a callback per record
        settings["delivery.report.only.error"] = True
        settings["on_delivery"] = self._on_delivery
        settings["error_cb"] = self._on_error
        return settings

    @property
    def _seq(self) -> int:
        """The next sequence number: records accepted so far (either path)."""
        seq: int = self._counter.seq
        return seq

    def _stop_fast_path(self) -> None:
        """Closed or failed: every later call takes _send(), which raises."""
        if self._fastpath is not None:
            self._fastpath.open = False

    # -- NVFlare's API -------------------------------------------------------
    def get_writer_name(self) -> LogWriterName:
        return self.writer_name

    def add(
        self,
        tag: str,
        value: Any,
        data_type: AnalyticsDataType,
        global_step: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Validate, encode and enqueue one record (NVFlare's ``add``)."""
        fast = self._fast
        if fast is None or kwargs or not fast(tag, value, data_type, global_step, self.writer_name):
            self._send(tag, value, data_type, global_step, self.writer_name, kwargs)

    def add_scalar(
        self, tag: str, scalar: float, global_step: int | None = None, **kwargs: Any
    ) -> None:
        self.send(tag, scalar, AnalyticsDataType.SCALAR, global_step, self.writer_name, kwargs)

    def add_scalars(
        self, tag: str, scalars: dict[str, float], global_step: int | None = None, **kwargs: Any
    ) -> None:
        self.send(tag, scalars, AnalyticsDataType.SCALARS, global_step, self.writer_name, kwargs)

    def add_text(self, tag: str, text: str, global_step: int | None = None, **kwargs: Any) -> None:
        self.send(tag, text, AnalyticsDataType.TEXT, global_step, self.writer_name, kwargs)

    def add_image(
        self, tag: str, image: Any, global_step: int | None = None, **kwargs: Any
    ) -> None:
        self.send(tag, image, AnalyticsDataType.IMAGE, global_step, self.writer_name, kwargs)

    # -- the one path every call takes ----------------------------------------
    def send(
        self,
        tag: Any,
        value: Any,
        data_type: Any,
        global_step: Any,
        writer: LogWriterName,
        kwargs: dict[str, Any],
    ) -> None:
        """Validate and enqueue one record as written by ``writer``."""
        fast = self._fast
        if fast is None or kwargs or not fast(tag, value, data_type, global_step, writer):
            self._send(tag, value, data_type, global_step, writer, kwargs)

    def _send(
        self,
        tag: Any,
        value: Any,
        data_type: Any,
        global_step: Any,
        writer: LogWriterName,
        kwargs: dict[str, Any],
    ) -> None:
        """The reference path: every call the C path does not take (or when it is off)."""
        try:
            tag, dt, value, step, path, rest = validate_call(
                tag, value, data_type, global_step, kwargs
            )
        except (InvalidRecordError, InvalidRecordValueError) as exc:
            raise _naming_tag(exc, tag) from None
        encoder = self._encoders.get(writer) or self._encoder(writer)
        with self._lock:
            if self._closed:
                raise FlarestreamError(f"sender for site {self.site!r} is closed; '{tag}' not sent")
            if self._fatal is not None:
                raise DeliveryError(f"producer failed fatally: {self._fatal.str()}", self.pending)
            counter = self._counter
            seq = counter.seq
            now = time.time_ns() // 1_000_000
            payload = encoder.encode(seq, now, tag, dt, value, step, path, rest)
            signer = self.signing_key
            headers: list[tuple[str, str | bytes | None]] | None = None
            try:
                if signer is None:
                    self._producer.produce(self.topic, payload, self._key)
                else:
                    headers = [(SIGNATURE_HEADER, signer.sign(payload))]
                    self._producer.produce(self.topic, payload, self._key, headers=headers)
            except BufferError:
                self._produce_blocking(tag, payload, headers)
            except KafkaException as exc:  # e.g. larger than message.max.bytes
                err = exc.args[0]
                raise RecordTooLargeError(
                    f"'{tag}': the Kafka client refuses this record of {len(payload)} bytes: "
                    f"{err.name()}: {err.str()}; nothing was sent (raise message.max.bytes on "
                    "the producer and the topic, or send less)"
                ) from None
            counter.seq = seq + 1
            if not seq % _POLL_EVERY:
                self._producer.poll(0)

    def _encoder(self, writer: LogWriterName) -> SenderEncoder:
        enc = self._codec.sender_encoder(
            self.site, self.job_id, self.sender_id, writer, SCHEMA_VERSION
        )
        self._encoders[writer] = enc
        # the C path writes the bytes of SenderEncoder itself: only such an encoder's
        # fixed parts are handed over (a codec of another layout keeps every record here)
        layout = enc.scalar_layout() if type(enc) is SenderEncoder else None
        if self._fastpath is not None and layout is not None:
            self._fastpath.register(writer, *layout)
        return enc

    def _produce_blocking(self, tag: str, payload: bytes, headers: Any = None) -> None:
        """Serve delivery reports until the queue takes the record, or time out."""
        deadline = time.monotonic() + self.max_block_s
        while True:
            self._producer.poll(min(0.05, max(0.0, deadline - time.monotonic())))
            try:
                if headers is None:
                    self._producer.produce(self.topic, payload, self._key)
                else:
                    self._producer.produce(self.topic, payload, self._key, headers=headers)
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise QueueFullError(
                        f"'{tag}' not sent: the producer queue stayed full for "
                        f"{self.max_block_s:g}s ({len(self._producer)} records waiting for "
                        f"{self.bootstrap_servers}); raise queue.buffering.max.messages or "
                        "max_block_s, or check the broker"
                    ) from None

    # -- delivery --------------------------------------------------------------
    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        self._failed += 1
        self._failed_total += 1
        if self._first_error is None:
            self._first_error = err
        log.error("record of site %s not delivered: %s", self.site, err.str())

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
            self._stop_fast_path()
        log.warning("kafka client: %s", err.str())

    @property
    def pending(self) -> int:
        """Records accepted but not yet confirmed or failed."""
        # len() of a producer also counts queued logs, errors and delivery reports
        # (librdkafka's outq_len): serve those first, and never count more records
        # than were accepted and have not failed
        self._producer.poll(0)
        return max(0, min(len(self._producer), self._seq - self._failed_total))

    @property
    def stats(self) -> dict[str, int]:
        """Counts since the sender was made: accepted, delivered, failed, pending."""
        return {
            "accepted": self._seq,
            "delivered": self._seq - self._failed_total - self.pending,
            "failed": self._failed_total,
            "pending": self.pending,
        }

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every accepted record is confirmed (``timeout`` seconds at most;
        None waits until each is delivered or has timed out). Raises
        :class:`DeliveryError` naming how many records were not delivered."""
        remaining = self._producer.flush(-1 if timeout is None else timeout)
        if remaining:  # may include queued logs and errors: count records only
            remaining = self.pending
        failed, first = self._failed, self._first_error
        self._failed, self._first_error = 0, None
        if remaining or failed:
            parts = []
            if failed:
                parts.append(f"{failed} failed ({first.str() if first else 'unknown error'})")
            if remaining:
                parts.append(f"{remaining} still queued after {timeout}s")
            raise DeliveryError(
                f"site {self.site!r}: {failed + remaining} records not delivered to "
                f"{self.topic!r} at {self.bootstrap_servers}: {', '.join(parts)}",
                failed + remaining,
            )

    def close(self, timeout: float | None = None) -> None:
        """Flush, then refuse further records. Raises like :meth:`flush`."""
        with self._lock:
            self._closed = True
            self._stop_fast_path()
        self.flush(timeout)

    def __enter__(self) -> AnalyticsSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"AnalyticsSender(site={self.site!r}, job_id={self.job_id!r}, topic={self.topic!r}, "
            f"bootstrap_servers={self.bootstrap_servers!r})"
        )
