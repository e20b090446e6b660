"""Analytics records as MLflow entities, and entities as ``log_batch`` calls.

Pure code, no MLflow import (the sink turns these into MLflow's own entity types),
so every rule here is unit-testable without a tracking store.

What a record becomes (NVFlare's MLflow receiver, read for ``LogWriterName.MLFLOW``):

- METRIC -> one metric (key = tag); METRICS -> one metric per dict key. The
  timestamp is the sender's (``record.timestamp_ms``) and the step is the
  record's step or 0, so a record handed again yields an identical row.
- PARAMETER / PARAMETERS -> params, TAG / TAGS -> run tags, values as ``str(v)``
  (cut to MLflow's 6,000 / 8,000 characters, as MLflow itself does, so a replay
  compares equal to what was stored).
- TEXT with a path -> a text artifact at that path; TEXT without one (NVFlare
  drops it) -> ``text/<tag>-step-<step>.txt``, or ``text/<tag>-<record id>.txt``
  when it has no step.
- IMAGE (NVFlare drops it) -> a PNG artifact ``images/<tag>-step-<step>.png``
  (or ``-<record id>``); HW, HWC or CHW arrays, floats scaled by 255.
- MODEL, LOG_RECORD, INIT_DATA -> nothing (:func:`entries_for` returns None).

Anything MLflow would refuse (a key over 250 characters or with characters it
does not allow, a non-numeric metric, an artifact path that leaves the run's
directory...) raises :class:`RecordRefused`, so the sink can dead-letter that
one record before it reaches a batch.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from flarestream.errors import FlarestreamError
from flarestream.schemas.dxo import ReceivedData
from flarestream.schemas.record import AnalyticsDataType as T
from flarestream.schemas.record import Record

# MLflow's limits (mlflow.utils.validation); a batch over any of them is refused whole.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
REQUEST_BUDGET_BYTES = 900_000  # MLflow refuses requests over 1 MB; leave room for JSON framing
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000

RESERVED_TAG_PREFIX = "flarestream."  # the sink's own run tags; records may not set them
RUN_KEY_TAG = RESERVED_TAG_PREFIX + "run_key"
OFFSET_TAG = RESERVED_TAG_PREFIX + "offset."
IGNORED_TYPES = frozenset({T.MODEL, T.LOG_RECORD, T.INIT_DATA})

_NAME_OK = re.compile(r"^[/\w.\- :]*$")  # MLflow's rule for metric, param and tag names
_UNSAFE_SITE = re.compile(r"[/\\\x00-\x1f\x7f]")
_FILE_STEM = re.compile(r"[^A-Za-z0-9._-]+")


class RecordRefused(FlarestreamError):
    """One record that MLflow would refuse; the message says why."""


@dataclass(frozen=True, slots=True)
class MetricEntry:
    key: str
    value: float
    timestamp: int
    step: int


@dataclass(frozen=True, slots=True)
class Entries:
    """What one record adds to its run."""

    metrics: list[MetricEntry] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)  # artifact path -> content


@dataclass(frozen=True, slots=True)
class Batch:
    """One ``log_batch`` call, within every MLflow limit."""

    metrics: list[MetricEntry]
    params: list[tuple[str, str]]
    tags: list[tuple[str, str]]


def site_problem(site: object) -> str | None:
    """Why ``site`` is not a safe site name (it would escape a directory), or None."""
    if not isinstance(site, str) or not site.strip():
        return f"site name must be a non-empty string, got {site!r}"
    if _UNSAFE_SITE.search(site) or site.startswith("."):
        return f"unsafe site name {site!r}: contains a path separator or control character"
    return None


def key_problem(kind: str, key: object) -> str | None:
    """Why MLflow would refuse ``key`` as a metric/param/tag name, or None."""
    if not isinstance(key, str):
        return f"{kind} key must be a string, got {type(key).__name__}"
    if len(key) > MAX_KEY_LENGTH:
        return (
            f"{kind} key {key[:40]!r}... has {len(key)} characters; MLflow allows at most "
            f"{MAX_KEY_LENGTH}"
        )
    if not _NAME_OK.match(key):
        return (
            f"{kind} key {key!r}: MLflow allows only alphanumerics, underscores, dashes, "
            "periods, spaces, colons and slashes"
        )
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith(("..", "/")):
        return f"{kind} key {key!r} would resolve to another name as a file path"
    return None


def artifact_path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe artifact path inside the run, or None."""
    if not path or path.startswith("/") or "\\" in path:
        return f"artifact path {path!r} must be relative, with '/' separators"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return f"artifact path {path!r} contains a control character"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return f"artifact path {path!r} has an empty, '.' or '..' component"
    return None


