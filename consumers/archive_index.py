"""What the archive already holds for one directory and partition.

The archive sink reads the manifests beside a partition's files once, when it
first writes to the directory, so records held by complete files are skipped
after a restart or a replay (exactly once). Data files without a manifest
(left by a crash) are remembered as orphans, to be removed once a complete file
holds their records; stale temporary files are deleted.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection
from dataclasses import dataclass, field

from flarestream.consumers.archive_files import MANIFEST_SUFFIX, Manifest, parse_data_name
from flarestream.consumers.archive_store import Store

FileKey = tuple[str, str, int]  # (directory below the root, topic, partition)


@dataclass
class KnownFiles:
    """Complete files of one directory and partition: (first, last) offsets, sorted."""

    firsts: list[int] = field(default_factory=list)
    lasts: list[int] = field(default_factory=list)
    orphans: dict[int, str] = field(default_factory=dict)  # data files without manifest

    def add(self, first: int, last: int) -> None:
        i = bisect.bisect_left(self.firsts, first)
        self.firsts.insert(i, first)
        self.lasts.insert(i, last)

    def covers(self, offset: int) -> bool:
        i = bisect.bisect_right(self.firsts, offset) - 1
        return i >= 0 and offset <= self.lasts[i]

    def prune(self, below: int) -> None:
        """Forget files wholly below a committed offset (never delivered again)."""
        keep = [i for i, last in enumerate(self.lasts) if last >= below]
        self.firsts = [self.firsts[i] for i in keep]
        self.lasts = [self.lasts[i] for i in keep]


def scan_partition(store: Store, key: FileKey, offset: int, mine: Collection[str]) -> KnownFiles:
    """What a directory already holds for the partition, from the manifests of the
    files that may hold ``offset`` or later. Stale temporary files are deleted,
    except those of ``mine`` (names of files this sink has open there)."""
    rel_dir, topic, partition = key
    names = store.list_dir(rel_dir)
    complete = {n[: -len(MANIFEST_SUFFIX)] for n in names if n.endswith(MANIFEST_SUFFIX)}
    files: dict[int, str] = {}
    for n in names:
        stale = n.startswith(".") and n.endswith(".tmp")
        inner = n[1:-4].removesuffix(MANIFEST_SUFFIX) if stale else n
        parsed = parse_data_name(inner)
        if parsed is None or (parsed.topic, parsed.partition) != (topic, partition):
            continue
        if stale and inner not in mine:
            store.remove(f"{rel_dir}/{n}")  # left by a crash; rewritten anyway
        elif not stale:
            files[parsed.first_offset] = n
    firsts = sorted(files)
    start = 0  # the last complete file starting at or before offset, and all after
    for i, first in enumerate(firsts):
        if first <= offset and files[first] in complete:
            start = i
    known = KnownFiles()
    for first in firsts[start:]:
        name = files[first]
        if name in complete:
            where = f"{store.full(rel_dir)}/{name}{MANIFEST_SUFFIX}"
            raw = store.read_bytes(f"{rel_dir}/{name}{MANIFEST_SUFFIX}")
            m = Manifest.from_json(raw, where)
            known.add(m.first_offset, m.last_offset)
        else:
            known.orphans[first] = name
    return known
