"""The auditor: reads a topic range and/or an archive once and accounts what each
holds (:mod:`flarestream.consumers.audit`), checks every archive file against its
manifest and, with keys, every record's signature
(:mod:`flarestream.consumers.provenance`).

Scope of the archive: its records of ``archive_topic``; by default of the audited
topic when the archive holds it (then only the rows inside the topic range), else
every record it holds. Nothing is written anywhere; the topic is read with a
throwaway group that never commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flarestream.consumers.archive_files import MANIFEST_SUFFIX, ArchiveError
from flarestream.consumers.archive_reader import ArchivedFile, ArchiveReader
from flarestream.consumers.archive_source import (
    archived_records,
    file_selected,
    merge_rows,
    open_archive,
    row_item,
)
from flarestream.consumers.audit import Interval, Location, OffsetLedger, SequenceAudit
from flarestream.consumers.audit_report import build_report
from flarestream.consumers.progress import Progress
from flarestream.consumers.provenance import ProvenanceAudit
from flarestream.consumers.replay_source import RecordFilter, Undecodable
from flarestream.consumers.sink import Delivered
from flarestream.consumers.source_options import empty_range_error
from flarestream.consumers.topic_range import RangeSpec, TopicRange
from flarestream.consumers.topic_source import TopicSource
from flarestream.errors import ConfigError
from flarestream.schemas.codec import default_codec
from flarestream.signing import PublicKeys, load_public_keys


@dataclass
class AuditConfig:
    bootstrap_servers: str
    topic: str | None = None
    archive: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    archive_topic: str | None = None
    spec: RangeSpec = field(default_factory=RangeSpec)
    filter: RecordFilter = field(default_factory=RecordFilter)
    max_listed: int = 1000
    progress: bool | None = None
    verify_keys: PublicKeys | str | None = None


class Auditor:
    """Runs one audit; :meth:`run` returns the report (a JSON-ready dict, see
    :func:`~flarestream.consumers.audit_report.build_report`)."""

    def __init__(self, cfg: AuditConfig) -> None:
        if cfg.topic is None and cfg.archive is None:
            raise ConfigError("give --topic, --archive or both")
        self.cfg = cfg
        self.topic_seq = SequenceAudit("topic", max_listed=cfg.max_listed)
        self.archive_seq = SequenceAudit("archive", max_listed=cfg.max_listed)
        self.undecodable: dict[str, list[str]] = {"topic": [], "archive": []}
        self.undecodable_count = {"topic": 0, "archive": 0}
        self.file_problems: list[dict[str, str]] = []
        self.files: dict[str, int] = {"complete": 0, "incomplete": 0, "checked": 0}
        self.scope: str | None = None
        self.same_topic = False
        self.ledger: OffsetLedger | None = None
        self.by_offset: dict[str, dict[int, list[Interval]]] = {"missing": {}, "altered": {}}
        self.outside_range = 0
        self.topic_read = 0
        self.notes: list[str] = []
        keys = load_public_keys(cfg.verify_keys)  # bad keys fail here, before any reading
        self.provenance = None if keys is None else ProvenanceAudit(keys, cfg.max_listed)

    # -- running ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        source = None
        if cfg.topic is not None:
            source = TopicSource(cfg.bootstrap_servers, cfg.topic, cfg.spec, cfg.filter)
        try:
            if source is not None and cfg.spec.bounded and source.total == 0:
                raise empty_range_error(source)
            if cfg.archive is not None:
                self._archive_pass(source.range if source else None)
            if source is not None:
                self._topic_pass(source)
            return build_report(self, source)
        finally:
            if source is not None:
                source.close()

    def _list_files(self, reader: ArchiveReader) -> list[ArchivedFile]:
        paths = list(reader.store.walk())
        present = set(paths)
        for p in paths:  # a manifest whose data file is gone: those records are lost
            if p.endswith(MANIFEST_SUFFIX) and p[: -len(MANIFEST_SUFFIX)] not in present:
                self._problem(
                    p[: -len(MANIFEST_SUFFIX)], "data file missing (its manifest is there)"
                )
        try:
            return list(reader.files(include_incomplete=True))
        except ArchiveError:
            pass  # one unreadable manifest ends the listing: go directory by directory
        files: list[ArchivedFile] = []
        for job, site, day in sorted({tuple(p.split("/")[:3]) for p in paths if p.count("/") == 3}):
            try:
                files += reader.files(job, site, day, include_incomplete=True)
            except ArchiveError as exc:
                self._problem(f"{job}/{site}/{day}", str(exc))
        return files

    def _archive_pass(self, topic_range: TopicRange | None) -> None:
        cfg = self.cfg
        with open_archive(cfg.archive or "", cfg.storage_options, default_codec()) as reader:
            files = self._list_files(reader)
            topics = {f.topic for f in files}
            self.scope = cfg.archive_topic or (cfg.topic if cfg.topic in topics else None)
            self.same_topic = cfg.topic is not None and self.scope == cfg.topic
            spec = cfg.spec
            if cfg.topic is not None and not self.same_topic:  # offsets name another topic
                spec = RangeSpec(from_time_ms=spec.from_time_ms, to_time_ms=spec.to_time_ms)
            if self.same_topic and topic_range is not None:
                self.ledger = OffsetLedger(
                    (p.partition, p.start, p.end) for p in topic_range.partitions
                )
            self.files["incomplete"] = sum(1 for f in files if not f.complete)
            chosen = [f for f in files if file_selected(f, spec, cfg.filter, self.scope)]
            self.files["complete"] = sum(1 for f in files if f.complete)
            self.files["checked"] = len(chosen)
            for f in chosen:
                try:
                    for problem in reader.verify(f, deep=False):
                        self._problem(f.path, problem.split(": ", 1)[-1])
                except (OSError, ValueError) as exc:
                    self._problem(f.path, f"cannot be read: {exc}")
            self._archive_rows(reader, chosen, spec, topic_range)

    def _archive_rows(
        self,
        reader: ArchiveReader,
        files: list[ArchivedFile],
        spec: RangeSpec,
        topic_range: TopicRange | None,
    ) -> None:
        counts: dict[str, int] = {}
        codec = default_codec()
        unreadable = set()

        def on_error(f: ArchivedFile, exc: Exception) -> None:
            unreadable.add(f.path)
            self._problem(f.path, f"unreadable after {counts.get(f.path, 0)} rows: {exc}")

        total = archived_records(files)
        progress = Progress("audit archive", total, enabled=self.cfg.progress)
        for f, row in merge_rows(reader, files, on_error):
            progress.advance()
            counts[f.path] = counts.get(f.path, 0) + 1
            item = row_item(f, row, spec, self.cfg.filter, codec)
            if item is None:
                continue
            if self.same_topic and topic_range is not None:
                pr = topic_range.get(item.partition)
                if pr is None or not pr.start <= item.offset < pr.end:
                    self.outside_range += 1
                    continue
            if isinstance(item, Undecodable):
                self._undecodable("archive", item)
                continue
            r = item.record
            where = Location(item.topic, item.partition, item.offset, f.path)
            self.archive_seq.observe(r.job_id, r.site, r.sender_id, r.seq, where)
            if self.provenance is not None:
                self.provenance.observe("archive", item, str(where))
            if self.ledger is not None:
                self.ledger.add(item.partition, item.offset, item.raw)
        progress.finish()
        for f in files:
            m = f.manifest
            if (
                m is not None
                and f.path not in unreadable
                and counts.get(f.path, 0) != m.record_count
            ):
                self._problem(
                    f.path, f"holds {counts.get(f.path, 0)} rows, manifest says {m.record_count}"
                )

    def _topic_pass(self, source: TopicSource) -> None:
        progress = Progress("audit topic", source.total, enabled=self.cfg.progress)
        try:
            for batch in source.batches():
                self.topic_read += batch.read
                progress.advance(batch.read)
                for item in batch.items:
                    if isinstance(item, Delivered):
                        self._topic_record(item)
                    else:
                        self._undecodable("topic", item)
        finally:
            progress.finish()

    def _topic_record(self, d: Delivered) -> None:
        r = d.record
        where = Location(d.topic, d.partition, d.offset)
        self.topic_seq.observe(r.job_id, r.site, r.sender_id, r.seq, where)
        if self.provenance is not None:
            self.provenance.observe("topic", d, str(where))
        if self.ledger is not None:
            verdict = self.ledger.match(d.partition, d.offset, d.raw)
            if verdict != "ok":
                spans = self.by_offset[verdict].setdefault(d.partition, [])
                if spans and spans[-1][1] == d.offset - 1:
                    spans[-1] = (spans[-1][0], d.offset)
                else:
                    spans.append((d.offset, d.offset))

    def _undecodable(self, source: str, u: Undecodable) -> None:
        self.undecodable_count[source] += 1
        if len(self.undecodable[source]) < self.cfg.max_listed:
            self.undecodable[source].append(f"{u.where}: {u.reason}")

    def _problem(self, path: str, problem: str) -> None:
        self.file_problems.append({"path": path, "problem": problem})
