"""AnalyticsSender without a broker: NVFlare's validation rules, construction checks,
closing, a full queue and undelivered records.

The sender is pointed at a 127.0.0.1 port nobody listens on, so every accepted record
just waits in the producer's queue (``stats["pending"]``).
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flarestream.deploy import free_port
from flarestream.errors import (
    ConfigError,
    DeliveryError,
    EncodeError,
    FlarestreamError,
    QueueFullError,
)
from flarestream.producer import AnalyticsDataType as T
from flarestream.producer import AnalyticsSender, LogWriterName

VECTORS = json.loads(
    (Path(__file__).parents[1] / "data" / "analytics-vectors-2.9.0.json").read_text()
)


class AnalyticsDataType(enum.Enum):
    """Stands in for NVFlare's own enum: another class, same name and member names."""

    SCALARS = "SCALARS"
    SCALAR = "SCALAR"
    IMAGE = "IMAGE"
    TEXT = "TEXT"
    LOG_RECORD = "LOG_RECORD"
    PARAMETER = "PARAMETER"
    PARAMETERS = "PARAMETERS"
    METRIC = "METRIC"
    METRICS = "METRICS"
    MODEL = "MODEL"
    TAG = "TAG"
    TAGS = "TAGS"
    INIT_DATA = "INIT_DATA"


# NVFlare's LogWriterName stand-in: built with the functional API to carry NVFlare's
# class name without shadowing flarestream's LogWriterName in this module
NvLogWriterName = enum.Enum(
    "LogWriterName",
    [("TORCH_TB", "TORCH_TENSORBOARD"), ("MLFLOW", "MLFLOW"), ("WANDB", "WEIGHTS_AND_BIASES")],
)


def _unused_address() -> str:
    return f"127.0.0.1:{free_port()}"


def _discard(sender: AnalyticsSender) -> None:
    """Close without waiting for a broker that will never answer."""
    with contextlib.suppress(DeliveryError):
        sender.close(timeout=0)


@pytest.fixture
def make_sender() -> Iterator[Callable[..., AnalyticsSender]]:
    """Senders pointed at an unused port (records only queue); discarded afterwards."""
    made: list[AnalyticsSender] = []

    def make(**kwargs: Any) -> AnalyticsSender:
        args: dict[str, Any] = {
            "site": "site-1",
            "job_id": "job-1",
            "bootstrap_servers": _unused_address(),
            "topic": "unit.sender",
        }
        args.update(kwargs)
        sender = AnalyticsSender(**args)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        _discard(sender)


@pytest.fixture
def sender(make_sender: Callable[..., AnalyticsSender]) -> AnalyticsSender:
    """A sender that already accepted two records (so rejected calls can be seen not to
    disturb them)."""
    s = make_sender()
    s.add_scalar("warmup", 0.5, 0)
    s.add_text("warmup-text", "hello", 1)
    assert s.stats["accepted"] == 2
    return s


def _assert_untouched(sender: AnalyticsSender, accepted: int) -> None:
    """A rejected call consumed no sequence number and left earlier records queued."""
    assert sender.stats["accepted"] == accepted
    assert sender.stats["pending"] == accepted
    assert sender.stats["failed"] == 0


def _names_tag(message: str, tag: object) -> bool:
    """The message names a str tag in quotes ('tag' or 'tag.key'), any other by its repr."""
    if isinstance(tag, str):
        return f"'{tag}'" in message or f"'{tag}." in message
    return repr(tag) in message


# -- NVFlare's own cases ---------------------------------------------------------


