"""What the TensorBoard sink writes for one record (TensorBoard summaries, no TensorFlow),
and the small state that makes its event files exactly-once (:class:`SinkState`).

Imported lazily by :mod:`flarestream.consumers.tensorboard_sink` (it needs numpy and
tensorboard, the ``tensorboard`` extra). It reproduces what NVFlare's TensorBoard
receiver writes through torch's ``SummaryWriter``, as a TORCH_TB receiver reads the
record (:func:`flarestream.schemas.dxo.received`, so MLflow/W&B metrics are scalars):

- SCALAR, METRIC: a scalar (``simple_value``, float32 as in every TensorBoard file)
  under ``tag`` in the site's directory.
- SCALARS, METRICS: one scalar per key, under ``tag``, in the subdirectory
  ``<tag with "/" replaced by "_">_<key>`` (torch's ``add_scalars``).
- TEXT: the text plugin's string tensor under ``<tag>/text_summary`` (torch's name).
- IMAGE: a PNG ``Summary.Image`` under ``tag``; see :func:`image_pixels`.
- PARAMETER, PARAMETERS: numbers (not bools) as scalars, anything else as text, one
  series per parameter name; TAG, TAGS likewise but always as text; LOG_RECORD: text.
- MODEL, INIT_DATA: nothing (TensorBoard has no view of them; other sinks keep them).

A value that cannot be written raises :class:`UnwritableRecordError`; the sink turns
it into a rejection (dead-letter topic).

:class:`SinkState` is what a flush made durable; :func:`cut_back` undoes what a crash
left after it (see :mod:`flarestream.consumers.tensorboard_sink`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.text.summary_v2 import text_pb
from tensorboard.summary.writer.record_writer import RecordWriter

from flarestream.consumers.sink import TopicPartition
from flarestream.errors import ConfigError, FlarestreamError
from flarestream.schemas.dxo import ReceivedData
from flarestream.schemas.record import AnalyticsDataType as T

__all__ = [
    "SinkState",
    "UnwritableRecordError",
    "cut_back",
    "encode_png",
    "fsync_dir",
    "fsync_file",
    "image_pixels",
    "make_event",
    "summaries",
]

Entry = tuple[str, Summary]  # (run subdirectory, "" for the site's own directory; summary)

log = logging.getLogger("flarestream.consumers.tensorboard")

STATE_VERSION = 1
TEXT_SUFFIX = "/text_summary"  # torch's add_text appends it; dashboards keep working
MAX_NAME_BYTES = 255  # a directory name longer than this fails on common file systems
_DATAFORMATS = ("HW", "WH", "HWC", "CHW")
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray+alpha, RGB, RGBA


class UnwritableRecordError(FlarestreamError, ValueError):
    """The record's value or names cannot be written to TensorBoard."""


def summaries(data: ReceivedData) -> list[Entry]:
    """The summaries for one record as a TORCH_TB receiver reads it; [] for the kinds
    TensorBoard has no view of. Raises :class:`UnwritableRecordError`."""
    kind, tag, value = data.data_type, data.tag, data.value
    try:
        if kind in (T.SCALAR, T.METRIC):
            return [("", scalar_summary(tag, value))]
        if kind in (T.SCALARS, T.METRICS):
            items = _dict_items(tag, value)
            return [(run_name(tag, key), scalar_summary(tag, v)) for key, v in items]
        if kind in (T.TEXT, T.LOG_RECORD, T.TAG):
            return [("", text_summary(tag, value))]
        if kind is T.TAGS:
            return [("", text_summary(key, v)) for key, v in _dict_items(tag, value)]
        if kind is T.PARAMETER:
            return [("", parameter_summary(tag, value))]
        if kind is T.PARAMETERS:
            return [("", parameter_summary(key, v)) for key, v in _dict_items(tag, value)]
        if kind is T.IMAGE:
            formats = data.kwargs.get("dataformats")
            return [("", image_summary(tag, value, formats))]
    except (TypeError, ValueError, UnicodeError, OverflowError) as exc:
        if isinstance(exc, UnwritableRecordError):
            raise
        raise UnwritableRecordError(f"'{tag}': {kind.name} value cannot be written: {exc}") from exc
    return []  # MODEL, INIT_DATA


