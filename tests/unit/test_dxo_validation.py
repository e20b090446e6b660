"""The CONTRACT's validation rules, beyond the NVFlare vectors.

Each rule is checked through ``create_analytic_dxo`` (what a user calls through
the sender) and, where the two could differ, through ``validate_call``.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import numpy as np
import pytest

from flarestream.errors import DecodeError, FlarestreamError
from flarestream.schemas import (
    AnalyticsDataType,
    LogWriterName,
    create_analytic_dxo,
    from_dxo,
    validate_call,
)
from flarestream.schemas.dxo import record_from_dxo

DT = AnalyticsDataType
TB = LogWriterName.TORCH_TB


def _dxo(value: Any, data_type: AnalyticsDataType = DT.SCALAR, **kwargs: Any) -> dict[str, Any]:
    return create_analytic_dxo("tag-x", value, data_type, TB, **kwargs)


def _raises(exc_type: type[Exception], value: Any, data_type: Any, **kwargs: Any) -> Exception:
    with pytest.raises(exc_type) as info:
        create_analytic_dxo("tag-x", value, data_type, TB, **kwargs)
    assert isinstance(info.value, FlarestreamError)
    return info.value


# -- global_step ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "step", [1.5, 2.0, "3", [1]], ids=["float", "integral-float", "str", "list"]
)
def test_non_integer_global_step_is_a_type_error(step: object) -> None:
    error = _raises(TypeError, 0.5, DT.SCALAR, global_step=step)
    assert not isinstance(error, ValueError)


@pytest.mark.parametrize("step", [-1, np.int64(-5)], ids=["int", "numpy-int"])
def test_negative_global_step_is_a_value_error(step: object) -> None:
    error = _raises(ValueError, 0.5, DT.SCALAR, global_step=step)
    assert not isinstance(error, TypeError)


@pytest.mark.parametrize(
    "step", [np.int64(7), np.int32(7), np.uint8(7), np.uint64(7)], ids=lambda s: type(s).__name__
)
def test_numpy_integer_global_step_is_accepted_as_python_int(step: object) -> None:
    data = _dxo(0.5, global_step=step)["data"]
    assert data["global_step"] == 7 and type(data["global_step"]) is int
    kw_step = data["analytics_kwargs"]["global_step"]
    assert kw_step == 7 and type(kw_step) is int


def test_bool_global_step_is_accepted_as_int_like_nvflare() -> None:
    # NVFlare checks isinstance(step, int), which a bool passes; flarestream must not
    # refuse what NVFlare accepts, and the wire field is a long, so it becomes 1.
    data = _dxo(0.5, global_step=True)["data"]
    assert data["global_step"] == 1 and type(data["global_step"]) is int


def test_global_step_zero_is_kept() -> None:
    data = _dxo(0.5, global_step=0)["data"]
    assert data["global_step"] == 0
    assert data["analytics_kwargs"] == {"global_step": 0}


def test_global_step_absent_leaves_no_step_and_no_kwargs() -> None:
    assert _dxo(0.5)["data"] == {"track_key": "tag-x", "track_value": 0.5}


# -- SCALAR / METRIC ---------------------------------------------------------------------
@pytest.mark.parametrize("data_type", [DT.SCALAR, DT.METRIC])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float32(0.5), 0.5),
        (np.float64(0.25), 0.25),
        (np.int64(3), 3),
        (np.array(1.5), 1.5),
        (np.array(4, dtype=np.int16), 4),
    ],
    ids=["np.float32", "np.float64", "np.int64", "0-d float array", "0-d int array"],
)
def test_numpy_scalar_value_is_normalised_to_python_number(
    data_type: AnalyticsDataType, value: Any, expected: float | int
) -> None:
    got = _dxo(value, data_type)["data"]["track_value"]
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("data_type", [DT.SCALAR, DT.METRIC])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_scalar_is_accepted(data_type: AnalyticsDataType, value: float) -> None:
    got = _dxo(value, data_type)["data"]["track_value"]
    assert type(got) is float
    assert (math.isnan(got) and math.isnan(value)) or got == value


@pytest.mark.parametrize("data_type", [DT.SCALAR, DT.METRIC])
@pytest.mark.parametrize(
    "value",
    [np.array([1.0]), np.array([[1]]), "0.5", None, 1 + 2j, np.complex64(1), [0.5]],
    ids=["shape-1", "shape-1x1", "str", "None", "complex", "np.complex", "list"],
)
def test_non_scalar_value_for_scalar_type_is_a_type_error(
    data_type: AnalyticsDataType, value: Any
) -> None:
    error = _raises(TypeError, value, data_type)
    assert "tag-x" in str(error)


# -- SCALARS / METRICS, PARAMETERS / TAGS, TEXT -----------------------------------------
@pytest.mark.parametrize("data_type", [DT.SCALARS, DT.METRICS])
def test_dict_of_numbers_is_normalised(data_type: AnalyticsDataType) -> None:
    value = {"a": np.float32(0.5), "b": np.int64(2), "c": 1.0, "d": 3}
    got = _dxo(value, data_type)["data"]["track_value"]
    assert got == {"a": 0.5, "b": 2, "c": 1.0, "d": 3}
    assert [type(v) for v in got.values()] == [float, int, float, int]


@pytest.mark.parametrize("data_type", [DT.SCALARS, DT.METRICS])
@pytest.mark.parametrize(
    "value",
    [{"a": "b"}, {"a": None}, {"a": [1.0]}, {"a": np.array([1.0])}, [1.0], 1.0],
    ids=["str-entry", "None-entry", "list-entry", "array-entry", "list", "float"],
)
def test_numeric_dict_type_refuses_anything_else(data_type: AnalyticsDataType, value: Any) -> None:
    _raises(TypeError, value, data_type)


@pytest.mark.parametrize("data_type", [DT.PARAMETERS, DT.TAGS])
def test_parameters_and_tags_need_a_dict(data_type: AnalyticsDataType) -> None:
    _raises(TypeError, "not a dict", data_type)
    _raises(TypeError, [("a", 1)], data_type)
    assert _dxo({"k": "v"}, data_type)["data"]["track_value"] == {"k": "v"}


def test_text_needs_a_str() -> None:
    _raises(TypeError, 5, DT.TEXT)
    _raises(TypeError, b"bytes", DT.TEXT)
    assert _dxo("", DT.TEXT)["data"]["track_value"] == ""


def test_path_kwarg_must_be_str() -> None:
    _raises(TypeError, "x", DT.TEXT, path=5)
    data = _dxo("x", DT.TEXT, path="a/b.txt")["data"]
    assert data["path"] == "a/b.txt"
    assert data["analytics_kwargs"] == {"path": "a/b.txt"}


@pytest.mark.parametrize(
    "data_type", [DT.IMAGE, DT.PARAMETER, DT.TAG, DT.MODEL, DT.LOG_RECORD, DT.INIT_DATA]
)
def test_unchecked_types_pass_any_value_through(data_type: AnalyticsDataType) -> None:
    value = object()
    assert _dxo(value, data_type)["data"]["track_value"] is value


# -- tag, data_type and writer -----------------------------------------------------------
def test_tag_must_be_str() -> None:
    with pytest.raises(TypeError) as info:
        create_analytic_dxo(b"tag", 0.5, DT.SCALAR, TB)
    assert isinstance(info.value, FlarestreamError)


@pytest.mark.parametrize("data_type", ["SCALAR", None, 1], ids=["str", "None", "int"])
def test_data_type_must_be_the_enum(data_type: object) -> None:
    _raises(TypeError, 0.5, data_type)


def test_writer_must_be_the_enum() -> None:
    with pytest.raises(TypeError) as info:
        create_analytic_dxo("t", 0.5, DT.SCALAR, "TORCH_TENSORBOARD")
    assert isinstance(info.value, FlarestreamError)


class _NVFlare:
    """Stand-ins for NVFlare's own enum classes: same class and member names."""

    class AnalyticsDataType(enum.Enum):
        SCALAR = "SCALAR"

    class LogWriterName(enum.Enum):
        MLFLOW = "MLFLOW"


