"""Reaching and reading an archive: a local directory or any fsspec URL.

:class:`ArchiveReader` is the public API later tools build on (replay, audit)::

    with ArchiveReader("s3://bucket/prefix", {"endpoint_url": ...}) as archive:
        for file in archive.files(job_id="job-1"):      # complete files, by path
            assert not archive.verify(file)              # sha256, size, rows vs manifest
            for rec in archive.records(file):            # raw bytes + coordinates + Record
                ...

Only complete files (a data file with its manifest) are read unless asked
otherwise. :class:`Store` is what the sink writes through: local files are
written under a temporary name, fsynced and renamed; remote files are staged
locally and uploaded (object stores show an object only once its upload is
complete; other filesystems get an upload to a temporary name and a move).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from flarestream.consumers.archive_files import (
    MANIFEST_SUFFIX,
    Manifest,
    iter_rows,
    parse_data_name,
    row_headers,
    temp_name,
)
from flarestream.errors import ConfigError
from flarestream.schemas.codec import Codec, default_codec
from flarestream.schemas.record import Record

# protocols whose uploads appear atomically under their final name
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})
_SECRET_WORDS = ("secret", "key", "token", "password", "credential", "session")


class Store:
    """Files under one root, local (``os``) or remote (fsspec, imported lazily).

    Paths given to methods are relative to the root, ``/``-separated.
    """

    def __init__(self, root: str | Path, storage_options: Mapping[str, Any] | None = None) -> None:
        text = str(root)
        self._fs: Any = None
        if text.startswith("file://"):
            text = text[len("file://") :]
        if "://" in text:
            shown = redacted(text, {})[0]
            try:
                from fsspec.core import url_to_fs

                self._fs, path = url_to_fs(text, **dict(storage_options or {}))
            except ImportError as exc:
                raise ConfigError(
                    f"the archive root {shown!r} needs fsspec and its driver ({exc}): "
                    "pip install 'flarestream[s3]' (or the fsspec driver for that URL)"
                ) from None
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"cannot use archive root {shown!r}: {exc}") from None
            self.root = path.rstrip("/")
            protocols = self._fs.protocol
            protocols = {protocols} if isinstance(protocols, str) else set(protocols)
            self._atomic_put = bool(protocols & _OBJECT_STORES)
        else:
            if storage_options:
                raise ConfigError("storage options apply to fsspec URLs only, not a local root")
            self.root = os.path.abspath(text)
        self._staging = ""  # local directory for remote uploads, made when first needed
        self._counter = 0

    @property
    def is_local(self) -> bool:
        return self._fs is None

    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    # -- writing ---------------------------------------------------------------
    def staging_path(self, rel: str) -> str:
        """A local path to write ``rel``'s content to before :meth:`publish`."""
        if self._fs is None:
            directory, name = os.path.split(self.full(rel))
            os.makedirs(directory, exist_ok=True)
            return os.path.join(directory, temp_name(name))
        if not self._staging:
            self._staging = tempfile.mkdtemp(prefix="flarestream-archive-")
        self._counter += 1
        return os.path.join(self._staging, f"{self._counter}-{rel.rsplit('/', 1)[-1]}")

    def publish(self, staging: str, rel: str) -> None:
        """Make the finished (fsynced) staging file appear as ``rel``, whole or not at all."""
        final = self.full(rel)
        if self._fs is None:
            os.replace(staging, final)
            _fsync_dir(os.path.dirname(final))
            return
        try:
            if self._atomic_put:
                self._fs.put_file(staging, final)
            else:
                parent, name = final.rsplit("/", 1)
                self._fs.makedirs(parent, exist_ok=True)
                tmp = f"{parent}/{temp_name(name)}"
                self._fs.put_file(staging, tmp)
                self._fs.mv(tmp, final)
        finally:
            os.remove(staging)

    def put_bytes(self, rel: str, data: bytes) -> None:
        """Write a small file atomically (a manifest)."""
        staging = self.staging_path(rel)
        with open(staging, "wb") as fo:
            fo.write(data)
            fo.flush()
            os.fsync(fo.fileno())
        self.publish(staging, rel)

    def remove(self, rel: str) -> None:
        """Delete a file; a missing one is fine."""
        try:
            if self._fs is None:
                os.remove(self.full(rel))
            else:
                self._fs.rm_file(self.full(rel))
        except FileNotFoundError:
            pass

    def discard(self, staging: str) -> None:
        """Delete a staging file that will not be published."""
        with suppress(FileNotFoundError):
            os.remove(staging)

    def close(self) -> None:
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)

    # -- reading ---------------------------------------------------------------
    def list_dir(self, rel: str) -> list[str]:
        """Names of the files in a directory (fresh, not cached); [] if it does not exist."""
        path = self.full(rel)
        try:
            if self._fs is None:
                return [e.name for e in os.scandir(path) if e.is_file()]
            self._fs.invalidate_cache(path)
            entries = self._fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "file"]

    def walk(self, rel: str = "") -> Iterator[str]:
        """Relative paths of every file below ``rel``, sorted."""
        base = self.full(rel)
        if self._fs is None:
            found = [
                os.path.relpath(os.path.join(d, n), self.root).replace(os.sep, "/")
                for d, _, names in os.walk(base)
                for n in names
            ]
        else:
            self._fs.invalidate_cache(base)
            try:
                found = [p[len(self.root) + 1 :] for p in self._fs.find(base)]
            except FileNotFoundError:
                found = []
        yield from sorted(found)

    def open(self, rel: str) -> IO[bytes]:
        if self._fs is None:
            return open(self.full(rel), "rb")
        fo: IO[bytes] = self._fs.open(self.full(rel), "rb")
        return fo

    def read_bytes(self, rel: str) -> bytes:
        with self.open(rel) as fo:
            return fo.read()