def _dict_items(tag: str, value: object) -> list[tuple[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise UnwritableRecordError(f"'{tag}': expected a dict with str keys, got {type(value)}")
    return list(value.items())


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scalar_summary(tag: str, value: object) -> Summary:
    if not _is_number(value):
        raise UnwritableRecordError(f"'{tag}': a scalar must be a number, got {type(value)}")
    number = float(value)  # type: ignore[arg-type]
    return Summary(value=[Summary.Value(tag=tag, simple_value=number)])


def text_summary(tag: str, value: object) -> Summary:
    text = value if isinstance(value, str) else json.dumps(value, default=str, allow_nan=True)
    return text_pb(tag + TEXT_SUFFIX, text.encode("utf-8"))


def parameter_summary(name: str, value: object) -> Summary:
    """A number as a scalar; anything else (bools included: ``True`` is a setting,
    not the number 1) as text."""
    return scalar_summary(name, value) if _is_number(value) else text_summary(name, value)


def run_name(tag: str, key: str) -> str:
    """torch's ``add_scalars`` directory for one key: ``<tag, "/" -> "_">_<key>``. A
    ``/`` in the key nests directories, as in torch; a name that would leave the site's
    directory or that file systems refuse raises :class:`UnwritableRecordError`."""
    name = f"{tag.replace('/', '_')}_{key}"
    for part in name.split("/"):
        if part in ("", ".", "..") or any(c == "\\" or ord(c) < 32 or c == "\x7f" for c in part):
            raise UnwritableRecordError(
                f"'{tag}': key {key!r} makes the directory name {name!r}, which is empty, "
                "a '.'/'..' component or holds a backslash or control character"
            )
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise UnwritableRecordError(
                f"'{tag}': key {key!r} makes a directory name longer than {MAX_NAME_BYTES} bytes"
            )
    return name


# -- images ----------------------------------------------------------------------------
def image_summary(tag: str, value: object, dataformats: object = None) -> Summary:
    pixels = image_pixels(tag, value, dataformats)
    height, width, channels = pixels.shape
    image = Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=encode_png(pixels)
    )
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def image_pixels(tag: str, value: object, dataformats: object = None) -> Any:
    """An image as an HxWxC uint8 array (C = 1, 2, 3 or 4).

    Layout: the ``dataformats`` kwarg when given (HW, WH, HWC or CHW, as torch takes);
    otherwise 2-D is HW and 3-D is CHW (torch's default) unless its first axis cannot
    be channels (not 1-4) while its last can, then HWC.
    Values: uint8 as is; floats times 255 (in float32, clipped to 0-255 and truncated,
    exactly as torch makes the pixels NVFlare shows; NaN is 0); bools 0 or 255; other
    integers clipped to 0-255. Gray stays one channel (torch repeats it three times;
    TensorBoard shows the same picture).
    """
    array = np.asarray(value)
    if array.dtype.kind not in "buif":
        raise UnwritableRecordError(f"'{tag}': an image must be numeric, got dtype {array.dtype}")
    if array.ndim not in (2, 3) or array.size == 0:
        raise UnwritableRecordError(
            f"'{tag}': an image must be a non-empty 2-D (HW) or 3-D (HWC/CHW) array, "
            f"got shape {array.shape}"
        )
    fmt, shape = _dataformats(tag, array, dataformats), array.shape
    if fmt == "WH":
        array = array.T
    elif fmt == "CHW":
        array = np.transpose(array, (1, 2, 0))
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.shape[2] not in _PNG_COLOR_TYPE:
        raise UnwritableRecordError(
            f"'{tag}': an image needs 1-4 channels, got {array.shape[2]} ({fmt}, shape {shape})"
        )
    return np.ascontiguousarray(_to_uint8(array))


def _dataformats(tag: str, array: Any, given: object) -> str:
    if given is not None:
        fmt = str(given).upper()
        if fmt not in _DATAFORMATS or len(fmt) != array.ndim:
            raise UnwritableRecordError(
                f"'{tag}': dataformats {given!r} does not fit an image of shape {array.shape}; "
                f"use one of {', '.join(_DATAFORMATS)}"
            )
        return fmt
    if array.ndim == 2:
        return "HW"
    first, last = array.shape[0], array.shape[2]
    return "HWC" if first not in _PNG_COLOR_TYPE and last in _PNG_COLOR_TYPE else "CHW"


def _to_uint8(array: Any) -> Any:
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype.kind == "f":
        scaled = np.nan_to_num(array.astype(np.float32), nan=0.0) * np.float32(255)
        return np.clip(scaled, 0, 255).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def encode_png(pixels: Any) -> bytes:
    """PNG bytes of an HxWxC uint8 array (no filter, zlib level 6)."""
    height, width, channels = pixels.shape
    rows = np.zeros((height, 1 + width * channels), dtype=np.uint8)  # filter byte 0 per row
    rows[:, 1:] = pixels.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR_TYPE[channels], 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(kind))
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def make_event(summary: Summary, step: int, wall_time_ms: int) -> Event:
    """One event: the record's send time (not receive time) and its step."""
    return Event(wall_time=wall_time_ms / 1000.0, step=step, summary=summary)