def entries_for(record: Record, view: ReceivedData) -> Entries | None:
    """The entities ``record`` adds to its run (see the module doc); None for the
    types NVFlare's receiver ignores. Raises :class:`RecordRefused`."""
    dt = view.data_type
    if dt in IGNORED_TYPES:
        return None
    if dt is T.METRIC:
        return Entries(metrics=[_metric(view.tag, view.value, record, view)])
    if dt is T.METRICS:
        return Entries(metrics=[_metric(k, v, record, view) for k, v in _items(view).items()])
    if dt is T.PARAMETER:
        return Entries(params={_key("param", view.tag): _text(view.value, MAX_PARAM_VALUE_LENGTH)})
    if dt is T.PARAMETERS:
        return Entries(
            params={
                _key("param", k): _text(v, MAX_PARAM_VALUE_LENGTH) for k, v in _items(view).items()
            }
        )
    if dt is T.TAG:
        return Entries(tags={_tag_key(view.tag): _text(view.value, MAX_TAG_VALUE_LENGTH)})
    if dt is T.TAGS:
        return Entries(
            tags={_tag_key(k): _text(v, MAX_TAG_VALUE_LENGTH) for k, v in _items(view).items()}
        )
    if dt is T.TEXT:
        path = view.path if view.path is not None else _default_path("text", record, view, "txt")
        try:
            data = str(view.value).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RecordRefused(f"text {view.tag!r} is not valid UTF-8: {exc}") from None
        return Entries(artifacts={_artifact_path(path): data})
    if dt is T.IMAGE:
        path = _default_path("images", record, view, "png")
        png = encode_png(view.tag, view.value, view.kwargs.get("dataformats"))
        return Entries(artifacts={path: png})
    # SCALAR(S) never reach an MLflow receiver (read as METRIC(S)); refuse loudly if they do
    raise RecordRefused(f"the MLflow sink cannot store {dt.name} records")


def _key(kind: str, key: object) -> str:
    problem = key_problem(kind, key)
    if problem:
        raise RecordRefused(problem)
    assert isinstance(key, str)
    return key


def _tag_key(key: object) -> str:
    out = _key("tag", key)
    if out.startswith(RESERVED_TAG_PREFIX):
        raise RecordRefused(f"tag key {out!r}: the prefix {RESERVED_TAG_PREFIX!r} is reserved")
    return out


def _items(view: ReceivedData) -> dict[Any, Any]:
    if not isinstance(view.value, dict):
        raise RecordRefused(f"{view.tag!r}: expected a dict, got {type(view.value).__name__}")
    return view.value


def _text(value: object, limit: int) -> str:
    return str(value)[:limit]  # MLflow cuts longer values the same way (with a warning)


