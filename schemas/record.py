"""One analytics record: NVFlare's DXO fields plus what a pipeline needs.

``validate_call`` applies NVFlare 2.9's rules for ``AnalyticsSender.add`` (same
exception types) and normalises values (numpy scalars become Python numbers) so
that what is encoded is exactly what a receiver would see.
"""

from __future__ import annotations

import enum
import numbers
import re
from dataclasses import dataclass, field
from typing import Any

from flarestream.errors import InvalidRecordError, InvalidRecordValueError

SCHEMA_VERSION = 1

# Characters a site or job name may not hold: every sink uses these names as file or
# directory names, so a separator or control character could escape or corrupt them.
UNSAFE_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


class AnalyticsDataType(enum.Enum):
    """NVFlare's ``AnalyticsDataType`` (13 members, value = name)."""

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


class LogWriterName(enum.Enum):
    """NVFlare's ``LogWriterName``: which tracking API produced a record."""

    TORCH_TB = "TORCH_TENSORBOARD"
    MLFLOW = "MLFLOW"
    WANDB = "WEIGHTS_AND_BIASES"


@dataclass(slots=True)
class Record:
    """A decoded analytics record. ``kwargs`` holds the call's extra keyword
    arguments other than ``global_step`` and ``path`` (those have their own fields);
    ``analytics_kwargs`` rebuilds NVFlare's full dict."""

    site: str
    job_id: str
    sender_id: str
    seq: int
    timestamp_ms: int
    tag: str
    data_type: AnalyticsDataType
    value: Any
    writer: LogWriterName = LogWriterName.TORCH_TB
    step: int | None = None
    path: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def record_id(self) -> str:
        """Unique id of the record: its sender instance and sequence number."""
        return record_id(self.sender_id, self.seq)

    @property
    def analytics_kwargs(self) -> dict[str, Any]:
        """NVFlare's ``analytics_kwargs``: every kwarg of the call, step and path included."""
        out: dict[str, Any] = {}
        if self.step is not None:
            out["global_step"] = self.step
        if self.path is not None:
            out["path"] = self.path
        out.update(self.kwargs)
        return out


def record_id(sender_id: str, seq: int) -> str:
    return f"{sender_id}-{seq}"


_NUMERIC_DICT_TYPES = frozenset({AnalyticsDataType.SCALARS, AnalyticsDataType.METRICS})
_NUMERIC_TYPES = frozenset({AnalyticsDataType.SCALAR, AnalyticsDataType.METRIC})
_DICT_TYPES = frozenset({AnalyticsDataType.PARAMETERS, AnalyticsDataType.TAGS})
_NO_KWARGS: dict[str, Any] = {}  # shared and never mutated: most calls have no kwargs


def coerce_data_type(data_type: object) -> AnalyticsDataType:
    """Accept this module's enum or NVFlare's own (same member names); reject strings."""
    if type(data_type) is AnalyticsDataType:
        return data_type
    if isinstance(data_type, enum.Enum) and type(data_type).__name__ == "AnalyticsDataType":
        try:
            return AnalyticsDataType[data_type.name]
        except KeyError:
            pass
    raise InvalidRecordError(
        f"expect data_type to be an instance of AnalyticsDataType, but got {type(data_type)}."
    )


def coerce_writer(writer: object) -> LogWriterName:
    """Accept this module's ``LogWriterName`` or NVFlare's (same member names)."""
    if type(writer) is LogWriterName:
        return writer
    if isinstance(writer, enum.Enum) and type(writer).__name__ == "LogWriterName":
        try:
            return LogWriterName[writer.name]
        except KeyError:
            pass
    raise InvalidRecordError(
        f"expect writer_name to be an instance of LogWriterName, but got {type(writer)}."
    )


def numeric_scalar(tag: str, value: object) -> int | float | bool:
    """A Python number from an int/float or a 0-d numpy scalar; TypeError otherwise."""
    cls = type(value)
    if cls is float or cls is int or cls is bool:
        return value  # type: ignore[return-value]
    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        item = getattr(value, "item", None)
        out = item() if item is not None else value
        if isinstance(out, (int, float)):
            return out
    elif getattr(value, "shape", None) == () and hasattr(value, "item"):
        out = value.item()
        if isinstance(out, (int, float)):
            return out
    raise InvalidRecordError(
        f"expect '{tag}' value to be a numeric scalar (float/int or scalar-like with item()), "
        f"but got '{type(value)}'."
    )


def global_step_value(step: object) -> int | None:
    """NVFlare's rule for ``global_step``: an int (numpy ints normalised), never negative."""
    if step is None:
        return None
    if type(step) is not int:
        # bool is an int to NVFlare (isinstance check), so True/False pass there too
        if not isinstance(step, numbers.Integral):
            raise InvalidRecordError(
                f"expect global_step to be an instance of int, but got {type(step)}."
            )
        step = int(step)
    if step < 0:
        raise InvalidRecordValueError(f"global_step must be non-negative, but got {step}.")
    return step


def validate_call(
    tag: object,
    value: object,
    data_type: object,
    global_step: object = None,
    kwargs: dict[str, Any] | None = None,
) -> tuple[str, AnalyticsDataType, Any, int | None, str | None, dict[str, Any]]:
    """Validate one ``add()`` call as NVFlare does; return the normalised parts
    ``(tag, data_type, value, step, path, other_kwargs)``. ``global_step`` may
    come as an argument or inside ``kwargs``. Raises TypeError or ValueError
    subclasses naming the tag; nothing is mutated."""
    # the call a training loop makes most: a plain number, an int step, no kwargs
    if (
        not kwargs
        and type(tag) is str
        and (data_type is AnalyticsDataType.SCALAR or data_type is AnalyticsDataType.METRIC)
        and (type(value) is float or type(value) is int)
        and (global_step is None or (type(global_step) is int and global_step >= 0))
    ):
        return tag, data_type, value, global_step, None, _NO_KWARGS
    if type(tag) is not str:
        raise InvalidRecordError(f"expect tag to be an instance of str, but got {type(tag)}.")
    dt = coerce_data_type(data_type)
    if dt in _NUMERIC_TYPES:
        value = numeric_scalar(tag, value)
    elif dt in _NUMERIC_DICT_TYPES:
        if not isinstance(value, dict):
            raise InvalidRecordError(
                f"expect '{tag}' value to be an instance of dict, but got {type(value)}."
            )
        value = {k: numeric_scalar(f"{tag}.{k}", v) for k, v in value.items()}
    elif dt in _DICT_TYPES:
        if not isinstance(value, dict):
            raise InvalidRecordError(
                f"expect '{tag}' value to be an instance of dict, but got {type(value)}."
            )
    elif dt is AnalyticsDataType.TEXT and not isinstance(value, str):
        raise InvalidRecordError(
            f"expect '{tag}' value to be an instance of str, but got {type(value)}."
        )
    path = None
    rest = _NO_KWARGS
    if kwargs:
        rest = dict(kwargs)
        if global_step is None:
            global_step = rest.pop("global_step", None)
        elif "global_step" in rest:
            raise InvalidRecordError("global_step was given both as an argument and in kwargs")
        path = rest.pop("path", None)
        if path is not None and not isinstance(path, str):
            raise InvalidRecordError(f"expect path to be an instance of str, but got {type(path)}.")
    return tag, dt, value, global_step_value(global_step), path, rest
