"""The TensorBoard sink: event files per job and site, as NVFlare's TensorBoard receiver
writes them, exactly once, with no TensorFlow or torch.

Layout: ``<logdir>/<job_id>/<site>/`` is a site's run; SCALARS and METRICS go to one
subdirectory per key (``<tag with "/" replaced by "_">_<key>``), as torch's
``add_scalars`` makes them. What each kind of record becomes is in
:mod:`flarestream.consumers.tensorboard_events`. A record without a step gets the next
number of a counter per (job, site, tag) of the records that had none, starting at 0
(torch would write them all at step 0); the counter is part of the sink's state, so a
replay numbers the same records the same way. A step given as 0 stays 0. Event times
are the records' send times.

Exactly once, although event files are append-only: the sink owns the event files it
makes (their names end in ``.flarestream-<state-name>.<number>``) and keeps its state
in ``<logdir>/.flarestream/<state-name>.json``: the byte length of each file it has
open, the number of the next file it will make, the next offset per (topic,
partition) and the step counters. :meth:`TensorBoardSink.flush` makes every written
event durable (fsync) and then replaces the state atomically. :meth:`TensorBoardSink.open`
undoes whatever a crash left after the last flush: it truncates the files the state
lists back to their recorded length and deletes the files made since; then
:meth:`TensorBoardSink.write` skips every record below the recorded offsets (so a
record handed again, also to a new consumer group or with ``--from-beginning``, is not
written twice). New events always go to new files.

Not promised: two processes writing the same logdir with the same state name (a lock
refuses the second); a topic deleted and re-created under the same name (its offsets
start again, and records below the old offsets would be skipped: use a new logdir or
``--state-name``); a TensorBoard that read events a crash then cut back shows them
until it reloads the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, ClassVar

from flarestream.consumers.sink import Delivered, Rejection, Sink, TopicPartition
from flarestream.errors import ConfigError, FlarestreamError
from flarestream.schemas.dxo import received
from flarestream.schemas.record import LogWriterName, Record

if TYPE_CHECKING:  # the module itself needs tensorboard: imported by open()
    from flarestream.consumers.tensorboard_events import SinkState

log = logging.getLogger("flarestream.consumers.tensorboard")

STATE_DIR = ".flarestream"
MAX_PATH_BYTES = 3800  # PATH_MAX is 4096; leave room for the event file's own name
_STATE_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}\Z")
_UNSAFE_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


def unsafe_name(kind: str, name: str) -> str | None:
    """Why ``name`` cannot be one directory level under the logdir, or None if it can."""
    if not name or name.startswith(".") or _UNSAFE_CHARS.search(name):
        return (
            f"{kind} {name!r} would escape or hide in the log directory (empty, starts with "
            "'.', or holds a path separator or control character); rename it at the sender"
        )
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{kind} {name!r} is not valid Unicode text"
    return f"{kind} {name!r} is longer than 255 bytes" if size > 255 else None


@dataclass
class _OpenFile:
    writer: Any  # tensorboard_events.EventFile
    path: str  # relative to the logdir, with "/"
    size: int = 0  # bytes made durable
    dirty: bool = True  # written since the last flush (a new file has its header)


class TensorBoardSink(Sink):
    """Writes records as TensorBoard event files under ``logdir`` (see the module doc).

    ``state_name`` names this sink's state and files in the logdir (default
    ``tensorboard``; the consumer group is not known to a sink); ``max_open_writers``
    bounds the open event files (the least recently used is closed; writing to its
    directory again starts a new file there).
    """

    name: ClassVar[str] = "tensorboard"
    description: ClassVar[str] = (
        "TensorBoard event files, <logdir>/<job_id>/<site>/, as NVFlare's receiver writes them"
    )

    def __init__(
        self, logdir: str | os.PathLike[str], *, state_name: str = "tensorboard",
        max_open_writers: int = 256,
    ) -> None:  # fmt: skip
        if not _STATE_NAME.match(state_name):
            raise ConfigError(
                f"state name {state_name!r} must be 1-100 letters, digits, '_' or '-'"
            )
        if max_open_writers < 1:
            raise ConfigError(f"max open writers must be >= 1, got {max_open_writers}")
        self.logdir = Path(logdir).absolute()
        self.state_name = state_name
        self.max_open_writers = max_open_writers
        self._suffix = f".flarestream-{state_name}."
        self._owned = re.compile(re.escape(self._suffix) + r"(\d+)\Z")
        self._events: ModuleType | None = None
        self._writer_class: Any = None
        self._state: SinkState  # loaded by open()
        self._writers: OrderedDict[str, _OpenFile] = OrderedDict()  # run dir -> open file
        self._closed: list[str] = []  # closed since the last flush: fsync at the next one
        self._new_dirs: set[Path] = set()  # directories whose entries to fsync
        self._changed = False
        self._lock: IO[str] | None = None
        self._skipped: Counter[str] = Counter()

    @property
    def state_path(self) -> Path:
        return self.logdir / STATE_DIR / f"{self.state_name}.json"

    # -- open: undo what a crash left ------------------------------------------------
    def open(self) -> None:
        """Load the state and undo everything written after the last flush. Raises
        ConfigError when tensorboard is missing, another process holds this logdir
        and state name, or this sink's event files exist without their state."""
        try:
            from flarestream.consumers import tensorboard_events
        except ImportError as exc:
            raise ConfigError(
                f"the tensorboard sink needs tensorboard and numpy ({exc}); "
                "install them with: pip install 'flarestream[tensorboard]'"
            ) from None
        self._events, self._writer_class = tensorboard_events, tensorboard_events.EventFile
        (self.logdir / STATE_DIR).mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._state = tensorboard_events.SinkState.load(self.state_path)
            self._recover()
            if not self.state_path.exists():  # from now on, owned files need their state
                self._state.save(self.state_path)
        except BaseException:
            self.close()  # the loop does not close a sink whose open() failed
            raise
        self._state.files = {}  # none open yet; the recovered ones are final
        self._writers.clear()
        self._closed, self._new_dirs, self._changed = [], set(), False

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the documented single-writer rule stands
            return
        handle = open(self.state_path.with_suffix(".lock"), "a")  # noqa: SIM115 - held open
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(
                f"another tensorboard sink is writing {self.logdir} with state name "
                f"{self.state_name!r}; stop it, or give this one its own --state-name"
            ) from None
        self._lock = handle

    def _owned_files(self) -> Iterable[tuple[Path, int]]:
        for top, dirs, files in os.walk(self.logdir):
            if top == str(self.logdir):
                dirs[:] = [d for d in dirs if d != STATE_DIR]
            for name in files:
                match = self._owned.search(name)
                if match and "tfevents" in name:
                    yield Path(top, name), int(match.group(1))

    def _recover(self) -> None:
        owned = list(self._owned_files())
        if owned and not self.state_path.exists():
            raise ConfigError(
                f"{len(owned)} event files in {self.logdir} were written by a tensorboard sink "
                f"with state name {self.state_name!r}, but its state {self.state_path} is "
                "missing; restore it, or write to a new --logdir or --state-name"
            )
        assert self._events is not None
        self._events.cut_back(self.logdir, self._state, owned)

    # -- writing ---------------------------------------------------------------------
    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        """Queue the events of each record not written before; reject unsafe names and
        values TensorBoard cannot hold."""
        if self._events is None:
            raise FlarestreamError("TensorBoardSink.write called before open()")
        rejections: list[Rejection] = []
        offsets = self._state.offsets
        for delivered in batch:
            pos = delivered.position
            if delivered.offset < offsets.get(pos, 0):
                continue  # written and flushed before: handed again after a restart
            reason = self._write_one(delivered.record)
            if reason is not None:
                rejections.append(Rejection(delivered, reason))
            offsets[pos] = delivered.offset + 1
            self._changed = True
        return rejections

    def _write_one(self, record: Record) -> str | None:
        events = self._events
        assert events is not None
        reason = unsafe_name("job id", record.job_id) or unsafe_name("site", record.site)
        if reason is not None:
            return reason
        data = received(record, LogWriterName.TORCH_TB)
        try:
            entries = events.summaries(data)
        except events.UnwritableRecordError as exc:
            return str(exc)
        if not entries:
            if not self._skipped[data.data_type.name]:
                log.info("%s records have no TensorBoard view; skipped", data.data_type.name)
            self._skipped[data.data_type.name] += 1
            return None
        base = f"{record.job_id}/{record.site}"
        runs = [f"{base}/{run}" if run else base for run, _ in entries]
        for run in runs:
            if run not in self._writers and len(f"{self.logdir}/{run}".encode()) > MAX_PATH_BYTES:
                return f"'{record.tag}': the run directory {run!r} makes too long a path"
        step = data.step if data.step is not None else self._next_step(record)
        for run, (_, summary) in zip(runs, entries, strict=True):
            opened = self._writer(run)
            opened.writer.add_event(events.make_event(summary, step, record.timestamp_ms))
            opened.dirty = True
        return None

    def _next_step(self, record: Record) -> int:
        key = (record.job_id, record.site, record.tag)
        step = self._state.steps.get(key, 0)
        self._state.steps[key] = step + 1
        return step

    def _writer(self, run: str) -> _OpenFile:
        opened = self._writers.get(run)
        if opened is not None:
            self._writers.move_to_end(run)
            return opened
        while len(self._writers) >= self.max_open_writers:
            _, oldest = self._writers.popitem(last=False)
            oldest.writer.close()  # its last bytes are fsynced by the next flush
            self._closed.append(oldest.path)
        directory = self.logdir / run
        self._make_dirs(directory)
        number = self._state.next_file
        self._state.next_file += 1
        suffix = f"{self._suffix}{number}"
        writer = self._writer_class(str(directory), suffix, number)
        (path,) = directory.glob(f"*{suffix}")
        opened = _OpenFile(writer, path.relative_to(self.logdir).as_posix())
        self._writers[run] = opened
        self._changed = True
        return opened

    def _make_dirs(self, target: Path) -> None:
        """Create ``target`` and note every directory whose entries change, so the next
        flush makes the new directories and event file names durable too."""
        missing, directory = [], target
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for new in reversed(missing):
            new.mkdir(exist_ok=True)
            self._new_dirs.add(new.parent)
        self._new_dirs.add(target)  # the new event file's entry

    # -- flush, drop, close ----------------------------------------------------------
    def flush(self) -> None:
        """Write every queued event (TensorBoard sees it from now on), fsync the files
        and their directories, then replace the state atomically. Returns None: all
        that was written is durable. Cheap when nothing changed."""
        if not self._changed:
            return None
        events = self._events
        assert events is not None
        for opened in self._writers.values():
            if opened.dirty:
                opened.writer.flush()
                path = self.logdir / opened.path
                events.fsync_file(path)
                opened.size, opened.dirty = path.stat().st_size, False
        for rel in self._closed:
            events.fsync_file(self.logdir / rel)
        for directory in sorted(self._new_dirs):
            events.fsync_dir(directory)
        self._state.files = {o.path: o.size for o in self._writers.values()}
        self._state.save(self.state_path)
        self._closed, self._new_dirs, self._changed = [], set(), False
        return None

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Nothing to forget: what was written from lost partitions stays in the files,
        the next flush records it, and the offsets skip it when it comes again."""

    def close(self) -> None:
        """Close every writer and release the lock. It does not save the state: after
        a failed write, the next :meth:`open` cuts back to the last flush."""
        for opened in self._writers.values():
            opened.writer.close()
        self._writers.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- command line ----------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--logdir",
            required=True,
            help="root directory; each site's run is <logdir>/<job>/<site>",
        )
        parser.add_argument(
            "--state-name",
            default="tensorboard",
            help="names this sink's state and files in <logdir>/.flarestream/ (%(default)s); "
            "each sink process writing the same logdir needs its own",
        )
        parser.add_argument(
            "--max-open-writers",
            type=int,
            default=256,
            help="event files kept open at once (%(default)s)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TensorBoardSink:
        return cls(args.logdir, state_name=args.state_name, max_open_writers=args.max_open_writers)

    def describe(self) -> Mapping[str, Any]:
        return {"sink": self.name, "logdir": str(self.logdir), "state": str(self.state_path)}