def _metric(key: object, value: object, record: Record, view: ReceivedData) -> MetricEntry:
    name = _key("metric", key)
    # bool is a number to NVFlare but not to MLflow; every metric is a double in MLflow
    if not isinstance(value, (int, float)):
        raise RecordRefused(f"metric {name!r}: value {value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise RecordRefused(f"metric {name!r}: {value} does not fit a double") from None
    if record.timestamp_ms < 0:
        raise RecordRefused(f"metric {name!r}: negative timestamp {record.timestamp_ms}")
    return MetricEntry(name, number, record.timestamp_ms, view.step or 0)


def _artifact_path(path: str) -> str:
    problem = artifact_path_problem(path)
    if problem:
        raise RecordRefused(problem)
    return path


def _default_path(folder: str, record: Record, view: ReceivedData, ext: str) -> str:
    stem = _FILE_STEM.sub("_", view.tag).strip("._")[:100] or "untitled"
    suffix = f"step-{view.step}" if view.step is not None else _FILE_STEM.sub("_", record.record_id)
    return f"{folder}/{stem}-{suffix}.{ext}"


def metric_identity(m: MetricEntry) -> tuple[str, int, int, float | str]:
    """What makes two metric rows the same row to MLflow's SQL store (NaN == NaN)."""
    return (m.key, m.timestamp, m.step, "nan" if math.isnan(m.value) else m.value)


def run_key(job_id: str, site: str) -> str:
    """The tag value that identifies the run of (job, site) in every sink."""
    return hashlib.sha256(f"{job_id}\x00{site}".encode()).hexdigest()[:32]


def offset_tag(topic: str, partition: int) -> str:
    key = f"{OFFSET_TAG}{topic}.{partition}"
    if len(key) <= 250:
        return key
    return f"{OFFSET_TAG}{hashlib.sha256(topic.encode()).hexdigest()[:24]}.{partition}"


@dataclass
class PendingWrites:
    """Unflushed entities of one run from one partition."""

    metrics: list[MetricEntry] = field(default_factory=list)
    seen: set[tuple[str, int, int, float | str]] = field(default_factory=set)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    last_offset: int = -1

    def add(self, entries: Entries, offset: int) -> None:
        for m in entries.metrics:
            ident = metric_identity(m)
            if ident not in self.seen:  # the store keeps one such row anyway: send it once
                self.seen.add(ident)
                self.metrics.append(m)
        self.params.update(entries.params)
        for key, value in entries.tags.items():
            self.tags.pop(key, None)  # keep the order of the last setting
            self.tags[key] = value
        self.artifacts.update(entries.artifacts)
        self.last_offset = max(self.last_offset, offset)


def batches(
    metrics: list[MetricEntry],
    params: list[tuple[str, str]],
    tags: list[tuple[str, str]],
    final_tags: list[tuple[str, str]] | None = None,
) -> list[Batch]:
    """Split entities into ``log_batch`` calls within MLflow's limits (counts per
    kind, entities in all, request size), in order. ``final_tags`` go in the last
    call, so a marker tag there is stored only once everything before it is."""
    out: list[Batch] = []
    current = Batch([], [], [])
    budget = REQUEST_BUDGET_BYTES

    def fits(kind_count: int, kind_limit: int, size: int) -> bool:
        total = len(current.metrics) + len(current.params) + len(current.tags)
        empty = total == 0
        return (
            kind_count < kind_limit and total < MAX_ENTITIES_PER_BATCH and (empty or size <= budget)
        )

    def add(kind: str, item: Any, size: int, limit: int) -> None:
        nonlocal current, budget
        if not fits(len(getattr(current, kind)), limit, size):
            out.append(current)
            current, budget = Batch([], [], []), REQUEST_BUDGET_BYTES
        getattr(current, kind).append(item)
        budget -= size

    for param in params:
        add("params", param, _size(*param), MAX_PARAMS_PER_BATCH)
    for tag in tags:
        add("tags", tag, _size(*tag), MAX_TAGS_PER_BATCH)
    for metric in metrics:
        add("metrics", metric, len(metric.key.encode()) + 100, MAX_METRICS_PER_BATCH)
    if final_tags:
        room = (
            len(current.tags) + len(final_tags) <= MAX_TAGS_PER_BATCH
            and len(current.metrics) + len(current.params) + len(current.tags) + len(final_tags)
            <= MAX_ENTITIES_PER_BATCH
            and sum(_size(*t) for t in final_tags) <= budget
        )
        if not room:
            out.append(current)
            current = Batch([], [], [])
        current.tags.extend(final_tags)
    if current.metrics or current.params or current.tags:
        out.append(current)
    return out


def _size(key: str, value: str) -> int:
    return len(key.encode()) + len(value.encode()) + 40


def encode_png(tag: str, value: Any, dataformats: object = None) -> bytes:
    """An 8-bit PNG of an image array: HW, HWC or CHW with 1, 3 or 4 channels, as
    the record's ``dataformats`` kwarg says (else HW for 2-D, and CHW, TensorBoard's
    default, for 3-D unless the first axis cannot be channels); floats are scaled by
    255 as TensorBoard does, then clipped to 0..255."""
    shape = getattr(value, "shape", None)
    if not isinstance(shape, tuple) or not hasattr(value, "astype"):
        raise RecordRefused(f"image {tag!r}: expected a numpy array, got {type(value).__name__}")
    import numpy as np  # the record decoded to an ndarray, so numpy is there

    arr = np.asarray(value)
    layout = str(dataformats or ("HW" if arr.ndim == 2 else "")).upper()
    if not layout and arr.ndim == 3:  # TensorBoard's default is CHW
        layout = "CHW" if arr.shape[0] in (1, 3, 4) else "HWC"
    if layout == "HW" and arr.ndim == 2:
        arr = arr[:, :, None]
    elif layout == "CHW" and arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
    elif not (layout == "HWC" and arr.ndim == 3):
        raise RecordRefused(f"image {tag!r}: shape {shape} does not match layout {layout or '?'}")
    if arr.shape[2] not in (1, 3, 4) or 0 in arr.shape:
        raise RecordRefused(f"image {tag!r}: shape {shape} is not HW, HWC or CHW")
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64) * 255.0)
    elif arr.dtype.kind not in "iub":
        raise RecordRefused(f"image {tag!r}: dtype {arr.dtype} is not numeric")
    pixels = np.clip(arr, 0, 255).astype(np.uint8)
    height, width, channels = pixels.shape
    color = {1: 0, 3: 2, 4: 6}[channels]  # grey, RGB, RGBA
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 6))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
