"""The wire contract: the shipped .avsc, the single-object framing, and what the
codec writes, refuses and reads back.

Independent checks where possible: the reference ``avro`` package parses the
schema and reads our bytes, and the fingerprint is recomputed here with a
CRC-64-AVRO written from the Avro specification.
"""

from __future__ import annotations

import io
import json
import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import numpy as np
import pytest

from flarestream.errors import DecodeError, EncodeError, UnknownSchemaError
from flarestream.schemas import (
    AnalyticsDataType,
    Codec,
    LogWriterName,
    Record,
    decode,
    default_codec,
    encode,
    load_schema,
    schema_fingerprint,
    validate_call,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vectors

DT = AnalyticsDataType
SCHEMA_FILES = sorted(
    (p for p in resources.files("flarestream.schemas").iterdir() if p.name.endswith(".avsc")),
    key=lambda p: p.name,
)


# -- CRC-64-AVRO, from the specification ---------------------------------------------------
_CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> bytes:
    """The Rabin fingerprint of the spec, as single-object encoding writes it."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def _schema_text() -> str:
    return json.dumps(load_schema())


def _reference_schema() -> avro.schema.Schema:
    return avro.schema.parse(_schema_text())


def _record(value: Any = 0.5, data_type: AnalyticsDataType = DT.SCALAR, **fields: Any) -> Record:
    base: dict[str, Any] = {
        "site": "site-1",
        "job_id": "job-1",
        "sender_id": "4f2a",
        "seq": 12,
        "timestamp_ms": 1_717_000_000_123,
        "tag": "train/loss",
        "data_type": data_type,
        "value": value,
    }
    base.update(fields)
    return Record(**base)


def _call_record(tag: str, value: Any, data_type: AnalyticsDataType, **kwargs: Any) -> Record:
    """A record as a sender makes it: NVFlare's validation and normalisation first."""
    tag, dt, value, step, path, rest = validate_call(tag, value, data_type, kwargs=kwargs)
    return Record("site-1", "job-1", "4f2a", 3, 99, tag, dt, value, LogWriterName.MLFLOW,
                  step, path, rest)  # fmt: skip


def _round_trip(record: Record) -> Record:
    codec = default_codec()
    data = codec.encode(record)
    assert data == codec.encode_record(record)
    return codec.decode(data)


# -- the schema file ------------------------------------------------------------------------
def test_crc64_implementation_matches_reference_avro() -> None:
    # guards the independent implementation itself
    for text in ('"int"', '"null"', _reference_schema().canonical_form):
        assert crc64_avro(text.encode()) == avro.schema.parse(text).fingerprint("CRC-64-AVRO")


def test_schema_files_are_named_by_full_name() -> None:
    assert SCHEMA_FILES, "no .avsc shipped in flarestream.schemas"
    for path in SCHEMA_FILES:
        schema = json.loads(path.read_text("utf-8"))
        assert path.name == f"{schema['namespace']}.{schema['name']}.avsc"


def test_schema_parses_with_reference_avro_and_fastavro() -> None:
    for path in SCHEMA_FILES:
        text = path.read_text("utf-8")
        reference = avro.schema.parse(text)
        assert isinstance(reference, avro.schema.NamedSchema)
        assert reference.fullname == path.name.removesuffix(".avsc")
        fastavro.parse_schema(json.loads(text))


def test_both_libraries_agree_on_parsing_canonical_form() -> None:
    parsed = fastavro.parse_schema(load_schema())
    assert fastavro.schema.to_parsing_canonical_form(parsed) == _reference_schema().canonical_form


def test_schema_enums_hold_every_python_enum_member() -> None:
    fields = {f["name"]: f for f in load_schema()["fields"]}
    assert fields["data_type"]["type"]["symbols"] == [m.name for m in AnalyticsDataType]
    assert fields["writer"]["type"]["symbols"] == [m.name for m in LogWriterName]


def test_schema_fields_with_defaults_can_be_resolved() -> None:
    # optional fields must default to null so a reader of a newer schema can fill them
    fields = {f["name"]: f for f in load_schema()["fields"]}
    assert fields["step"]["type"][0] == "null" and fields["step"]["default"] is None
    assert fields["path"]["type"][0] == "null" and fields["path"]["default"] is None
    assert fields["kwargs"]["default"] == {}


# -- framing ---------------------------------------------------------------------------------
def test_message_is_marker_fingerprint_and_body() -> None:
    expected_fp = crc64_avro(_reference_schema().canonical_form.encode("utf-8"))
    data = encode(_record())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == expected_fp
    assert Codec().fingerprint == expected_fp
    assert schema_fingerprint(load_schema()) == expected_fp


def _reference_read(data: bytes) -> dict[str, Any]:
    schema = _reference_schema()
    stream = io.BytesIO(data[10:])
    datum = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(stream))
    assert stream.tell() == len(data) - 10, "reference reader left bytes unread"
    assert isinstance(datum, dict)
    return datum


