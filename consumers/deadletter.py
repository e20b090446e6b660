"""The dead-letter topic: where records that cannot be delivered to a sink go.

Each dead letter keeps the original value, key and headers, and adds headers
naming the source topic, partition and offset, the sink and the error, so an
operator can inspect it and replay it once fixed. The producer is idempotent;
:meth:`DeadLetters.flush` raises unless every dead letter is confirmed, and the
consumer loop calls it before committing the offsets those records came from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from flarestream.errors import DeliveryError

log = logging.getLogger("flarestream.consumers.deadletter")

HEADER_PREFIX = "flarestream.dlq."
Headers = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None


class DeadLetters:
    """Produces dead letters for one sink to one topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        sink: str,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.sink = sink
        self._failed: list[str] = []
        self._producer = Producer(
            {
                **(client_config or {}),
                "bootstrap.servers": bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "logger": log,
                "on_delivery": self._on_delivery,
            }
        )

    def send(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes,
        key: bytes | str | None,
        headers: Headers,
        reason: str,
    ) -> None:
        """Queue one dead letter (delivery is confirmed by :meth:`flush`)."""
        ours: list[tuple[str, str | bytes | None]] = [
            (HEADER_PREFIX + "topic", topic.encode()),
            (HEADER_PREFIX + "partition", str(partition).encode()),
            (HEADER_PREFIX + "offset", str(offset).encode()),
            (HEADER_PREFIX + "sink", self.sink.encode()),
            (HEADER_PREFIX + "error", reason.encode("utf-8", "replace")[:4000]),
        ]
        log.warning(
            "dead letter from %s[%d]@%d (%s): %s", topic, partition, offset, self.sink, reason
        )
        original = list(headers.items() if isinstance(headers, Mapping) else headers or [])
        while True:
            try:
                self._producer.produce(self.topic, value, key, headers=original + ours)
                return
            except BufferError:
                self._producer.poll(0.1)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(err.str())

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every dead letter is confirmed; DeliveryError otherwise."""
        remaining = self._producer.flush(timeout)
        failed, self._failed = self._failed, []
        if remaining or failed:
            raise DeliveryError(
                f"{len(failed) + remaining} dead letters not delivered to {self.topic!r}"
                + (f": {failed[0]}" if failed else ""),
                len(failed) + remaining,
            )


def dead_letter_info(headers: Headers) -> dict[str, str]:
    """The flarestream headers of a dead letter, without the prefix."""
    items = headers.items() if isinstance(headers, Mapping) else headers or []
    return {
        k[len(HEADER_PREFIX) :]: v.decode("utf-8", "replace") if isinstance(v, bytes) else v or ""
        for k, v in items
        if k.startswith(HEADER_PREFIX)
    }
