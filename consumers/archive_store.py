"""Files under one archive root: a local directory or any fsspec URL.

:class:`Store` is what the archive sink writes through and the reader reads
through. Local files are written under a temporary name, fsynced and renamed;
remote files are staged locally and uploaded (object stores show an object only
once its upload is complete; other filesystems get an upload to a temporary name
and a move). fsspec is imported only for a URL root, and a missing driver is a
ConfigError naming what to install. :func:`redacted` masks credentials for logs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from flarestream.consumers.archive_files import temp_name
from flarestream.errors import ConfigError

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