def test_reference_avro_reads_a_scalar_record() -> None:
    record = _record(0.5, step=3, writer=LogWriterName.WANDB)
    datum = _reference_read(encode(record))
    assert datum == {
        "schema_version": 1,
        "site": "site-1",
        "job_id": "job-1",
        "sender_id": "4f2a",
        "writer": "WANDB",
        "seq": 12,
        "record_id": "4f2a-12",
        "timestamp_ms": 1_717_000_000_123,
        "tag": "train/loss",
        "data_type": "SCALAR",
        "step": 3,
        "path": None,
        "value": 0.5,
        "kwargs": {},
    }


def test_reference_avro_reads_dict_array_and_json_values() -> None:
    scalars = _reference_read(encode(_record({"a": 1.5, "b": 2, "c": "x"}, DT.PARAMETERS)))
    assert scalars["value"] == {"entries": {"a": 1.5, "b": 2, "c": "x"}}
    image = np.arange(6, dtype=np.uint8).reshape(2, 3)
    array = _reference_read(encode(_record(image, DT.IMAGE, path="img/a.png")))
    assert array["value"] == {"dtype": "|u1", "shape": [2, 3], "data": image.tobytes()}
    assert array["path"] == "img/a.png"
    nested = _reference_read(encode(_record([1, [2]], DT.LOG_RECORD, kwargs={"k": {"a": None}})))
    assert json.loads(nested["value"]["json"]) == [1, [2]]
    assert json.loads(nested["kwargs"]["k"]["json"]) == {"a": None}


def test_codec_reads_a_body_written_by_reference_avro() -> None:
    record = _record(0.25, step=5, path="p", kwargs={"walltime": 1.5})
    stream = io.BytesIO()
    avro.io.DatumWriter(_reference_schema()).write(
        default_codec().to_datum(record) | {"value": 0.25, "kwargs": {"walltime": 1.5}},
        avro.io.BinaryEncoder(stream),
    )
    back = decode(default_codec().header + stream.getvalue())
    vectors.assert_same(back, record)


@pytest.mark.parametrize(
    "record",
    [
        _record(0.5),
        _record(-0.0),
        _record(math.nan),
        _record(math.inf, step=0),
        _record(7, step=2**63 - 1),
        _record(-(2**63)),
        _record(True),
        _record(False, path=""),
        _record(None, DT.LOG_RECORD),
        _record("héllo ✓ 𝄞", DT.TEXT, path="notes/ü.txt"),
        _record(1.0, tag=""),
        _record(1.0, tag="ταγ/λ", seq=0, timestamp_ms=-1),
        _record(1.0, seq=2**63 - 1, timestamp_ms=-(2**63)),
        _record(2**64, DT.SCALAR),
        _record(1.0, kwargs={"walltime": 3.5}),
        _record({"a": 1.0}, DT.SCALARS, step=1),
        _record(1.0, writer=LogWriterName.MLFLOW, schema_version=1),
    ],
    ids=lambda r: f"{r.tag}:{type(r.value).__name__}:{r.value!r}"[:40],
)
def test_fast_path_bytes_equal_fastavro_bytes(record: Record) -> None:
    codec = Codec()
    assert codec.encode(record) == codec.encode_record(record)
    vectors.assert_same(codec.decode(codec.encode(record)), record)


# -- bad input on the read side ----------------------------------------------------------------
def test_unknown_fingerprint_is_unknown_schema_error_naming_it() -> None:
    data = encode(_record())
    foreign = bytes(range(8))
    with pytest.raises(UnknownSchemaError) as info:
        decode(data[:2] + foreign + data[10:])
    assert foreign.hex() in str(info.value)
    assert isinstance(info.value, DecodeError)