def _from_vector(obj: Any) -> Any:
    """A vector's JSON value as the Python object NVFlare was called with."""
    if isinstance(obj, dict):
        if "__enum__" in obj:
            cls = {"AnalyticsDataType": AnalyticsDataType, "LogWriterName": NvLogWriterName}
            return cls[obj["__enum__"]][obj["name"]]
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        if "__npscalar__" in obj:
            return np.dtype(obj["dtype"]).type(obj["__npscalar__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        return {k: _from_vector(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_vector(v) for v in obj]
    return obj


_GOOD = [c for c in VECTORS["cases"] if "error" not in c]
_BAD = [c for c in VECTORS["cases"] if "error" in c]


def test_vectors_hold_accepted_and_rejected_cases() -> None:
    assert len(_GOOD) >= 15
    assert len(_BAD) >= 10


@pytest.mark.parametrize("case", _BAD, ids=[c["name"] for c in _BAD])
def test_input_nvflare_rejects_raises_the_same_builtin_type_naming_the_tag(
    make_sender: Callable[..., AnalyticsSender], case: dict[str, Any]
) -> None:
    args = _from_vector(case["args"])
    s = make_sender(writer_name=args["writer"])
    s.add_scalar("before", 1.0, 0)
    nv_type = getattr(builtins, case["error"]["type"])
    other = ({TypeError, ValueError} - {nv_type}).pop()

    with pytest.raises(nv_type) as caught:
        s.add(args["tag"], args["value"], args["data_type"], **args["kwargs"])

    assert isinstance(caught.value, FlarestreamError)
    assert not isinstance(caught.value, other), "a different built-in type than NVFlare's"
    assert _names_tag(str(caught.value), args["tag"]), str(caught.value)
    _assert_untouched(s, 1)


@pytest.mark.parametrize("case", _GOOD, ids=[c["name"] for c in _GOOD])
def test_input_nvflare_accepts_is_accepted(
    make_sender: Callable[..., AnalyticsSender], case: dict[str, Any]
) -> None:
    args = _from_vector(case["args"])
    s = make_sender(writer_name=args["writer"])

    s.add(args["tag"], args["value"], args["data_type"], **args["kwargs"])

    assert s.stats == {"accepted": 1, "delivered": 0, "failed": 0, "pending": 1}


# -- every rule of the contract, through every method ----------------------------

# (id, call, tag the message must name, NVFlare's exception type)
_Call = Callable[[AnalyticsSender], None]
_REJECTED: list[tuple[str, _Call, object, type[Exception]]] = [
    ("add-tag-int", lambda s: s.add(5, 0.5, T.SCALAR), 5, TypeError),
    ("add-tag-none", lambda s: s.add(None, 0.5, T.SCALAR), None, TypeError),
    ("add-data-type-str", lambda s: s.add("loss", 0.5, "SCALAR"), "loss", TypeError),
    ("add-data-type-none", lambda s: s.add("loss", 0.5, None), "loss", TypeError),
    ("add-scalar-str", lambda s: s.add("loss", "0.5", T.SCALAR), "loss", TypeError),
    ("add-scalar-none", lambda s: s.add("loss", None, T.SCALAR), "loss", TypeError),
    ("add-scalar-complex", lambda s: s.add("loss", 1j, T.SCALAR), "loss", TypeError),
    (
        "add-scalar-shape-1",
        lambda s: s.add("loss", np.array([1.0]), T.SCALAR),
        "loss",
        TypeError,
    ),
    ("add-metric-str", lambda s: s.add("acc", "high", T.METRIC), "acc", TypeError),
    (
        "add-metric-shape-1",
        lambda s: s.add("acc", np.array([0.5], dtype=np.float32), T.METRIC),
        "acc",
        TypeError,
    ),
    ("add-scalars-list", lambda s: s.add("lr", [0.1], T.SCALARS), "lr", TypeError),
    ("add-scalars-str-value", lambda s: s.add("lr", {"a": "b"}, T.SCALARS), "lr", TypeError),
    ("add-metrics-none-value", lambda s: s.add("m", {"a": None}, T.METRICS), "m", TypeError),
    ("add-metrics-list", lambda s: s.add("m", [1.0], T.METRICS), "m", TypeError),
    ("add-parameters-str", lambda s: s.add("hp", "lr=0.1", T.PARAMETERS), "hp", TypeError),
    ("add-tags-list", lambda s: s.add("labels", ["a"], T.TAGS), "labels", TypeError),
    ("add-text-int", lambda s: s.add("notes", 5, T.TEXT), "notes", TypeError),
    ("add-step-float", lambda s: s.add("loss", 0.5, T.SCALAR, 1.0), "loss", TypeError),
    ("add-step-str", lambda s: s.add("loss", 0.5, T.SCALAR, "3"), "loss", TypeError),
    (
        "add-step-numpy-float",
        lambda s: s.add("loss", 0.5, T.SCALAR, np.float64(3)),
        "loss",
        TypeError,
    ),
    ("add-step-negative", lambda s: s.add("loss", 0.5, T.SCALAR, -1), "loss", ValueError),
    (
        "add-step-negative-kw",
        lambda s: s.add("loss", 0.5, T.SCALAR, global_step=-4),
        "loss",
        ValueError,
    ),
    (
        "add-step-negative-numpy",
        lambda s: s.add("loss", 0.5, T.SCALAR, np.int64(-2)),
        "loss",
        ValueError,
    ),
    ("add-path-int", lambda s: s.add("loss", 0.5, T.SCALAR, path=5), "loss", TypeError),
    ("add_scalar-str", lambda s: s.add_scalar("loss", "x"), "loss", TypeError),
    ("add_scalar-tag-int", lambda s: s.add_scalar(3, 1.0), 3, TypeError),
    ("add_scalar-step-float", lambda s: s.add_scalar("loss", 1.0, 2.5), "loss", TypeError),
    ("add_scalar-step-negative", lambda s: s.add_scalar("loss", 1.0, -1), "loss", ValueError),
    ("add_scalar-path-int", lambda s: s.add_scalar("loss", 1.0, path=1), "loss", TypeError),
    ("add_scalars-list", lambda s: s.add_scalars("lr", [1.0]), "lr", TypeError),
    ("add_scalars-str-value", lambda s: s.add_scalars("lr", {"a": "b"}), "lr", TypeError),
    (
        "add_scalars-array-value",
        lambda s: s.add_scalars("lr", {"a": np.ones(2)}),
        "lr",
        TypeError,
    ),
    ("add_scalars-step-float", lambda s: s.add_scalars("lr", {"a": 1}, 1.5), "lr", TypeError),
    ("add_scalars-step-negative", lambda s: s.add_scalars("lr", {"a": 1}, -9), "lr", ValueError),
    ("add_text-int", lambda s: s.add_text("notes", 42), "notes", TypeError),
    ("add_text-bytes", lambda s: s.add_text("notes", b"hi"), "notes", TypeError),
    ("add_text-path-int", lambda s: s.add_text("notes", "hi", path=7), "notes", TypeError),
    ("add_text-step-negative", lambda s: s.add_text("notes", "hi", -1), "notes", ValueError),
    # types NVFlare does not check: flarestream refuses what it cannot keep exactly
    ("add_image-object", lambda s: s.add_image("img", object()), "img", TypeError),
    (
        "add_image-object-array",
        lambda s: s.add_image("img", np.array([object(), 1])),
        "img",
        TypeError,
    ),
    ("add-parameter-set", lambda s: s.add("lr", {0.1, 0.2}, T.PARAMETER), "lr", TypeError),
    ("add-model-object", lambda s: s.add("net", object(), T.MODEL), "net", TypeError),
    (
        "add-tags-nonstr-key",
        lambda s: s.add("labels", {1: [object()]}, T.TAGS),
        "labels",
        TypeError,
    ),
    (
        "add-kwarg-unencodable",
        lambda s: s.add("loss", 1.0, T.SCALAR, 1, walltime=object()),
        "loss",
        TypeError,
    ),
]


@pytest.mark.parametrize(
    ("call", "tag", "nv_type"),
    [c[1:] for c in _REJECTED],
    ids=[c[0] for c in _REJECTED],
)
def test_bad_call_raises_nvflare_type_naming_tag_and_costs_nothing(
    sender: AnalyticsSender, call: _Call, tag: object, nv_type: type[Exception]
) -> None:
    other = ({TypeError, ValueError} - {nv_type}).pop()

    with pytest.raises(nv_type) as caught:
        call(sender)

    assert isinstance(caught.value, FlarestreamError)
    assert not isinstance(caught.value, other)
    assert _names_tag(str(caught.value), tag), str(caught.value)
    _assert_untouched(sender, 2)


def test_unencodable_value_is_an_encode_error(sender: AnalyticsSender) -> None:
    with pytest.raises(EncodeError, match="'img'"):
        sender.add_image("img", object())
    _assert_untouched(sender, 2)


_ACCEPTED: list[tuple[str, _Call]] = [
    ("float", lambda s: s.add("loss", 0.5, T.SCALAR, 0)),
    ("int", lambda s: s.add("epoch", 7, T.SCALAR)),
    ("nan", lambda s: s.add_scalar("loss", math.nan, 1)),
    ("inf", lambda s: s.add_scalar("loss", -math.inf, 1)),
    ("numpy-float32", lambda s: s.add_scalar("acc", np.float32(0.75), np.int64(2))),
    ("numpy-0d-array", lambda s: s.add("acc", np.array(0.5), T.METRIC, np.uint8(3))),
    ("numpy-step-kw", lambda s: s.add_scalar("acc", 0.5, global_step=np.int32(4))),
    ("scalars-numpy", lambda s: s.add_scalars("lr", {"a": np.float16(1), "b": 2}, 3)),
    ("metrics", lambda s: s.add("m", {"acc": 0.5, "n": np.int64(3)}, T.METRICS, 1)),
    ("parameters", lambda s: s.add("params", {"lr": 0.1, "opt": "adam"}, T.PARAMETERS)),
    ("tags", lambda s: s.add("tags", {"team": "a"}, T.TAGS)),
    ("text-path", lambda s: s.add_text("notes", "hello", path="notes/a.txt")),
    ("image-hwc", lambda s: s.add_image("img", np.zeros((4, 5, 3), dtype=np.uint8), 2)),
    ("parameter", lambda s: s.add("lr", 0.01, T.PARAMETER)),
    ("tag", lambda s: s.add("t", "x", T.TAG)),
    ("log-record", lambda s: s.add("log", {"msg": "hi", "level": 20}, T.LOG_RECORD)),
    ("init-data", lambda s: s.add("init", [1, "a", None], T.INIT_DATA)),
    ("extra-kwargs", lambda s: s.add_scalar("lr", 0.01, 5, path="x/y", walltime=12.5)),
]


@pytest.mark.parametrize("call", [c[1] for c in _ACCEPTED], ids=[c[0] for c in _ACCEPTED])
def test_valid_call_takes_the_next_sequence_number(sender: AnalyticsSender, call: _Call) -> None:
    call(sender)
    assert sender.stats == {"accepted": 3, "delivered": 0, "failed": 0, "pending": 3}


def test_valid_call_after_a_rejected_one_gets_the_next_number(sender: AnalyticsSender) -> None:
    with pytest.raises(TypeError):
        sender.add_scalar("loss", "bad")
    sender.add_scalar("loss", 0.1, 3)
    assert sender.stats["accepted"] == 3
    assert sender.stats["pending"] == 3


# -- global_step given twice -------------------------------------------------------

_TWICE: list[tuple[str, _Call]] = [
    ("add", lambda s: s.add("loss", 0.5, T.SCALAR, 1, global_step=2)),  # type: ignore[misc]
    ("add_scalar", lambda s: s.add_scalar("loss", 0.5, 1, global_step=2)),  # type: ignore[misc]
    ("add_scalars", lambda s: s.add_scalars("lr", {"a": 1}, 1, global_step=2)),  # type: ignore[misc]
    ("add_text", lambda s: s.add_text("notes", "x", 1, global_step=2)),  # type: ignore[misc]
    ("add_image", lambda s: s.add_image("img", np.zeros((2, 2)), 1, global_step=2)),  # type: ignore[misc]
]


@pytest.mark.parametrize("call", [c[1] for c in _TWICE], ids=[c[0] for c in _TWICE])
def test_global_step_positional_and_keyword_is_a_type_error(
    sender: AnalyticsSender, call: _Call
) -> None:
    with pytest.raises(TypeError, match="global_step"):
        call(sender)
    _assert_untouched(sender, 2)


# -- data types from another enum ------------------------------------------------------


@pytest.mark.parametrize("member", list(AnalyticsDataType), ids=lambda m: m.name)
def test_nvflare_like_enum_member_is_accepted(
    make_sender: Callable[..., AnalyticsSender], member: AnalyticsDataType
) -> None:
    values: dict[str, Any] = {
        "SCALARS": {"a": 1.0},
        "SCALAR": 1.0,
        "IMAGE": np.zeros((2, 2), dtype=np.uint8),
        "TEXT": "hi",
        "PARAMETERS": {"lr": 0.1},
        "METRIC": 0.5,
        "METRICS": {"acc": 0.5},
        "TAGS": {"k": "v"},
    }
    s = make_sender()
    s.add("tag", values.get(member.name, "v"), member, 1)
    assert s.stats["accepted"] == 1


def test_nvflare_like_enum_still_has_its_rules_applied(sender: AnalyticsSender) -> None:
    with pytest.raises(TypeError, match="'loss'"):
        sender.add("loss", "high", AnalyticsDataType.SCALAR)
    _assert_untouched(sender, 2)


def test_plain_string_data_type_is_rejected_even_when_it_is_a_member_name(
    sender: AnalyticsSender,
) -> None:
    for text in ("SCALAR", "scalar", AnalyticsDataType.SCALAR.value):
        with pytest.raises(TypeError, match=r"'loss'.*AnalyticsDataType"):
            sender.add("loss", 0.5, text)
    _assert_untouched(sender, 2)


def test_enum_of_another_name_or_unknown_member_is_rejected(sender: AnalyticsSender) -> None:
    class DataType(enum.Enum):
        SCALAR = "SCALAR"

    class AnalyticsDataType(enum.Enum):  # NVFlare-like name, member flarestream lacks
        HISTOGRAM = "HISTOGRAM"

    with pytest.raises(TypeError, match="'loss'"):
        sender.add("loss", 0.5, DataType.SCALAR)
    with pytest.raises(TypeError, match="'loss'"):
        sender.add("loss", 0.5, AnalyticsDataType.HISTOGRAM)
    _assert_untouched(sender, 2)


# -- writer name ------------------------------------------------------------------------


def test_get_writer_name_defaults_to_tensorboard(
    make_sender: Callable[..., AnalyticsSender],
) -> None:
    assert make_sender().get_writer_name() is LogWriterName.TORCH_TB


@pytest.mark.parametrize("writer", list(LogWriterName), ids=lambda w: w.name)
def test_get_writer_name_returns_the_writer_given(
    make_sender: Callable[..., AnalyticsSender], writer: LogWriterName
) -> None:
    assert make_sender(writer_name=writer).get_writer_name() is writer


def test_nvflare_like_writer_name_is_converted(make_sender: Callable[..., AnalyticsSender]) -> None:
    s = make_sender(writer_name=NvLogWriterName.MLFLOW)
    assert s.get_writer_name() is LogWriterName.MLFLOW


def test_writer_name_as_plain_string_is_refused_at_construction() -> None:
    with pytest.raises(FlarestreamError, match="writer_name"):
        AnalyticsSender(
            site="s", job_id="j", bootstrap_servers=_unused_address(), writer_name="MLFLOW"
        )


# -- construction -------------------------------------------------------------------------

_BAD_CONSTRUCTION: list[tuple[str, dict[str, Any], str]] = [
    ("site-slash", {"site": "a/b"}, "site"),
    ("site-backslash", {"site": "a\\b"}, "site"),
    ("site-dotdot", {"site": ".."}, "site"),
    ("site-dot", {"site": "."}, "site"),
    ("site-newline", {"site": "a\nb"}, "site"),
    ("site-nul", {"site": "a\x00b"}, "site"),
    ("site-escape", {"site": "a\x1b[31m"}, "site"),
    ("site-del", {"site": "a\x7f"}, "site"),
    ("site-empty", {"site": ""}, "site"),
    ("site-blank", {"site": "   "}, "site"),
    ("site-not-str", {"site": 3}, "site"),
    ("job-empty", {"job_id": ""}, "job_id"),
    ("job-slash", {"job_id": "../job"}, "job_id"),
    ("job-none", {"job_id": None}, "job_id"),
    ("topic-empty", {"topic": ""}, "topic"),
    ("max-block-negative", {"max_block_s": -0.5}, "max_block_s"),
    ("unknown-setting", {"config": {"no.such.setting": "1"}}, "no.such.setting"),
    ("bad-setting-value", {"config": {"batch.size": "big"}}, "batch.size"),
    ("idempotence-off", {"config": {"enable.idempotence": False}}, "enable.idempotence"),
    ("idempotence-off-str", {"config": {"enable.idempotence": "false"}}, "enable.idempotence"),
    ("acks-1", {"config": {"acks": "1"}}, "acks"),
    ("acks-0", {"config": {"acks": 0}}, "acks"),
]


@pytest.mark.parametrize(
    ("kwargs", "named"), [c[1:] for c in _BAD_CONSTRUCTION], ids=[c[0] for c in _BAD_CONSTRUCTION]
)
def test_bad_construction_raises_config_error_naming_the_setting(
    kwargs: dict[str, Any], named: str
) -> None:
    args: dict[str, Any] = {"site": "site-1", "job_id": "job-1"}
    args.update(kwargs)
    with pytest.raises(ConfigError) as caught:
        AnalyticsSender(bootstrap_servers=_unused_address(), **args)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, FlarestreamError)
    assert named in str(caught.value)


@pytest.mark.parametrize(
    "config",
    [{"acks": "all"}, {"acks": -1}, {"acks": "-1"}, {"enable.idempotence": True}],
    ids=["acks-all", "acks-minus-1", "acks-minus-1-str", "idempotence-on"],
)
def test_settings_equal_to_the_required_ones_are_allowed(
    make_sender: Callable[..., AnalyticsSender], config: dict[str, Any]
) -> None:
    s = make_sender(config=config)
    s.add_scalar("loss", 1.0)
    assert s.stats["accepted"] == 1


# -- closing ---------------------------------------------------------------------------------


def test_context_manager_closes_the_sender() -> None:
    with AnalyticsSender(site="s", job_id="j", bootstrap_servers=_unused_address()) as s:
        assert s.stats["accepted"] == 0
    with pytest.raises(FlarestreamError, match="closed"):
        s.add_scalar("after", 1.0)
    assert s.stats["accepted"] == 0


_AFTER_CLOSE: list[tuple[str, _Call]] = [
    ("add", lambda s: s.add("late", 1.0, T.SCALAR)),
    ("add_scalar", lambda s: s.add_scalar("late", 1.0)),
    ("add_scalars", lambda s: s.add_scalars("late", {"a": 1.0})),
    ("add_text", lambda s: s.add_text("late", "x")),
    ("add_image", lambda s: s.add_image("late", np.zeros((2, 2)))),
]


@pytest.mark.parametrize("call", [c[1] for c in _AFTER_CLOSE], ids=[c[0] for c in _AFTER_CLOSE])
def test_add_after_close_raises_naming_the_tag(
    make_sender: Callable[..., AnalyticsSender], call: _Call
) -> None:
    s = make_sender()
    s.close()
    with pytest.raises(FlarestreamError, match="closed") as caught:
        call(s)
    assert "'late'" in str(caught.value)
    assert s.stats["accepted"] == 0


# -- a full queue, and records that are never delivered ----------------------------------------


def test_full_queue_raises_queue_full_error_after_max_block(
    make_sender: Callable[..., AnalyticsSender],
) -> None:
    s = make_sender(
        config={"queue.buffering.max.messages": 5, "message.timeout.ms": 3000}, max_block_s=0.2
    )
    for step in range(5):
        s.add_scalar("loss", float(step), step)

    with pytest.raises(QueueFullError) as caught:
        s.add_scalar("loss", 5.0, 5)

    assert isinstance(caught.value, BufferError)
    assert isinstance(caught.value, FlarestreamError)
    assert "'loss'" in str(caught.value)
    assert s.stats == {"accepted": 5, "delivered": 0, "failed": 0, "pending": 5}


def test_flush_with_timeout_and_no_broker_raises_delivery_error_with_the_count(
    make_sender: Callable[..., AnalyticsSender],
) -> None:
    s = make_sender()
    for step in range(3):
        s.add_scalar("loss", 0.1, step)

    with pytest.raises(DeliveryError) as caught:
        s.flush(timeout=0.5)

    assert caught.value.undelivered == 3
    assert "3 records not delivered" in str(caught.value)
    # a timed-out flush gives up waiting, not the records
    assert s.stats == {"accepted": 3, "delivered": 0, "failed": 0, "pending": 3}


def test_close_with_no_broker_raises_delivery_error_for_timed_out_records(
    make_sender: Callable[..., AnalyticsSender],
) -> None:
    s = make_sender(config={"message.timeout.ms": 1000})
    for step in range(4):
        s.add_scalar("loss", 0.1, step)
    s.add_text("notes", "never arrives")

    with pytest.raises(DeliveryError) as caught:
        s.close()

    assert caught.value.undelivered == 5
    assert "5 records not delivered" in str(caught.value)
    assert "timed out" in str(caught.value)
    assert s.stats == {"accepted": 5, "delivered": 0, "failed": 5, "pending": 0}
    with pytest.raises(FlarestreamError, match="closed"):
        s.add_scalar("loss", 0.2, 5)


def test_context_manager_exit_reports_undelivered_records() -> None:
    with pytest.raises(DeliveryError) as caught:  # noqa: SIM117
        with AnalyticsSender(
            site="s",
            job_id="j",
            bootstrap_servers=_unused_address(),
            config={"message.timeout.ms": 1000},
        ) as s:
            s.add_scalar("loss", 0.5, 0)
            s.add_scalar("loss", 0.4, 1)
    assert caught.value.undelivered == 2


def test_a_record_larger_than_the_client_allows_is_refused_at_the_call_naming_the_tag() -> None:
    from flarestream.errors import FlarestreamError
    from flarestream.producer import AnalyticsDataType, AnalyticsSender

    sender = AnalyticsSender(
        site="site-1",
        job_id="job",
        bootstrap_servers="127.0.0.1:9",
        config={"message.max.bytes": 10_000, "message.timeout.ms": 1000},
    )
    sender.add("small", "x" * 100, AnalyticsDataType.TEXT)
    with pytest.raises(ValueError, match=r"'huge'.*refuses this record") as caught:
        sender.add("huge", "x" * 50_000, AnalyticsDataType.TEXT)
    assert isinstance(caught.value, FlarestreamError)
    assert sender.stats["accepted"] == 1  # the refused record took no sequence number
