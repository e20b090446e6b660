"""The exception tree. Every error flarestream raises on purpose derives from
:class:`FlarestreamError`; messages say what was wrong and what to do.

Validation errors also derive from the built-in type NVFlare raises for the same
input (``TypeError`` or ``ValueError``), so code written against NVFlare's
``AnalyticsSender`` catches them unchanged.
"""

from __future__ import annotations


class FlarestreamError(Exception):
    """Root of every error raised by flarestream."""


class ConfigError(FlarestreamError, ValueError):
    """A setting is missing, unknown or malformed."""


class InvalidRecordError(FlarestreamError, TypeError):
    """A tracking call was given a value of the wrong type (NVFlare raises TypeError)."""


class InvalidRecordValueError(FlarestreamError, ValueError):
    """A tracking call was given a value of the right type but out of range."""


class RecordTooLargeError(InvalidRecordValueError):
    """The Kafka client refuses a record as larger than ``message.max.bytes``."""


class EncodeError(InvalidRecordError):
    """A value NVFlare accepts cannot be written losslessly on the wire."""


class DecodeError(FlarestreamError):
    """Bytes are not a flarestream record: bad framing, truncated or corrupt body."""


class UnknownSchemaError(DecodeError):
    """The writer-schema fingerprint of a message is not known to this codec."""


class DeliveryError(FlarestreamError):
    """Records were accepted by a sender but not confirmed by the broker."""

    def __init__(self, message: str, undelivered: int) -> None:
        super().__init__(message)
        self.undelivered = undelivered


class QueueFullError(FlarestreamError, BufferError):
    """The producer's local queue stayed full for longer than the configured bound."""


class BrokerError(FlarestreamError):
    """The local Kafka broker could not be started, reached or stopped."""


class TopicError(FlarestreamError):
    """A topic could not be created, or exists with different settings."""