def parse_storage_options(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to fsspec options; VALUE is parsed as JSON when it is JSON
    (numbers, booleans, objects), else kept as a string."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--storage-option wants KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def redacted(root: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The root and storage options with credentials masked, for logs."""
    masked = {
        k: "***" if any(w in k.lower() for w in _SECRET_WORDS) else v for k, v in options.items()
    }
    scheme, sep, rest = root.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        root = f"{scheme}://***@{rest.split('@', 1)[1]}"
    return root, masked


def _fsync_dir(path: str) -> None:
    """Make a rename durable (POSIX: the directory entry needs its own fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: directories cannot be opened
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ArchivedFile:
    """One data file; ``manifest`` is None when it is incomplete."""

    path: str  # relative to the root: job/site/date/name
    job_id: str
    site: str
    date: str
    topic: str
    partition: int
    first_offset: int
    format: str
    manifest: Manifest | None

    @property
    def complete(self) -> bool:
        return self.manifest is not None


@dataclass(frozen=True)
class ArchivedRecord:
    """One archived message: Kafka coordinates, the original bytes, the decoded record."""

    topic: str
    partition: int
    offset: int
    kafka_timestamp_ms: int
    raw: bytes
    record: Record
    headers: tuple[tuple[str, bytes | None], ...] = ()  # the message headers, if archived


class ArchiveReader(AbstractContextManager["ArchiveReader"]):
    """Reads an archive written by the archive sink (see the module doc)."""

    def __init__(
        self,
        root: str | Path,
        storage_options: Mapping[str, Any] | None = None,
        codec: Codec | None = None,
    ) -> None:
        self.store = Store(root, storage_options)
        self.codec = codec or default_codec()

    def files(
        self,
        job_id: str | None = None,
        site: str | None = None,
        date: str | None = None,
        include_incomplete: bool = False,
    ) -> Iterator[ArchivedFile]:
        """Data files (sorted by path), filtered by job, site and date (``YYYY-MM-DD``).
        Raises ArchiveError for an unreadable manifest."""
        prefix = []
        for part in (job_id, site, date):  # list only below the most specific directory
            if part is None:
                break
            prefix.append(part)
        paths = list(self.store.walk("/".join(prefix)))
        present = set(paths)
        for path in paths:
            parts = path.split("/")
            name = parse_data_name(parts[-1])
            if name is None or len(parts) != 4:
                continue
            job, where, day = parts[:3]
            if (job_id or job, site or where, date or day) != (job, where, day):
                continue
            manifest = None
            if path + MANIFEST_SUFFIX in present:
                manifest = Manifest.from_json(self.store.read_bytes(path + MANIFEST_SUFFIX), path)
            if manifest is None and not include_incomplete:
                continue
            yield ArchivedFile(
                path,
                job,
                where,
                day,
                name.topic,
                name.partition,
                name.first_offset,
                name.format,
                manifest,
            )

    def rows(self, file: ArchivedFile) -> Iterator[dict[str, Any]]:
        """The archive rows of one file, as stored (see ``ARCHIVE_SCHEMA``)."""
        with self.store.open(file.path) as fo:
            yield from iter_rows(file.format, fo)

    def records(self, file: ArchivedFile) -> Iterator[ArchivedRecord]:
        """The messages of one file with their coordinates, decoded with this codec
        (DecodeError for a message whose schema the codec does not know)."""
        for row in self.rows(file):
            raw = bytes(row["message"])
            yield ArchivedRecord(
                row["topic"],
                row["partition"],
                row["offset"],
                row["kafka_timestamp_ms"],
                raw,
                self.codec.decode(raw),
                row_headers(row),
            )

    def all_records(
        self, job_id: str | None = None, site: str | None = None
    ) -> Iterator[ArchivedRecord]:
        """Every record of every complete file (filtered), file by file."""
        for file in self.files(job_id, site):
            yield from self.records(file)

    def verify(self, file: ArchivedFile, deep: bool = True) -> list[str]:
        """Problems with a file (empty list: it matches its manifest). Checks size and
        sha256; ``deep`` also reads every row and checks count, offsets and placement."""
        m = file.manifest
        if m is None:
            return [f"{file.path}: no manifest (incomplete file)"]
        problems = []
        digest, size = hashlib.sha256(), 0
        with self.store.open(file.path) as fo:
            while chunk := fo.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        if size != m.size_bytes:
            problems.append(f"{file.path}: {size} bytes, manifest says {m.size_bytes}")
        if digest.hexdigest() != m.sha256:
            problems.append(f"{file.path}: sha256 differs from the manifest")
        expected = (file.path.rsplit("/", 1)[-1], file.topic, file.partition, file.first_offset)
        if (m.file, m.topic, m.partition, m.first_offset) != expected:
            problems.append(f"{file.path}: manifest names another file ({m.file})")
        if deep and not problems:
            problems += self._check_rows(file, m)
        return problems

    def _check_rows(self, file: ArchivedFile, m: Manifest) -> list[str]:
        offsets = []
        for row in self.rows(file):
            offsets.append(row["offset"])
            where = (row["topic"], row["partition"], row["job_id"], row["site"])
            if where != (m.topic, m.partition, m.job_id, m.site):
                return [f"{file.path}: row at offset {row['offset']} belongs elsewhere {where}"]
        if len(offsets) != m.record_count:
            return [f"{file.path}: {len(offsets)} rows, manifest says {m.record_count}"]
        if offsets != sorted(set(offsets)) or (
            offsets and (offsets[0], offsets[-1]) != (m.first_offset, m.last_offset)
        ):
            return [f"{file.path}: offsets are not increasing from first to last offset"]
        return []

    def close(self) -> None:
        self.store.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
