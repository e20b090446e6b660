"""Schema evolution: a field added with a default is compatible both ways.

v2 here is the shipped schema (v1) plus ``region`` (string, default "") and
``note`` (nullable, default null) at the end. A consumer that knows the other
version reads its bytes (Avro resolution); one that does not refuses them with
``UnknownSchemaError`` naming the fingerprint, never guessing.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from flarestream.errors import DecodeError, UnknownSchemaError
from flarestream.schemas import (
    AnalyticsDataType,
    Codec,
    LogWriterName,
    Record,
    load_schema,
    schema_fingerprint,
)

NEW_FIELDS = [
    {"name": "region", "type": "string", "default": ""},
    {"name": "note", "type": ["null", "string"], "default": None},
]


def _v2() -> dict[str, Any]:
    schema = copy.deepcopy(load_schema())
    schema["fields"].extend(copy.deepcopy(NEW_FIELDS))
    return schema


def _records() -> list[Record]:
    dt = AnalyticsDataType
    return [
        Record("site-1", "job", "s1", 0, 1_000, "loss", dt.SCALAR, 0.5, step=1),
        Record("site-1", "job", "s1", 1, 1_001, "loss", dt.SCALAR, math.inf),
        Record("site-2", "job", "s2", 7, 1_002, "m", dt.METRICS, {"a": 1.0, "b": 2},
               LogWriterName.MLFLOW, 3, "p", {"walltime": 2.5, "cfg": {"x": [1, 2]}}),
        Record("site-2", "job", "s2", 8, 1_003, "notes", dt.TEXT, "hello", LogWriterName.WANDB),
    ]  # fmt: skip


def _v2_bytes(
    codec: Codec, record: Record, region: str = "eu-west", note: str | None = "n"
) -> bytes:
    return codec.encode_datum(Codec.to_datum(record) | {"region": region, "note": note})


def test_v2_has_its_own_fingerprint() -> None:
    assert schema_fingerprint(_v2()) != schema_fingerprint(load_schema())
    assert Codec(schema=_v2()).header[2:] == schema_fingerprint(_v2())


def test_doc_and_default_edits_keep_the_fingerprint() -> None:
    # docs and defaults are not part of the parsing canonical form
    edited = copy.deepcopy(load_schema())
    edited["doc"] = "reworded"
    edited["fields"][0]["doc"] = "reworded too"
    edited["fields"][0]["default"] = 2
    assert schema_fingerprint(edited) == schema_fingerprint(load_schema())


@pytest.mark.parametrize("record", _records(), ids=lambda r: r.tag)
def test_v1_consumer_that_knows_v2_reads_v2_bytes(record: Record) -> None:
    v2_writer = Codec(schema=_v2())
    data = _v2_bytes(v2_writer, record)
    assert data[2:10] == schema_fingerprint(_v2())
    v1_reader = Codec(known_schemas=[_v2()])
    assert v1_reader.decode(data) == record
    datum = v1_reader.decode_datum(data)
    assert "region" not in datum and "note" not in datum


@pytest.mark.parametrize("record", _records(), ids=lambda r: r.tag)
def test_v2_consumer_reads_v1_bytes_with_defaults_filled_in(record: Record) -> None:
    v1_bytes = Codec().encode(record)
    v2_reader = Codec(schema=_v2(), known_schemas=[load_schema()])
    datum = v2_reader.decode_datum(v1_bytes)
    assert datum["region"] == ""
    assert datum["note"] is None
    assert v2_reader.decode(v1_bytes) == record


def test_v2_codec_reads_its_own_new_fields() -> None:
    v2 = Codec(schema=_v2())
    record = _records()[0]
    datum = v2.decode_datum(_v2_bytes(v2, record, region="us-east", note=None))
    assert (datum["region"], datum["note"]) == ("us-east", None)
    assert v2.decode(_v2_bytes(v2, record)) == record


@pytest.mark.parametrize("record", _records(), ids=lambda r: r.tag)
def test_v2_codec_encodes_without_the_fast_path_and_v1_reads_it(record: Record) -> None:
    # the fast path only knows v1's layout; a v2 codec must still write valid v2 bytes
    v2 = Codec(schema=_v2())
    data = v2.encode(record)
    assert data == v2.encode_record(record)
    assert v2.decode_datum(data)["region"] == ""  # fastavro filled the default on write
    assert Codec(known_schemas=[_v2()]).decode(data) == record


def test_v1_consumer_without_v2_refuses_naming_the_fingerprint() -> None:
    data = _v2_bytes(Codec(schema=_v2()), _records()[0])
    with pytest.raises(UnknownSchemaError) as info:
        Codec().decode(data)
    assert schema_fingerprint(_v2()).hex() in str(info.value)


def test_v2_consumer_without_v1_refuses_naming_the_fingerprint() -> None:
    data = Codec().encode(_records()[0])
    with pytest.raises(UnknownSchemaError) as info:
        Codec(schema=_v2()).decode(data)
    assert schema_fingerprint(load_schema()).hex() in str(info.value)


def test_knowing_its_own_schema_twice_is_harmless() -> None:
    codec = Codec(known_schemas=[load_schema(), load_schema()])
    record = _records()[2]
    assert codec.decode(codec.encode(record)) == record


def test_incompatible_version_is_a_decode_error_not_a_crash() -> None:
    # a "v3" that turned the tag into an int cannot be resolved into v1
    v3 = copy.deepcopy(load_schema())
    for field in v3["fields"]:
        if field["name"] == "tag":
            field["type"] = "int"
    datum = Codec.to_datum(_records()[0]) | {"tag": 5}
    data = Codec(schema=v3).encode_datum(datum)
    with pytest.raises(DecodeError) as info:
        Codec(known_schemas=[v3]).decode(data)
    assert not isinstance(info.value, UnknownSchemaError)
