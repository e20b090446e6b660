"""flarestream's DXO layer against NVFlare 2.9.0's own outputs (the vector file).

Every valid case: ``create_analytic_dxo`` makes NVFlare's DXO, ``from_dxo`` gives
each receiver kind what NVFlare gives it, and the DXO survives the wire (record ->
Avro bytes -> record -> DXO). Every invalid case raises NVFlare's exception type,
which is also a ``FlarestreamError``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from flarestream.errors import FlarestreamError
from flarestream.schemas import (
    AnalyticsDataType,
    Codec,
    LogWriterName,
    create_analytic_dxo,
    from_dxo,
    to_dxo,
)
from flarestream.schemas.dxo import received, record_from_dxo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vectors

VALID = vectors.valid_cases()
INVALID = vectors.invalid_cases()
RECEIVERS = [LogWriterName.TORCH_TB, LogWriterName.MLFLOW, LogWriterName.WANDB]
EXCEPTIONS: dict[str, type[Exception]] = {"TypeError": TypeError, "ValueError": ValueError}


def _call(case: dict[str, Any]) -> dict[str, Any]:
    args = vectors.decode_special(case["args"])
    return create_analytic_dxo(
        args["tag"], args["value"], args["data_type"], args["writer"], **args["kwargs"]
    )


def _expected_received(case: dict[str, Any], receiver: LogWriterName) -> dict[str, Any]:
    out = vectors.decode_special(case["from_dxo"][receiver.name])
    out["data_type"] = AnalyticsDataType[out["data_type"]]
    out["sender"] = LogWriterName[out["sender"]]
    return out


def _received_fields(got: Any) -> dict[str, Any]:
    names = ("tag", "value", "data_type", "step", "path", "kwargs", "sender")
    return {name: getattr(got, name) for name in names}


def test_vector_file_has_every_case() -> None:
    # guards the parametrisation below: a broken split would silently test nothing
    assert vectors.load_vectors()["nvflare_version"] == "2.9.0"
    assert len(VALID) == 19
    assert len(INVALID) == 11
    assert len(VALID) + len(INVALID) == len(vectors.cases())
    assert len({case["name"] for case in vectors.cases()}) == len(vectors.cases())


def test_tests_data_copy_matches_shared_vectors() -> None:
    if not vectors.SHARED_COPY.is_file():
        pytest.skip(f"{vectors.SHARED_COPY} is not present; nothing to compare the copy with")
    assert vectors.DATA_COPY.read_bytes() == vectors.SHARED_COPY.read_bytes()


def test_analytics_data_type_members_match_nvflare() -> None:
    expected = [tuple(pair) for pair in vectors.load_vectors()["enums"]["AnalyticsDataType"]]
    assert len(expected) == 13
    assert [(m.name, m.value) for m in AnalyticsDataType] == expected


def test_log_writer_name_members_match_nvflare() -> None:
    expected = [tuple(pair) for pair in vectors.load_vectors()["enums"]["LogWriterName"]]
    assert expected == [
        ("TORCH_TB", "TORCH_TENSORBOARD"),
        ("MLFLOW", "MLFLOW"),
        ("WANDB", "WEIGHTS_AND_BIASES"),
    ]
    assert [(m.name, m.value) for m in LogWriterName] == expected


@pytest.mark.parametrize("case", VALID, ids=[case["name"] for case in VALID])
def test_create_analytic_dxo_gives_nvflare_dxo(case: dict[str, Any]) -> None:
    expected = vectors.decode_special(case["dxo"])
    got = _call(case)
    assert got["data_kind"] == "ANALYTIC"
    # `same` is type-strict: ints stay ints, numpy scalars arrive as Python numbers
    vectors.assert_same(got, expected)


@pytest.mark.parametrize("receiver", RECEIVERS, ids=[r.name for r in RECEIVERS])
@pytest.mark.parametrize("case", VALID, ids=[case["name"] for case in VALID])
def test_from_dxo_gives_each_receiver_what_nvflare_gives(
    case: dict[str, Any], receiver: LogWriterName
) -> None:
    dxo = vectors.decode_special(case["dxo"])
    got = from_dxo(dxo, receiver)
    assert got is not None
    vectors.assert_same(_received_fields(got), _expected_received(case, receiver))


@pytest.mark.parametrize("receiver", RECEIVERS, ids=[r.name for r in RECEIVERS])
@pytest.mark.parametrize("case", VALID, ids=[case["name"] for case in VALID])
def test_decoded_record_reads_for_each_receiver_as_nvflare(
    case: dict[str, Any], receiver: LogWriterName
) -> None:
    codec = Codec()
    record = record_from_dxo(
        vectors.decode_special(case["dxo"]),
        site="site-1",
        job_id="job",
        sender_id="s1",
        seq=0,
        timestamp_ms=0,
    )
    back = codec.decode(codec.encode(record))
    vectors.assert_same(
        _received_fields(received(back, receiver)), _expected_received(case, receiver)
    )


@pytest.mark.parametrize("case", VALID, ids=[case["name"] for case in VALID])
def test_dxo_survives_the_wire(case: dict[str, Any]) -> None:
    expected = vectors.decode_special(case["dxo"])
    codec = Codec()
    record = record_from_dxo(
        expected, site="site-1", job_id="job-7", sender_id="abc", seq=41, timestamp_ms=1_700_000
    )
    data = codec.encode(record)
    assert data == codec.encode_record(record)  # fast path and fastavro agree
    back = codec.decode(data)
    assert (back.site, back.job_id, back.sender_id, back.seq, back.timestamp_ms) == (
        "site-1",
        "job-7",
        "abc",
        41,
        1_700_000,
    )
    vectors.assert_same(to_dxo(back), expected)


@pytest.mark.parametrize("case", INVALID, ids=[case["name"] for case in INVALID])
def test_invalid_call_raises_nvflare_exception_type(case: dict[str, Any]) -> None:
    expected = EXCEPTIONS[case["error"]["type"]]
    with pytest.raises(expected) as info:
        _call(case)
    assert isinstance(info.value, FlarestreamError)
    # an `except TypeError` written for NVFlare must not catch a ValueError case, and back
    other = ValueError if expected is TypeError else TypeError
    assert not isinstance(info.value, other)


def test_shareable_example_dxo_reads_back_unchanged() -> None:
    shareable = vectors.decode_special(vectors.load_vectors()["shareable_example"])
    nvflare_dxo = shareable["DXO"]
    dxo = {"data_kind": "ANALYTIC", "data": nvflare_dxo["data"], "meta": nvflare_dxo["meta"]}
    record = record_from_dxo(dxo, site="s", job_id="j", sender_id="x", seq=0, timestamp_ms=0)
    codec = Codec()
    vectors.assert_same(to_dxo(codec.decode(codec.encode(record))), dxo)