class _Kind(enum.Enum):
    SCALAR = "SCALAR"


def test_nvflare_enum_classes_of_the_same_names_are_accepted() -> None:
    # a site may still pass NVFlare's own enums
    nv_data_type, nv_writer = _NVFlare.AnalyticsDataType.SCALAR, _NVFlare.LogWriterName.MLFLOW
    meta = create_analytic_dxo("t", 0.5, nv_data_type, nv_writer)["meta"]
    assert meta["analytics_data_type"] is DT.SCALAR
    assert meta["tracker_key"] is LogWriterName.MLFLOW


def test_other_enum_with_a_member_of_the_same_name_is_refused() -> None:
    _raises(TypeError, 0.5, _Kind.SCALAR)


# -- validate_call itself ------------------------------------------------------------------
def test_validate_call_splits_step_and_path_from_other_kwargs_without_mutating() -> None:
    kwargs = {"global_step": np.int64(3), "path": "p", "walltime": 1.5}
    snapshot = dict(kwargs)
    tag, dt, value, step, path, rest = validate_call("t", np.float32(0.5), DT.SCALAR, kwargs=kwargs)
    assert (tag, dt, value, step, path, rest) == ("t", DT.SCALAR, 0.5, 3, "p", {"walltime": 1.5})
    assert type(step) is int and type(value) is float
    assert kwargs == snapshot


