"""Property tests of the codec.

1. Any valid record round-trips exactly (NaN-aware, numpy-aware, types kept),
   and the fast path writes the very bytes fastavro writes.
2. Any byte string either decodes to a Record or raises DecodeError: random
   bytes, and valid messages truncated, bit-flipped, spliced or re-bodied.
"""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flarestream.errors import DecodeError
from flarestream.schemas import AnalyticsDataType, Codec, LogWriterName, Record, default_codec
from flarestream.schemas.fastpath import zigzag_varint

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vectors

DT = AnalyticsDataType
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies --------------------------------------------------------------------------------
texts = st.text(max_size=20)
floats = st.floats(allow_nan=True, allow_infinity=True)
int64s = st.integers(INT64_MIN, INT64_MAX) | st.sampled_from([INT64_MIN, INT64_MAX, 0, -1])
big_ints = st.integers(INT64_MAX + 1, 2**200) | st.integers(-(2**200), INT64_MIN - 1)
numbers = floats | int64s | big_ints
plain = st.none() | st.booleans() | int64s | floats | texts
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | floats | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
ARRAY_DTYPES = ["|u1", "<i2", ">i2", "<i8", "<f4", ">f4", "<f8", ">f8", "|b1", "<c8", "<U3"]
arrays = hnp.arrays(
    dtype=st.sampled_from(ARRAY_DTYPES).map(np.dtype),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
)
images = arrays | arrays.map(np.asfortranarray) | arrays.map(lambda a: a.T)

VALUES: dict[AnalyticsDataType, st.SearchStrategy[Any]] = {
    DT.SCALAR: numbers | st.booleans(),
    DT.METRIC: numbers,
    DT.SCALARS: st.dictionaries(texts, floats | int64s, max_size=5),
    DT.METRICS: st.dictionaries(texts, floats | int64s | big_ints, max_size=5),
    DT.PARAMETERS: st.dictionaries(texts, plain, max_size=5)
    | st.dictionaries(texts, json_values, max_size=4),
    DT.TAGS: st.dictionaries(texts, texts, max_size=5),
    DT.TEXT: st.text(max_size=200),
    DT.IMAGE: images,
    DT.MODEL: images | json_values,
    DT.PARAMETER: plain | json_values,
    DT.TAG: texts,
    DT.LOG_RECORD: json_values,
    DT.INIT_DATA: json_values | arrays,
}
kwarg_keys = texts.filter(lambda k: k not in ("global_step", "path"))


@st.composite
def records(draw: st.DrawFn) -> Record:
    data_type = draw(st.sampled_from(list(AnalyticsDataType)))
    return Record(
        site=draw(texts),
        job_id=draw(texts),
        sender_id=draw(texts),
        seq=draw(st.integers(0, INT64_MAX)),
        timestamp_ms=draw(int64s),
        tag=draw(texts),
        data_type=data_type,
        value=draw(VALUES[data_type]),
        writer=draw(st.sampled_from(list(LogWriterName))),
        step=draw(st.none() | st.integers(0, INT64_MAX)),
        path=draw(st.none() | texts),
        kwargs=draw(st.dictionaries(kwarg_keys, json_values, max_size=3) | st.just({})),
    )


# the records a training loop sends most, which the fast path handles
scalar_records = st.builds(
    Record,
    site=texts,
    job_id=texts,
    sender_id=texts,
    seq=st.integers(0, INT64_MAX),
    timestamp_ms=int64s,
    tag=texts,
    data_type=st.sampled_from([DT.SCALAR, DT.METRIC, DT.TEXT, DT.PARAMETER]),
    value=st.none() | st.booleans() | int64s | floats | texts,
    writer=st.sampled_from(list(LogWriterName)),
    step=st.none() | st.integers(0, INT64_MAX),
    path=st.none() | texts,
)


# -- property 1: round trip and byte identity -----------------------------------------------
@PROPERTY
@given(records())
def test_any_valid_record_round_trips_exactly(record: Record) -> None:
    codec = default_codec()
    data = codec.encode(record)
    vectors.assert_same(codec.decode(data), record)


@PROPERTY
@given(records())
def test_fast_path_bytes_equal_fastavro_bytes_for_any_record(record: Record) -> None:
    codec = default_codec()
    assert codec.encode(record) == codec.encode_record(record)


