"""One archive data file being written: started, then completed with its manifest.

A file is streamed to a staging path and appears under its final name only when
complete; its manifest (size, sha256, offsets, record count) is published after
it, so a data file without a manifest is known to be incomplete.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from flarestream.consumers.archive_files import (
    MANIFEST_SUFFIX,
    ArchiveError,
    FileWriter,
    Manifest,
    archive_fingerprint,
    data_name,
    file_digest,
    open_writer,
)
from flarestream.consumers.archive_index import FileKey
from flarestream.consumers.archive_store import Store


@dataclass
class OpenFile:
    """A data file being written: consecutive records of one partition."""

    key: FileKey
    rel: str  # final path below the root
    staging: str  # local path being written
    writer: FileWriter
    first_offset: int
    opened_at: float  # time.monotonic()
    last_offset: int = -1
    count: int = 0
    min_ts: int = 2**63 - 1
    max_ts: int = -(2**63)


def start_file(store: Store, key: FileKey, offset: int, fmt: str, codec: str) -> OpenFile:
    """Open the data file of ``key`` whose first record is at ``offset``."""
    rel_dir, topic, partition = key
    rel = f"{rel_dir}/{data_name(topic, partition, offset, fmt)}"
    job, site, day = rel_dir.split("/")
    meta = {
        "topic": topic,
        "partition": str(partition),
        "job_id": job,
        "site": site,
        "date": day,
    }
    meta = {f"flarestream.{k}": v for k, v in meta.items()}
    staging = store.staging_path(rel)
    return OpenFile(
        key,
        rel,
        staging,
        open_writer(fmt, codec, staging, meta),
        offset,
        time.monotonic(),
    )


def complete_file(store: Store, f: OpenFile, fmt: str, compression: str) -> None:
    """Complete a file: data in place first, then its manifest. ArchiveError (the
    staging file discarded) when either cannot be written."""
    rel_dir, topic, partition = f.key
    try:
        f.writer.finish()
        size, sha = file_digest(f.staging)
        store.publish(f.staging, f.rel)
        job, site, day = rel_dir.split("/")
        name = f.rel.rsplit("/", 1)[-1]
        manifest = Manifest(
            name,
            fmt,
            compression,
            topic,
            partition,
            f.first_offset,
            f.last_offset,
            f.count,
            job,
            site,
            day,
            size,
            sha,
            dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            f.min_ts,
            f.max_ts,
            schema_fingerprint=archive_fingerprint(),
        )
        store.put_bytes(f.rel + MANIFEST_SUFFIX, manifest.to_json())
    except OSError as exc:
        store.discard(f.staging)
        raise ArchiveError(
            f"cannot complete archive file {store.full(f.rel)}: {exc}; check that "
            "the root is reachable and writable (nothing past the last commit is lost)"
        ) from exc