# -- the sink's state -------------------------------------------------------------------
@dataclass
class SinkState:
    """What :meth:`TensorBoardSink.flush` made durable (see the module doc)."""

    next_file: int = 0
    files: dict[str, int] = field(default_factory=dict)  # open file (relative path) -> bytes
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to write
    steps: dict[tuple[str, str, str], int] = field(default_factory=dict)  # next missing step

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "next_file": self.next_file,
            "files": self.files,
            "offsets": [[t, p, o] for (t, p), o in sorted(self.offsets.items())],
            "steps": [[*key, n] for key, n in sorted(self.steps.items())],
        }

    @classmethod
    def load(cls, path: Path) -> SinkState:
        """The state saved at ``path``; an empty state when there is none."""
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            return cls()
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"the state file {path} is corrupt ({exc}); restore it") from None

    def save(self, path: Path) -> None:
        """Replace the state at ``path`` atomically and durably."""
        replace_atomically(path, json.dumps(self.to_json(), separators=(",", ":")))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SinkState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown state version {data.get('version')!r}")
        return cls(
            next_file=int(data["next_file"]),
            files={str(k): int(v) for k, v in data["files"].items()},
            offsets={(str(t), int(p)): int(o) for t, p, o in data["offsets"]},
            steps={(str(j), str(s), str(t)): int(n) for j, s, t, n in data["steps"]},
        )


def fsync_file(path: Path) -> None:
    """Make the file's content durable (any descriptor of it will do on Linux)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (new files, renames) durable where possible."""
    with contextlib.suppress(IsADirectoryError, PermissionError):  # cannot open directories
        fsync_file(path)


def replace_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def cut_back(logdir: Path, state: SinkState, owned: Iterable[tuple[Path, int]]) -> None:
    """Undo what a crash left after the flush that saved ``state``: delete the owned
    event files (path, number) made since, truncate those it had open to their saved
    length. Files closed before it stay as they are: they were complete and durable."""
    for path, number in owned:
        rel = path.relative_to(logdir).as_posix()
        if number >= state.next_file:  # made after the last flush
            path.unlink()
            fsync_dir(path.parent)
        elif rel in state.files:  # open at the last flush: cut back to what it held
            size, length = path.stat().st_size, state.files[rel]
            if size > length:
                os.truncate(path, length)
                fsync_file(path)
            elif size < length:
                log.warning("%s lost %d flushed bytes (not by this sink)", rel, length - size)


class EventFile:
    """One event file, written synchronously, named so that the files of a directory
    sort in the order they were made: TensorBoard reads a directory's files in name
    order and never returns to an older one. (TensorBoard's own writer numbers its
    files with an unpadded counter, so "...10" would sort before "...9".)"""

    def __init__(self, directory: str, filename_suffix: str, number: int) -> None:
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{number:012d}{filename_suffix}"
        )
        self._file = open(os.path.join(directory, name), "ab")  # noqa: SIM115 - kept open
        self._records = RecordWriter(self._file)
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: Event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        """Hand the bytes to the OS (the sink fsyncs the file afterwards)."""
        self._file.flush()

    def close(self) -> None:
        self._file.close()
