"""Records <-> bytes: Avro single-object encoding written and read with fastavro.

A message is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the writer schema
(little endian) + the Avro binary body. Any consumer can tell which schema wrote
a message; one that knows several versions of the schema resolves the writer's
version into its own (Avro schema resolution), so adding a field with a default
is compatible both ways.

Every schema is parsed and fingerprinted once, when a :class:`Codec` is made.
Decoding failures of any kind raise :class:`DecodeError` (or its subclass
:class:`UnknownSchemaError`), never a fastavro or Python internal error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from flarestream.errors import DecodeError, EncodeError, UnknownSchemaError
from flarestream.schemas.fastpath import SenderEncoder, data_type_codes, head_prefix, head_schema
from flarestream.schemas.record import AnalyticsDataType, LogWriterName, Record
from flarestream.schemas.values import (
    from_avro_kwargs,
    from_avro_value,
    to_avro_kwargs,
    to_avro_value,
)

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10
RECORD_SCHEMA_NAME = "flarestream.analytics.AnalyticsRecord"

_ENCODER_CACHE_SIZE = 1024
_DATA_TYPES = {m.name: m for m in AnalyticsDataType}
_WRITERS = {m.name: m for m in LogWriterName}


def load_schema(name: str = RECORD_SCHEMA_NAME) -> dict[str, Any]:
    """The JSON of a schema shipped in ``flarestream.schemas`` (file ``<full name>.avsc``)."""
    text = resources.files("flarestream.schemas").joinpath(f"{name}.avsc").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_fingerprint(schema: Mapping[str, Any]) -> bytes:
    """CRC-64-AVRO fingerprint of a schema's parsing canonical form, as single-object
    encoding writes it (8 bytes, little endian)."""
    parsed = parse_schema(dict(schema), _write_hint=False)
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


class Codec:
    """Encode with one writer schema; decode anything written with a known schema.

    ``schema`` is both the writer schema and the reader schema that decoded
    records are resolved into. ``known_schemas`` adds other versions this codec
    can read (older or newer). Thread-safe: a codec holds no mutable state.
    """

    def __init__(
        self,
        schema: Mapping[str, Any] | None = None,
        known_schemas: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        raw = dict(schema) if schema is not None else load_schema()
        self.raw_schema = raw
        self.schema = parse_schema(raw)
        head = head_schema(raw)
        self._head_schema = parse_schema(head) if head is not None else None
        self._dt_codes = data_type_codes(raw)
        self._encoders: dict[tuple[str, str, str, LogWriterName, int], SenderEncoder] = {}
        self.fingerprint = schema_fingerprint(raw)
        self.header = MAGIC + self.fingerprint
        # fingerprint -> (writer schema, reader schema or None when identical)
        self._readers: dict[bytes, tuple[Any, Any]] = {self.fingerprint: (self.schema, None)}
        for other in known_schemas:
            fp = schema_fingerprint(other)
            if fp != self.fingerprint:
                self._readers[fp] = (parse_schema(dict(other)), self.schema)

    # -- writing -------------------------------------------------------------
    def encode_datum(self, datum: Mapping[str, Any]) -> bytes:
        """Frame an Avro datum already in wire layout (see :meth:`to_datum`)."""
        out = BytesIO()
        out.write(self.header)
        try:
            schemaless_writer(out, self.schema, datum)
        except EncodeError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"'{datum.get('tag')}': cannot encode record: {exc}") from exc
        return out.getvalue()

    def encode_record(self, record: Record) -> bytes:
        """Bytes of one record through fastavro alone (the reference path)."""
        return self.encode_datum(self.to_datum(record))

    def sender_encoder(
        self, site: str, job_id: str, sender_id: str, writer: LogWriterName, version: int = 1
    ) -> SenderEncoder:
        """An encoder for one sender's records; plain scalars skip fastavro."""
        head = (site, job_id, sender_id, writer, version)
        enc = self._encoders.get(head)
        if enc is None:
            if len(self._encoders) >= _ENCODER_CACHE_SIZE:
                self._encoders.clear()
            prefix = None
            if self._head_schema is not None:
                try:
                    prefix = head_prefix(self.header, self._head_schema, head)
                except (ValueError, TypeError, AttributeError, OverflowError):
                    prefix = None  # the fallback raises EncodeError naming the tag
            enc = SenderEncoder(head, prefix, self._dt_codes, self.encode_record)
            self._encoders[head] = enc
        return enc

    def encode(self, record: Record) -> bytes:
        """Bytes of one record. Raises :class:`EncodeError` for a value that cannot
        be kept exactly; nothing is written in that case."""
        return self.sender_encoder(
            record.site, record.job_id, record.sender_id, record.writer, record.schema_version
        ).encode(
            record.seq, record.timestamp_ms, record.tag, record.data_type, record.value,
            record.step, record.path, record.kwargs,
        )  # fmt: skip

    @staticmethod
    def to_datum(record: Record) -> dict[str, Any]:
        return {
            "schema_version": record.schema_version,
            "site": record.site,
            "job_id": record.job_id,
            "sender_id": record.sender_id,
            "writer": record.writer.name,
            "seq": record.seq,
            "record_id": record.record_id,
            "timestamp_ms": record.timestamp_ms,
            "tag": record.tag,
            "data_type": record.data_type.name,
            "step": record.step,
            "path": record.path,
            "value": to_avro_value(record.tag, record.value),
            "kwargs": to_avro_kwargs(record.tag, record.kwargs) if record.kwargs else {},
        }

    # -- reading -------------------------------------------------------------
    def writer_fingerprint(self, data: bytes) -> bytes:
        """The fingerprint in a message's header; DecodeError if it has no valid header."""
        if len(data) < HEADER_SIZE:
            raise DecodeError(f"message of {len(data)} bytes is too short for a record header")
        if data[:2] != MAGIC:
            raise DecodeError(
                f"message does not start with the Avro single-object marker C3 01 "
                f"(got {bytes(data[:2]).hex(' ')})"
            )
        return bytes(data[2:HEADER_SIZE])

    def decode_datum(self, data: bytes) -> dict[str, Any]:
        """The Avro datum of a message, resolved into this codec's schema."""
        if data[:HEADER_SIZE] == self.header:  # the common case: our own schema
            writer, reader = self.schema, None
        else:
            fp = self.writer_fingerprint(data)
            try:
                writer, reader = self._readers[fp]
            except KeyError:
                raise UnknownSchemaError(
                    f"message written with unknown schema fingerprint {fp.hex()}; "
                    "give this codec that schema (known_schemas) or upgrade flarestream"
                ) from None
        stream = BytesIO(data)
        stream.seek(HEADER_SIZE)
        try:
            datum = schemaless_reader(stream, writer, reader)
        except Exception as exc:  # fastavro raises many types on corrupt input
            reason = f"{type(exc).__name__}: {exc}"
            raise DecodeError(f"corrupt or truncated record body: {reason}") from exc
        if stream.tell() != len(data):
            raise DecodeError(f"{len(data) - stream.tell()} unexpected bytes after the record body")
        if type(datum) is not dict:
            raise DecodeError("record body is not an Avro record")
        return datum

    def decode(self, data: bytes) -> Record:
        """The :class:`Record` in a message; DecodeError for anything that is not one."""
        return self.from_datum(self.decode_datum(data))

    @staticmethod
    def from_datum(datum: Mapping[str, Any]) -> Record:
        """A :class:`Record` from a decoded datum (positional: this runs per message)."""
        try:
            value = datum["value"]
            if type(value) is dict:
                value = from_avro_value(value)
            kwargs = datum["kwargs"]
            if kwargs:
                kwargs = from_avro_kwargs(kwargs)
            return Record(
                datum["site"],
                datum["job_id"],
                datum["sender_id"],
                datum["seq"],
                datum["timestamp_ms"],
                datum["tag"],
                _DATA_TYPES[datum["data_type"]],
                value,
                _WRITERS[datum["writer"]],
                datum["step"],
                datum["path"],
                kwargs,
                datum["schema_version"],
            )
        except KeyError as exc:
            raise DecodeError(f"record lacks or has an unknown value for {exc}") from exc


@lru_cache(maxsize=1)
def default_codec() -> Codec:
    """The process-wide codec for the schema this version of flarestream writes."""
    return Codec()


def encode(record: Record) -> bytes:
    return default_codec().encode(record)


def decode(data: bytes) -> Record:
    return default_codec().decode(data)