@pytest.mark.parametrize("cut", [0, 1, 2, 9, 10, 11, -1, -2], ids=lambda c: f"cut{c}")
def test_truncated_message_is_decode_error(cut: int) -> None:
    data = encode(_record(0.5, step=1, path="p"))
    with pytest.raises(DecodeError):
        decode(data[:cut])


@pytest.mark.parametrize("magic", [b"\xc3\x00", b"\x00\x01", b"\x01\xc3", b"Ob"])
def test_wrong_magic_is_decode_error(magic: bytes) -> None:
    data = encode(_record())
    with pytest.raises(DecodeError) as info:
        decode(magic + data[2:])
    assert not isinstance(info.value, UnknownSchemaError)


@pytest.mark.parametrize("garbage", [b"\x00", b"\x02\x02", b"x" * 100])
def test_trailing_garbage_is_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError, match="unexpected bytes"):
        decode(encode(_record()) + garbage)


def _body_with_value(value: tuple[str, Any], **extra: Any) -> bytes:
    codec = default_codec()
    datum = codec.to_datum(_record(None, DT.LOG_RECORD)) | {"value": value} | extra
    out = io.BytesIO()
    fastavro.schemaless_writer(out, codec.schema, datum)
    return codec.header + out.getvalue()


@pytest.mark.parametrize(
    "value",
    [
        ("flarestream.analytics.JsonValue", {"json": "{not json"}),
        ("flarestream.analytics.JsonValue", {"json": "[" * 200_000 + "]" * 200_000}),
        ("flarestream.analytics.NDArray", {"dtype": "O", "shape": [1], "data": b"\0" * 8}),
        ("flarestream.analytics.NDArray", {"dtype": "no-such", "shape": [1], "data": b""}),
        ("flarestream.analytics.NDArray", {"dtype": "<f8", "shape": [3], "data": b"\0" * 8}),
        ("flarestream.analytics.NDArray", {"dtype": "<f8", "shape": [2**62] * 2, "data": b""}),
        ("flarestream.analytics.NDArray", {"dtype": "V0", "shape": [10**12], "data": b""}),
    ],
    ids=["bad-json", "deep-json", "object-dtype", "bad-dtype", "short-data", "huge", "void0"],
)
def test_corrupt_value_inside_a_valid_body_is_decode_error(value: tuple[str, Any]) -> None:
    with pytest.raises(DecodeError):
        decode(_body_with_value(value))


def test_corrupt_kwarg_json_is_decode_error() -> None:
    data = _body_with_value(
        ("null", None), kwargs={"k": ("flarestream.analytics.JsonValue", {"json": "[" * 200_000})}
    )
    with pytest.raises(DecodeError):
        decode(data)


def test_unknown_enum_symbol_is_decode_error() -> None:
    data = bytearray(encode(_record(0.5)))
    # the writer enum follows the header and four leading fields; index 3 does not exist
    head = 10 + 1 + len(b"\x0csite-1") + len(b"\x0ajob-1") + len(b"\x084f2a")
    assert data[head] == 0  # TORCH_TB
    data[head] = 6  # zigzag(3)
    with pytest.raises(DecodeError):
        decode(bytes(data))


