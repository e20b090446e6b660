"""A byte-exact shortcut for the records a training loop sends most: scalars.

An Avro record is the concatenation of its fields, so the fields that never
change for one sender (schema version, site, job, sender id, writer) are encoded
once, and the rest is written by hand when every part is a plain scalar. Any
other record (dicts, arrays, kwargs, huge integers) goes through fastavro. The
bytes are identical either way; the property tests compare them with fastavro's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from io import BytesIO
from typing import Any

from fastavro import schemaless_writer

from flarestream.errors import EncodeError
from flarestream.schemas.record import AnalyticsDataType, LogWriterName, Record

_pack_double = struct.Struct("<d").pack
_ONE_BYTE = [bytes((i,)) for i in range(0x80)]
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_TAG_CACHE_SIZE = 4096
# The field order this shortcut writes; a schema laid out otherwise is not sped up.
FIELD_ORDER = (
    "schema_version", "site", "job_id", "sender_id", "writer",
    "seq", "record_id", "timestamp_ms", "tag", "data_type", "step", "path", "value", "kwargs",
)  # fmt: skip
_HEAD_FIELDS = 5


def _is_long(n: object) -> bool:
    return type(n) is int and _INT64_MIN <= n <= _INT64_MAX


def zigzag_varint(n: int) -> bytes:
    """Avro's encoding of an int/long (zig-zag, then base-128 varint)."""
    if n >= 0:
        n <<= 1
        if n < 0x80:
            return _ONE_BYTE[n]
        if n < 0x4000:
            return bytes(((n & 0x7F) | 0x80, n >> 7))
    else:
        n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_string(text: str) -> bytes:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"string {text[:40]!r} is not valid Unicode: {exc.reason}") from exc
    return zigzag_varint(len(data)) + data


def data_type_codes(schema: dict[str, Any]) -> dict[AnalyticsDataType, bytes]:
    """Avro enum index of each data type, as encoded bytes."""
    field = next(f for f in schema["fields"] if f["name"] == "data_type")
    return {AnalyticsDataType[s]: zigzag_varint(i) for i, s in enumerate(field["type"]["symbols"])}


class SenderEncoder:
    """Encodes records whose site, job, sender id and writer are fixed.

    ``fallback`` encodes a whole :class:`Record` (anything but plain scalars
    without kwargs). Safe to share between threads: the only state is a cache of
    encoded tags.
    """

    __slots__ = (
        "_dt_codes",
        "_fallback",
        "_last_ms",
        "_prefix",
        "_rid_prefix",
        "_tags",
        "head",
    )

    def __init__(
        self,
        head: tuple[str, str, str, LogWriterName, int],
        prefix: bytes | None,
        data_type_codes: dict[AnalyticsDataType, bytes],
        fallback: Callable[[Record], bytes],
    ) -> None:
        self.head = head
        self._prefix = prefix  # None: every record goes through the fallback
        # "replace": a sender_id that is not Unicode has no prefix, so the fallback
        # (which raises EncodeError) handles its records and this is never used
        self._rid_prefix = (head[2] + "-").encode("utf-8", "replace")
        # a loop sends many records per millisecond: reuse its bytes. One (ms, bytes)
        # tuple, swapped whole, so a thread never pairs one ms with another's bytes.
        self._last_ms = (0, b"\x00")
        self._dt_codes = data_type_codes
        self._tags: dict[str, bytes] = {}
        self._fallback = fallback

    def scalar_layout(self) -> tuple[bytes, bytes, bytes, bytes] | None:
        """The fixed bytes of this encoder's plain scalar records, for a C encoder that
        writes the same bytes: (framing header + per-sender fields, ``"<sender_id>-"``,
        SCALAR's enum index, METRIC's enum index); None when every record takes the
        fallback (a schema of another layout, or fields that cannot be encoded)."""
        if self._prefix is None:
            return None
        codes = self._dt_codes
        return (
            self._prefix,
            self._rid_prefix,
            codes[AnalyticsDataType.SCALAR],
            codes[AnalyticsDataType.METRIC],
        )

    def encode(
        self,
        seq: int,
        timestamp_ms: int,
        tag: str,
        data_type: AnalyticsDataType,
        value: Any,
        step: int | None = None,
        path: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> bytes:
        cls = type(value)
        if cls is float:
            value_bytes = b"\x06" + _pack_double(value)
        elif cls is int and _INT64_MIN <= value <= _INT64_MAX:
            value_bytes = b"\x04" + zigzag_varint(value)
        elif cls is str:
            value_bytes = b"\x08" + avro_string(value)
        elif cls is bool:
            value_bytes = b"\x02\x01" if value else b"\x02\x00"
        elif value is None:
            value_bytes = b"\x00"
        else:
            value_bytes = b""
        if (
            not value_bytes
            or kwargs
            or self._prefix is None
            or not (_is_long(seq) and _is_long(timestamp_ms))
            or not (step is None or _is_long(step))
        ):  # fastavro writes (or refuses) what this shortcut cannot
            site, job_id, sender_id, writer, version = self.head
            return self._fallback(
                Record(site, job_id, sender_id, seq, timestamp_ms, tag, data_type, value,
                       writer, step, path, kwargs or {}, version)
            )  # fmt: skip
        tag_bytes = self._tags.get(tag)
        if tag_bytes is None:
            if len(self._tags) >= _TAG_CACHE_SIZE:
                self._tags.clear()
            tag_bytes = self._tags[tag] = avro_string(tag)
        last_ms = self._last_ms
        if timestamp_ms != last_ms[0]:
            last_ms = self._last_ms = (timestamp_ms, zigzag_varint(timestamp_ms))
        digits = str(seq).encode()
        return b"".join(
            (
                self._prefix,
                zigzag_varint(seq),
                zigzag_varint(len(self._rid_prefix) + len(digits)),
                self._rid_prefix,
                digits,
                last_ms[1],
                tag_bytes,
                self._dt_codes[data_type],
                b"\x00" if step is None else b"\x02" + zigzag_varint(step),
                b"\x00" if path is None else b"\x02" + avro_string(path),
                value_bytes,
                b"\x00",  # empty kwargs map
            )
        )


def head_prefix(header: bytes, parsed_head: Any, head: tuple[Any, ...]) -> bytes:
    """The framing header plus the encoded per-sender fields."""
    site, job_id, sender_id, writer, version = head
    out = BytesIO()
    out.write(header)
    schemaless_writer(
        out,
        parsed_head,
        {
            "schema_version": version,
            "site": site,
            "job_id": job_id,
            "sender_id": sender_id,
            "writer": writer.name,
        },
    )
    return out.getvalue()


def head_schema(raw_schema: dict[str, Any]) -> dict[str, Any] | None:
    """A record schema of just the leading per-sender fields, or None when the
    schema is not laid out as :data:`FIELD_ORDER`."""
    fields = {f["name"]: f["type"] for f in raw_schema["fields"]}
    if (
        tuple(fields) != FIELD_ORDER
        or fields["value"][:5] != ["null", "boolean", "long", "double", "string"]
        or fields["step"] != ["null", "long"]
        or fields["path"] != ["null", "string"]
    ):
        return None  # the bytes written by hand below assume exactly this layout
    return {
        "type": "record",
        "name": "AnalyticsRecordHead",
        "namespace": raw_schema.get("namespace"),
        "fields": raw_schema["fields"][:_HEAD_FIELDS],
    }