def test_validate_call_takes_global_step_as_an_argument() -> None:
    assert validate_call("t", 1.0, DT.METRIC, 4)[3] == 4


def test_validate_call_refuses_global_step_given_twice() -> None:
    with pytest.raises(TypeError):
        validate_call("t", 1.0, DT.METRIC, 4, {"global_step": 4})


@pytest.mark.parametrize("step", [1.5, -1, True], ids=["float", "negative", "bool"])
def test_validate_call_fast_and_slow_paths_agree_on_global_step(step: object) -> None:
    # plain float/int values may take a shortcut; the rules must be the same
    def outcome(value: object, kwargs: dict[str, Any] | None) -> object:
        try:
            return validate_call("t", value, DT.SCALAR, step, kwargs)[3]
        except (TypeError, ValueError) as exc:
            return type(exc)

    plain = outcome(0.5, None)
    assert plain == outcome(np.float64(0.5), None)
    assert plain == outcome(0.5, {"walltime": 1.0})


# -- reading a DXO back --------------------------------------------------------------------
def test_from_dxo_skips_a_dxo_without_data_type() -> None:
    dxo = {"data_kind": "ANALYTIC", "data": {"track_key": "t", "track_value": 1.0}, "meta": {}}
    assert from_dxo(dxo, LogWriterName.MLFLOW) is None


def test_record_from_dxo_without_data_type_is_a_decode_error() -> None:
    dxo = {"data_kind": "ANALYTIC", "data": {"track_key": "t", "track_value": 1.0}, "meta": {}}
    with pytest.raises(DecodeError):
        record_from_dxo(dxo, site="s", job_id="j", sender_id="x", seq=0, timestamp_ms=0)


@pytest.mark.parametrize(
    ("sender", "receiver", "sent", "read"),
    [
        (LogWriterName.TORCH_TB, LogWriterName.MLFLOW, DT.SCALARS, DT.METRICS),
        (LogWriterName.TORCH_TB, LogWriterName.WANDB, DT.SCALAR, DT.METRIC),
        (LogWriterName.MLFLOW, LogWriterName.TORCH_TB, DT.METRICS, DT.SCALARS),
        (LogWriterName.WANDB, LogWriterName.TORCH_TB, DT.METRIC, DT.SCALAR),
        (LogWriterName.MLFLOW, LogWriterName.WANDB, DT.METRIC, DT.METRIC),
        (LogWriterName.TORCH_TB, LogWriterName.TORCH_TB, DT.SCALAR, DT.SCALAR),
        (LogWriterName.TORCH_TB, LogWriterName.MLFLOW, DT.TEXT, DT.TEXT),
    ],
)
def test_data_type_converts_across_writer_kinds(
    sender: LogWriterName, receiver: LogWriterName, sent: AnalyticsDataType, read: AnalyticsDataType
) -> None:
    value: Any = {"a": 1.0} if sent in (DT.SCALARS, DT.METRICS) else 1.0
    if sent is DT.TEXT:
        value = "x"
    got = from_dxo(create_analytic_dxo("t", value, sent, sender), receiver)
    assert got is not None
    assert got.data_type is read
    assert got.sender is sender