# -- every value kind NVFlare allows ---------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "data_type", "expected"),
    [
        (math.nan, DT.SCALAR, math.nan),
        (math.inf, DT.METRIC, math.inf),
        (-math.inf, DT.SCALAR, -math.inf),
        (np.float32(0.1), DT.SCALAR, float(np.float32(0.1))),
        (np.int64(-(2**63)), DT.METRIC, -(2**63)),
        (np.bool_(True), DT.SCALAR, True),
        (np.array(2.5), DT.SCALAR, 2.5),
        (2**100, DT.SCALAR, 2**100),
        (
            {"a": 1.0, "b": np.int64(2), "c": math.nan},
            DT.SCALARS,
            {"a": 1.0, "b": 2, "c": math.nan},
        ),
        ({"acc": np.float32(0.5)}, DT.METRICS, {"acc": 0.5}),
        ({"t1": "x", "t2": ""}, DT.TAGS, {"t1": "x", "t2": ""}),
        (
            {"lr": 0.1, "opt": "adam", "n": 3, "on": True, "none": None},
            DT.PARAMETERS,
            {"lr": 0.1, "opt": "adam", "n": 3, "on": True, "none": None},
        ),
        ({"layers": [64, 32], "big": 2**70}, DT.PARAMETERS, {"layers": [64, 32], "big": 2**70}),
        ({}, DT.PARAMETERS, {}),
        ("", DT.TEXT, ""),
        ("multi\nline ✓ \x00 nul", DT.TEXT, "multi\nline ✓ \x00 nul"),
        (0.01, DT.PARAMETER, 0.01),
        ("v", DT.TAG, "v"),
        (None, DT.LOG_RECORD, None),
        ({"msg": "hi", "level": 20}, DT.LOG_RECORD, {"msg": "hi", "level": 20}),
        ([1, "two", [3.0]], DT.INIT_DATA, [1, "two", [3.0]]),
    ],
    ids=[
        "nan", "inf", "-inf", "np.float32", "np.int64-min", "np.bool", "0-d->scalar",
        "bigint", "scalars", "metrics", "tags", "params-mixed", "params-nested", "params-empty",
        "text-empty", "text-unicode", "param", "tag", "log-none", "log-dict", "init-list",
    ],
)  # fmt: skip
def test_value_kind_round_trips(value: Any, data_type: AnalyticsDataType, expected: Any) -> None:
    back = _round_trip(_call_record("kind", value, data_type, global_step=1))
    vectors.assert_same(back.value, expected)
    assert back.step == 1 and back.data_type is data_type


def _images() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    hwc = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    chw = rng.random((3, 4, 5), dtype=np.float32)
    chw[0, 0, 0] = np.nan
    return [
        ("hw-uint8", hwc[:, :, 0].copy()),
        ("hwc-uint8", hwc),
        ("chw-float32", chw),
        ("hw-float32", chw[0]),
        ("big-endian-f4", chw.astype(">f4")),
        ("big-endian-i2", np.arange(-6, 6, dtype=">i2").reshape(3, 4)),
        ("fortran-order", np.asfortranarray(hwc)),
        ("non-contiguous", hwc[::2, ::-1, 1]),
        ("transposed", chw.T),
        ("0-d-float32", np.array(1.5, dtype=np.float32)),
        ("0-d-uint8", np.array(200, dtype=np.uint8)),
        ("empty-1d", np.zeros((0,), dtype=np.float32)),
        ("empty-2d", np.zeros((0, 3), dtype=np.uint8)),
        ("bool", np.array([[True, False]])),
        ("complex64", np.array([1 + 2j], dtype=np.complex64)),
        ("unicode", np.array(["ab", "ü"])),
        ("datetime64", np.array(["2024-01-01"], dtype="datetime64[D]")),
    ]


@pytest.mark.parametrize("data_type", [DT.IMAGE, DT.MODEL])
@pytest.mark.parametrize(("name", "array"), _images(), ids=[n for n, _ in _images()])
def test_array_round_trips_with_dtype_shape_and_bytes(
    name: str, array: np.ndarray, data_type: AnalyticsDataType
) -> None:
    back = _round_trip(_call_record("img", array, data_type, global_step=2)).value
    assert isinstance(back, np.ndarray)
    assert back.dtype.str == array.dtype.str
    assert back.shape == array.shape
    assert back.tobytes() == array.tobytes(order="C")
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable  # a sink may scale or transpose it in place