@PROPERTY
@given(scalar_records)
def test_fast_path_bytes_equal_fastavro_bytes_for_scalar_records(record: Record) -> None:
    codec = default_codec()
    data = codec.encode(record)
    assert data == codec.encode_record(record)
    vectors.assert_same(codec.decode(data), record)


@PROPERTY
@given(st.lists(scalar_records, min_size=2, max_size=20))
def test_a_sender_encoder_reused_across_records_stays_exact(batch: list[Record]) -> None:
    # one encoder per sender caches per-sender bytes (header, tags, last timestamp)
    codec = Codec()
    head = batch[0]
    for record in batch:
        record.site, record.job_id, record.sender_id = head.site, head.job_id, head.sender_id
        record.writer = head.writer
        assert codec.encode(record) == codec.encode_record(record)


@settings(max_examples=300, deadline=None)
@given(int64s)
def test_zigzag_varint_matches_fastavro_long(n: int) -> None:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", n)
    assert zigzag_varint(n) == out.getvalue()


@PROPERTY
@given(
    st.sampled_from([DT.SCALAR, DT.METRIC]),
    st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint64]),
    st.integers(0, 127),
)
def test_numpy_scalar_values_arrive_as_python_numbers(
    data_type: AnalyticsDataType, scalar_type: type, raw: int
) -> None:
    value = scalar_type(raw)
    record = Record("s", "j", "x", 0, 0, "t", data_type, value)
    back = default_codec().decode(default_codec().encode(record)).value
    assert type(back) is type(value.item())
    assert back == value.item() or (math.isnan(back) and math.isnan(value.item()))


# -- property 2: decode never fails with anything but DecodeError ---------------------------
def _decodes_or_refuses(data: bytes, codec: Codec | None = None) -> None:
    codec = codec or default_codec()
    try:
        result = codec.decode(data)
    except DecodeError:
        return
    assert isinstance(result, Record)


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    _decodes_or_refuses(data)


@PROPERTY
@given(st.binary(max_size=300))
def test_valid_header_with_random_body_decodes_or_raises_decode_error(body: bytes) -> None:
    _decodes_or_refuses(default_codec().header + body)


@PROPERTY
@given(records(), st.data())
def test_truncated_message_raises_decode_error(record: Record, data: st.DataObject) -> None:
    message = default_codec().encode(record)
    cut = data.draw(st.integers(0, len(message) - 1), label="cut")
    try:
        default_codec().decode(message[:cut])
    except DecodeError:
        return
    raise AssertionError(f"a message cut to {cut} of {len(message)} bytes decoded")


@PROPERTY
@given(records(), st.data())
def test_bit_flipped_message_decodes_or_raises_decode_error(
    record: Record, data: st.DataObject
) -> None:
    message = bytearray(default_codec().encode(record))
    flips = data.draw(st.lists(st.integers(0, len(message) * 8 - 1), min_size=1, max_size=4))
    for bit in flips:
        message[bit // 8] ^= 1 << (bit % 8)
    _decodes_or_refuses(bytes(message))


@PROPERTY
@given(records(), st.data())
def test_spliced_message_decodes_or_raises_decode_error(
    record: Record, data: st.DataObject
) -> None:
    message = default_codec().encode(record)
    at = data.draw(st.integers(10, len(message)), label="at")
    drop = data.draw(st.integers(0, len(message) - at), label="drop")
    insert = data.draw(st.binary(max_size=16), label="insert")
    _decodes_or_refuses(message[:at] + insert + message[at + drop :])


@PROPERTY
@given(records(), records())
def test_body_of_one_record_with_tail_of_another_decodes_or_raises(a: Record, b: Record) -> None:
    first, second = default_codec().encode(a), default_codec().encode(b)
    _decodes_or_refuses(first[: len(first) // 2] + second[len(second) // 2 :])


@PROPERTY
@given(st.binary(max_size=200))
def test_codec_knowing_two_versions_still_only_raises_decode_error(body: bytes) -> None:
    v2 = default_codec().raw_schema | {
        "fields": [
            *default_codec().raw_schema["fields"],
            {"name": "r", "type": "string", "default": ""},
        ]
    }
    codec = Codec(schema=v2, known_schemas=[default_codec().raw_schema])
    _decodes_or_refuses(default_codec().header + body, codec)
