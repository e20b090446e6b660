"""Records <-> NVFlare's DXO layout for analytics, without importing NVFlare.

A DXO is represented as a plain dict ``{"data_kind": "ANALYTIC", "data": {...},
"meta": {...}}`` whose ``meta`` holds this package's enums; ``data`` is exactly
what NVFlare 2.9 puts there (``track_key``, ``track_value`` and, when given,
``global_step``, ``path`` and ``analytics_kwargs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flarestream.errors import DecodeError
from flarestream.schemas.record import (
    AnalyticsDataType,
    LogWriterName,
    Record,
    coerce_data_type,
    coerce_writer,
    validate_call,
)

ANALYTIC = "ANALYTIC"
DATA_TYPE_KEY = "analytics_data_type"
WRITER_KEY = "tracker_key"

# How a record's data type reads for a receiver of another writer kind.
_TB_TO_METRICS = {
    AnalyticsDataType.SCALAR: AnalyticsDataType.METRIC,
    AnalyticsDataType.SCALARS: AnalyticsDataType.METRICS,
}
_METRICS_TO_TB = {v: k for k, v in _TB_TO_METRICS.items()}


@dataclass(frozen=True, slots=True)
class ReceivedData:
    """What a receiver of one writer kind sees (NVFlare's ``AnalyticsData``)."""

    tag: str
    value: Any
    data_type: AnalyticsDataType
    step: int | None
    path: str | None
    kwargs: dict[str, Any]
    sender: LogWriterName


def create_analytic_dxo(
    tag: object, value: object, data_type: object, writer: object, **kwargs: Any
) -> dict[str, Any]:
    """The DXO NVFlare's ``create_analytic_dxo`` makes, with the same validation."""
    tag_s, dt, val, step, path, rest = validate_call(tag, value, data_type, None, kwargs)
    record = Record("", "", "", 0, 0, tag_s, dt, val, coerce_writer(writer), step, path, rest)
    return to_dxo(record)


def to_dxo(record: Record) -> dict[str, Any]:
    """A record as NVFlare's analytics DXO."""
    data: dict[str, Any] = {"track_key": record.tag, "track_value": record.value}
    if record.step is not None:
        data["global_step"] = record.step
    if record.path is not None:
        data["path"] = record.path
    kwargs = record.analytics_kwargs
    if kwargs:
        data["analytics_kwargs"] = kwargs
    return {
        "data_kind": ANALYTIC,
        "data": data,
        "meta": {DATA_TYPE_KEY: record.data_type, WRITER_KEY: record.writer},
    }


def record_from_dxo(
    dxo: dict[str, Any], *, site: str, job_id: str, sender_id: str, seq: int, timestamp_ms: int
) -> Record:
    """A record from an analytics DXO (as ``to_dxo`` or NVFlare made it)."""
    data, meta = dxo.get("data") or {}, dxo.get("meta") or {}
    if DATA_TYPE_KEY not in meta:
        raise DecodeError("DXO meta has no analytics_data_type")
    kwargs = dict(data.get("analytics_kwargs") or {})
    for key in ("global_step", "path"):
        if key in data:
            kwargs.setdefault(key, data[key])
    tag, dt, value, step, path, rest = validate_call(
        data.get("track_key"),
        data.get("track_value"),
        coerce_data_type(meta[DATA_TYPE_KEY]),
        kwargs=kwargs,
    )
    writer = coerce_writer(meta.get(WRITER_KEY, LogWriterName.TORCH_TB))
    return Record(
        site, job_id, sender_id, seq, timestamp_ms, tag, dt, value, writer, step, path, rest
    )


def convert_data_type(
    data_type: AnalyticsDataType, sender: LogWriterName, receiver: LogWriterName
) -> AnalyticsDataType:
    """NVFlare's rule: SCALAR(S) read as METRIC(S) across TensorBoard and MLflow/W&B."""
    if sender is LogWriterName.TORCH_TB and receiver is not LogWriterName.TORCH_TB:
        return _TB_TO_METRICS.get(data_type, data_type)
    if sender is not LogWriterName.TORCH_TB and receiver is LogWriterName.TORCH_TB:
        return _METRICS_TO_TB.get(data_type, data_type)
    return data_type


def from_dxo(dxo: dict[str, Any], receiver: object) -> ReceivedData | None:
    """What a receiver of writer kind ``receiver`` reads from a DXO; None when the
    DXO carries no data type (NVFlare skips such records)."""
    meta = dxo.get("meta") or {}
    if meta.get(DATA_TYPE_KEY) is None:
        return None
    data = dxo["data"]
    sender = coerce_writer(meta.get(WRITER_KEY, LogWriterName.TORCH_TB))
    dt = convert_data_type(coerce_data_type(meta[DATA_TYPE_KEY]), sender, coerce_writer(receiver))
    return ReceivedData(
        tag=data["track_key"],
        value=data["track_value"],
        data_type=dt,
        step=data.get("global_step"),
        path=data.get("path"),
        kwargs=dict(data.get("analytics_kwargs") or {}),
        sender=sender,
    )


def received(record: Record, receiver: LogWriterName) -> ReceivedData:
    """Shortcut for ``from_dxo(to_dxo(record), receiver)``."""
    dt = convert_data_type(record.data_type, record.writer, receiver)
    return ReceivedData(
        record.tag,
        record.value,
        dt,
        record.step,
        record.path,
        record.analytics_kwargs,
        record.writer,
    )
