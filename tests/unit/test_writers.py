"""The NVFlare-style tracking writers without a broker: NVFlare's rules at every method,
the writer kind of the sender a writer makes, and who closes what.

Senders point at a 127.0.0.1 port nobody listens on, so accepted records just queue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from flarestream.deploy import free_port
from flarestream.errors import ConfigError, DeliveryError, FlarestreamError
from flarestream.producer import (
    AnalyticsSender,
    LogWriterName,
    MLflowWriter,
    SummaryWriter,
    WandBWriter,
)

_Writer = SummaryWriter | MLflowWriter | WandBWriter


def _sender_kwargs() -> dict[str, Any]:
    return {
        "site": "site-1",
        "job_id": "job-1",
        "bootstrap_servers": f"127.0.0.1:{free_port()}",
        "topic": "unit.writers",
    }


@pytest.fixture
def sender() -> Iterator[AnalyticsSender]:
    s = AnalyticsSender(**_sender_kwargs())
    yield s
    with contextlib.suppress(DeliveryError):
        s.close(timeout=0)


def _assert_untouched(sender: AnalyticsSender, accepted: int) -> None:
    assert sender.stats["accepted"] == accepted
    assert sender.stats["pending"] == accepted


# (id, writer class, call, tag the message must name, NVFlare's exception type)
_WriterCall = Callable[[Any], None]
_REJECTED: list[tuple[str, type[_Writer], _WriterCall, str, type[Exception]]] = [
    ("tb-add_scalar-str", SummaryWriter, lambda w: w.add_scalar("loss", "x", 1), "loss", TypeError),
    (
        "tb-add_scalar-array",
        SummaryWriter,
        lambda w: w.add_scalar("loss", np.array([0.5]), 1),
        "loss",
        TypeError,
    ),
    (
        "tb-add_scalar-step-float",
        SummaryWriter,
        lambda w: w.add_scalar("loss", 0.5, 1.5),
        "loss",
        TypeError,
    ),
    (
        "tb-add_scalar-step-negative",
        SummaryWriter,
        lambda w: w.add_scalar("loss", 0.5, -1),
        "loss",
        ValueError,
    ),
    (
        "tb-add_scalar-path-int",
        SummaryWriter,
        lambda w: w.add_scalar("loss", 0.5, 1, path=3),
        "loss",
        TypeError,
    ),
    ("tb-add_scalars-list", SummaryWriter, lambda w: w.add_scalars("lr", [1.0]), "lr", TypeError),
    (
        "tb-add_scalars-str-value",
        SummaryWriter,
        lambda w: w.add_scalars("lr", {"a": "fast"}),
        "lr",
        TypeError,
    ),
    (
        "tb-add_scalars-step-negative",
        SummaryWriter,
        lambda w: w.add_scalars("lr", {"a": 1.0}, -2),
        "lr",
        ValueError,
    ),
    (
        "mlflow-log_metric-str",
        MLflowWriter,
        lambda w: w.log_metric("acc", "high"),
        "acc",
        TypeError,
    ),
    (
        "mlflow-log_metric-step-float",
        MLflowWriter,
        lambda w: w.log_metric("acc", 0.5, step=2.0),
        "acc",
        TypeError,
    ),
    (
        "mlflow-log_metric-step-negative",
        MLflowWriter,
        lambda w: w.log_metric("acc", 0.5, step=-1),
        "acc",
        ValueError,
    ),
    ("mlflow-log_metric-key-int", MLflowWriter, lambda w: w.log_metric(7, 0.5), "7", TypeError),
    (
        "mlflow-log_metrics-list",
        MLflowWriter,
        lambda w: w.log_metrics([0.5]),
        "metrics",
        TypeError,
    ),
    (
        "mlflow-log_metrics-str-value",
        MLflowWriter,
        lambda w: w.log_metrics({"acc": "high"}),
        "metrics",
        TypeError,
    ),
    (
        "mlflow-log_metrics-step-negative",
        MLflowWriter,
        lambda w: w.log_metrics({"acc": 0.5}, step=-3),
        "metrics",
        ValueError,
    ),
    ("mlflow-log_params-str", MLflowWriter, lambda w: w.log_params("lr=1"), "params", TypeError),
    (
        "mlflow-log_param-unencodable",
        MLflowWriter,
        lambda w: w.log_param("optimizer", object()),
        "optimizer",
        TypeError,
    ),
    ("mlflow-log_text-int", MLflowWriter, lambda w: w.log_text(42, "a.txt"), "text", TypeError),
    (
        "mlflow-log_text-path-int",
        MLflowWriter,
        lambda w: w.log_text("hello", 5),
        "text",
        TypeError,
    ),
    ("mlflow-set_tags-list", MLflowWriter, lambda w: w.set_tags(["a"]), "tags", TypeError),
    (
        "mlflow-set_tag-unencodable",
        MLflowWriter,
        lambda w: w.set_tag("team", {1, 2}),
        "team",
        TypeError,
    ),
    ("wandb-log-list", WandBWriter, lambda w: w.log([0.5]), "metrics", TypeError),
    ("wandb-log-str-value", WandBWriter, lambda w: w.log({"loss": "low"}), "metrics", TypeError),
    (
        "wandb-log-step-float",
        WandBWriter,
        lambda w: w.log({"loss": 0.1}, step=0.5),
        "metrics",
        TypeError,
    ),
    (
        "wandb-log-step-negative",
        WandBWriter,
        lambda w: w.log({"loss": 0.1}, step=-1),
        "metrics",
        ValueError,
    ),
]


@pytest.mark.parametrize(
    ("writer_cls", "call", "tag", "nv_type"),
    [c[1:] for c in _REJECTED],
    ids=[c[0] for c in _REJECTED],
)
def test_bad_writer_call_raises_nvflare_type_naming_tag_and_costs_nothing(
    sender: AnalyticsSender,
    writer_cls: type[_Writer],
    call: _WriterCall,
    tag: str,
    nv_type: type[Exception],
) -> None:
    writer = writer_cls(sender)
    sender.add_scalar("before", 1.0, 0)
    other = ({TypeError, ValueError} - {nv_type}).pop()

    with pytest.raises(nv_type) as caught:
        call(writer)

    assert isinstance(caught.value, FlarestreamError)
    assert not isinstance(caught.value, other)
    message = str(caught.value)
    assert f"'{tag}'" in message or f"'{tag}." in message or f"tag {tag}" in message, message
    _assert_untouched(sender, 1)


_ACCEPTED: list[tuple[str, type[_Writer], _WriterCall]] = [
    ("tb-add_scalar", SummaryWriter, lambda w: w.add_scalar("loss", np.float32(0.5), 0)),
    ("tb-add_scalars", SummaryWriter, lambda w: w.add_scalars("lr", {"a": 1, "b": 0.5}, 1)),
    ("mlflow-log_param", MLflowWriter, lambda w: w.log_param("lr", 0.01)),
    ("mlflow-log_params", MLflowWriter, lambda w: w.log_params({"lr": 0.01, "opt": "adam"})),
    ("mlflow-log_metric", MLflowWriter, lambda w: w.log_metric("acc", 0.9, step=np.int64(2))),
    ("mlflow-log_metrics", MLflowWriter, lambda w: w.log_metrics({"acc": 0.9}, step=2)),
    ("mlflow-log_text", MLflowWriter, lambda w: w.log_text("hello", "notes/a.txt")),
    ("mlflow-set_tag", MLflowWriter, lambda w: w.set_tag("team", "a")),
    ("mlflow-set_tags", MLflowWriter, lambda w: w.set_tags({"team": "a"})),
    ("wandb-log", WandBWriter, lambda w: w.log({"loss": 0.1, "acc": np.float64(0.9)}, step=3)),
    ("wandb-log-no-step", WandBWriter, lambda w: w.log({"loss": 0.1})),
]


@pytest.mark.parametrize(
    ("writer_cls", "call"), [c[1:] for c in _ACCEPTED], ids=[c[0] for c in _ACCEPTED]
)
def test_valid_writer_call_is_accepted(
    sender: AnalyticsSender, writer_cls: type[_Writer], call: _WriterCall
) -> None:
    call(writer_cls(sender))
    assert sender.stats == {"accepted": 1, "delivered": 0, "failed": 0, "pending": 1}


@pytest.mark.parametrize(
    "call",
    [
        lambda w: w.add_scalar("loss", 0.5, 1, global_step=2),
        lambda w: w.add_scalars("lr", {"a": 1.0}, 1, global_step=2),
    ],
    ids=["add_scalar", "add_scalars"],
)
def test_summary_writer_global_step_positional_and_keyword_is_a_type_error(
    sender: AnalyticsSender, call: _WriterCall
) -> None:
    with pytest.raises(TypeError, match="global_step"):
        call(SummaryWriter(sender))
    _assert_untouched(sender, 0)


@pytest.mark.parametrize(
    ("writer_cls", "kind"),
    [
        (SummaryWriter, LogWriterName.TORCH_TB),
        (MLflowWriter, LogWriterName.MLFLOW),
        (WandBWriter, LogWriterName.WANDB),
    ],
    ids=["tensorboard", "mlflow", "wandb"],
)
def test_writer_without_sender_makes_one_of_its_own_kind(
    writer_cls: type[_Writer], kind: LogWriterName
) -> None:
    with writer_cls(**_sender_kwargs()) as writer:
        assert writer.sender.get_writer_name() is kind
        assert writer.sender.site == "site-1"
        assert writer.sender.job_id == "job-1"


def test_writer_without_sender_closes_it_on_close() -> None:
    writer = MLflowWriter(**_sender_kwargs())
    writer.close()
    with pytest.raises(FlarestreamError, match="closed"):
        writer.log_metric("acc", 0.5)
    assert writer.sender.stats["accepted"] == 0


def test_writer_as_context_manager_closes_its_own_sender() -> None:
    with WandBWriter(**_sender_kwargs()) as writer:
        pass
    with pytest.raises(FlarestreamError, match="closed"):
        writer.log({"loss": 0.1})


def test_writer_given_a_sender_leaves_it_open(sender: AnalyticsSender) -> None:
    with SummaryWriter(sender):
        pass
    sender.add_scalar("still-open", 1.0, 0)
    assert sender.stats["accepted"] == 1


def test_writer_without_sender_refuses_bad_settings_at_construction() -> None:
    kwargs = _sender_kwargs()
    kwargs["site"] = "../escape"
    with pytest.raises(ConfigError, match="site"):
        SummaryWriter(**kwargs)
    kwargs = _sender_kwargs()
    kwargs["config"] = {"acks": "0"}
    with pytest.raises(ConfigError, match="acks"):
        MLflowWriter(**kwargs)


def test_writer_flush_without_broker_reports_undelivered(sender: AnalyticsSender) -> None:
    writer = MLflowWriter(sender)
    writer.log_metric("acc", 0.5, 1)
    writer.log_params({"lr": 0.1})

    with pytest.raises(DeliveryError) as caught:
        writer.flush(timeout=0.3)

    assert caught.value.undelivered == 2
    assert sender.stats["pending"] == 2
