"""The two replay targets that are not sinks of their own: JSON Lines
(:class:`JsonLinesTarget`) and another topic (:class:`TopicTarget`).

Both follow the sink contract (:class:`~flarestream.consumers.sink.Sink`); each states
what its ``flush`` guarantees.
"""

from __future__ import annotations

import base64
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from flarestream import settings
from flarestream.connection import check_connection
from flarestream.consumers.replay_source import Undecodable
from flarestream.consumers.sink import Delivered, Rejection, Sink
from flarestream.errors import ConfigError, DeliveryError

# -- JSON Lines ------------------------------------------------------------------------
NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # reused: saves a build per line


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON: NaN and +-infinity become the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``; a numpy array becomes ``{"dtype", "shape",
    "base64"}`` (C order, the dtype as numpy spells it, e.g. ``"<f4"``)."""
    cls = type(value)
    if cls is float:
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else NON_FINITE[value]
    if cls is str or cls is int or cls is bool or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "tobytes") and hasattr(value, "shape"):
        return {
            "dtype": value.dtype.str,
            "shape": list(value.shape),
            "base64": base64.b64encode(value.tobytes(order="C")).decode("ascii"),
        }
    return value


def to_json(d: Delivered) -> dict[str, Any]:
    """One JSON Lines object: Kafka coordinates, then the decoded record."""
    r = d.record
    return {
        "topic": d.topic,
        "partition": d.partition,
        "offset": d.offset,
        "kafka_timestamp_ms": d.timestamp_ms,
        "key": d.key.decode("utf-8", "replace") if d.key is not None else None,
        "record_id": r.record_id,
        "site": r.site,
        "job_id": r.job_id,
        "sender_id": r.sender_id,
        "seq": r.seq,
        "timestamp_ms": r.timestamp_ms,
        "writer": r.writer.name,
        "tag": r.tag,
        "data_type": r.data_type.name,
        "step": r.step,
        "path": r.path,
        "value": json_safe(r.value),
        "kwargs": json_safe(r.kwargs) if r.kwargs else {},
        "schema_version": r.schema_version,
    }


class JsonLinesTarget(Sink):
    """One JSON object per record (see :func:`to_json`) to a file or stdout (``-``).
    The file is replaced; ``flush`` makes what was written durable (fsync)."""

    name = "jsonl"
    description = "one JSON object per record"

    def __init__(self, path: str | os.PathLike[str] = "-") -> None:
        self.path = os.fspath(path)
        self._fo: IO[str] | None = None

    def open(self) -> None:
        if self._fo is None:
            if self.path == "-":
                self._fo = sys.stdout
            else:
                try:
                    self._fo = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
                except OSError as exc:
                    raise ConfigError(f"cannot write {self.path}: {exc.strerror}") from None

    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        assert self._fo is not None, "open() first"
        encode = _ENCODER.encode
        self._fo.write("".join(encode(to_json(d)) + "\n" for d in batch))
        return ()

    def flush(self) -> None:
        if self._fo is not None:
            self._fo.flush()
            if self._fo is not sys.stdout:
                os.fsync(self._fo.fileno())

    def close(self) -> None:
        if self._fo is not None and self._fo is not sys.stdout:
            self._fo.close()
        self._fo = None

    def describe(self) -> Mapping[str, Any]:
        return {"sink": self.name, "path": self.path}


# -- another topic ---------------------------------------------------------------------
class TopicTarget(Sink):
    """Re-produces each message byte for byte, with its key, headers and timestamp,
    through an idempotent producer (so a record keeps its record id). ``flush``
    raises DeliveryError unless every message is confirmed. A replay that is run
    twice into the same topic writes everything twice: audit finds those doubles."""

    name = "topic"
    description = "the original bytes into another topic"

    def __init__(
        self, bootstrap_servers: str, topic: str, client_config: Mapping[str, Any] | None = None
    ) -> None:
        self.bootstrap_servers, self.topic = bootstrap_servers, topic
        self._config = settings.kafka_client_config(client_config)
        self._producer: Producer | None = None
        self._failed: list[str] = []

    def open(self) -> None:
        if self._producer is not None:
            return
        check_connection(self.bootstrap_servers, self._config, who="replay --to-topic")
        self._producer = Producer(
            {
                **self._config,
                "bootstrap.servers": self.bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "compression.type": "lz4",
                "on_delivery": self._on_delivery,
            }
        )
        try:
            meta = self._producer.list_topics(self.topic, timeout=30)
        except KafkaException as exc:
            raise ConfigError(f"cannot reach {self.bootstrap_servers}: {exc}") from None
        found = meta.topics.get(self.topic)
        if found is None or found.error is not None:
            raise ConfigError(
                f"target topic {self.topic!r} does not exist at {self.bootstrap_servers}; "
                f"create it first: flarestream topic create {self.topic} --partitions N"
            )

    def _produce(self, value: bytes, key: bytes | None, ts: int, headers: Any) -> None:
        assert self._producer is not None, "open() first"
        while True:
            try:
                if ts > 0:
                    self._producer.produce(self.topic, value, key, timestamp=ts, headers=headers)
                else:
                    self._producer.produce(self.topic, value, key, headers=headers)
                return
            except BufferError:
                self._producer.poll(0.1)  # the local queue is full: serve deliveries

    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        for d in batch:
            self._produce(d.raw, d.key, d.timestamp_ms, list(d.headers) or None)
        return ()

    def write_raw(self, message: Undecodable) -> None:
        """Copy a message that is not a record as it is (a faithful copy of a range)."""
        self._produce(message.raw, message.key, message.timestamp_ms, list(message.headers) or None)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(err.str())

    def flush(self) -> None:
        if self._producer is None:
            return
        remaining = self._producer.flush(60)
        failed, self._failed = self._failed, []
        if remaining or failed:
            raise DeliveryError(
                f"{remaining + len(failed)} messages not delivered to {self.topic!r}"
                + (f": {failed[0]}" if failed else ""),
                remaining + len(failed),
            )

    def close(self) -> None:
        self._producer = None  # flushed by the last flush(); nothing else to release

    def describe(self) -> Mapping[str, Any]:
        return {"sink": self.name, "topic": self.topic, "bootstrap": self.bootstrap_servers}