def test_json_kwargs_round_trip_exactly() -> None:
    kwargs: dict[str, Any] = {
        "walltime": 12.5,
        "list": [1, "a", 2.5, None, True, [], {}],
        "nested": {"a": {"b": [1, {"c": None}]}, "ü": "✓"},
        "none": None,
        "flag": False,
        "big": 2**80,
        "negbig": -(2**70),
        "int64max": 2**63 - 1,
        "nan_in_list": [math.nan, math.inf, -math.inf],
        "np_scalar": np.float64(0.5),
        "text": "",
    }
    record = _call_record("kw", 0.5, DT.SCALAR, global_step=3, path="p/q", **kwargs)
    back = _round_trip(record)
    vectors.assert_same(back.kwargs, kwargs | {"np_scalar": 0.5})
    assert back.analytics_kwargs["global_step"] == 3
    assert back.analytics_kwargs["path"] == "p/q"


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "data_type"),
    [
        ((1, 2), DT.PARAMETER),
        ({1, 2}, DT.PARAMETER),
        (frozenset({1}), DT.TAG),
        (object(), DT.MODEL),
        (_Opaque(), DT.INIT_DATA),
        (b"raw bytes", DT.LOG_RECORD),
        (bytearray(b"x"), DT.LOG_RECORD),
        ({1: "a"}, DT.PARAMETERS),
        ({"a": {2: "b"}}, DT.TAGS),
        ({"a": (1, 2)}, DT.PARAMETERS),
        ({"a": b"x"}, DT.PARAMETERS),
        ([1, object()], DT.INIT_DATA),
        (np.array([object()], dtype=object), DT.IMAGE),
        (np.array([1, "a"], dtype=object), DT.MODEL),
        (np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")]), DT.IMAGE),
        ({"a": np.zeros(2)}, DT.PARAMETERS),
        (1 + 2j, DT.PARAMETER),
    ],
    ids=[
        "tuple", "set", "frozenset", "object", "custom-object", "bytes", "bytearray",
        "int-keys", "nested-int-keys", "dict-of-tuple", "dict-of-bytes", "list-of-object",
        "object-array", "mixed-object-array", "structured-array", "dict-of-array", "complex",
    ],
)  # fmt: skip
def test_value_that_cannot_be_kept_exactly_is_refused_naming_the_tag(
    value: Any, data_type: AnalyticsDataType
) -> None:
    record = _call_record("my-tag", value, data_type)
    codec = Codec()
    for encoder in (codec.encode, codec.encode_record):
        with pytest.raises(EncodeError) as info:
            encoder(record)
        assert isinstance(info.value, TypeError)
        assert "my-tag" in str(info.value)


@pytest.mark.parametrize(
    "kwarg",
    [(1, 2), {1, 2}, object(), b"x", {1: "a"}, {"a": [(1,)]}, np.zeros(2), np.array([None])],
    ids=["tuple", "set", "object", "bytes", "int-keys", "nested-tuple", "array", "object-array"],
)
def test_kwarg_that_cannot_be_kept_exactly_is_refused_naming_the_tag(kwarg: Any) -> None:
    record = _call_record("my-tag", 0.5, DT.SCALAR, extra=kwarg)
    codec = Codec()
    for encoder in (codec.encode, codec.encode_record):
        with pytest.raises(EncodeError) as info:
            encoder(record)
        assert isinstance(info.value, TypeError)
        assert "my-tag" in str(info.value)


@pytest.mark.parametrize(
    "fields",
    [{"step": 2**63}, {"step": 2**64 + 5}, {"seq": 2**63}, {"timestamp_ms": -(2**63) - 1}],
    ids=["step-2^63", "step-2^64+5", "seq-2^63", "ts-below-min"],
)
def test_long_field_beyond_64_bits_is_refused_not_wrapped(fields: dict[str, Any]) -> None:
    codec = Codec()
    record = _record(0.5, **fields)
    for encoder in (codec.encode, codec.encode_record):
        with pytest.raises(EncodeError):
            encoder(record)


@pytest.mark.parametrize(
    "fields",
    [
        {"site": "bad\ud800"},
        {"job_id": "\udc80"},
        {"sender_id": "s\ud800"},
        {"tag": "bad\udfff"},
        {"path": "\ud800"},
        {"value": "\ud800"},
    ],
    ids=["site", "job_id", "sender_id", "tag", "path", "value"],
)
def test_string_that_is_not_unicode_is_encode_error(fields: dict[str, str]) -> None:
    codec = Codec()
    record = _record(**({"value": 0.5} | fields))  # type: ignore[arg-type]
    for encoder in (codec.encode, codec.encode_record):
        with pytest.raises(EncodeError):
            encoder(record)


def test_a_failed_encode_leaves_the_sender_usable() -> None:
    codec = Codec()
    with pytest.raises(EncodeError):
        codec.encode(_record(object(), DT.MODEL))
    good = _record(0.5)
    assert codec.decode(codec.encode(good)) == good
