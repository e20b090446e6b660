"""The archive sink in the shared behaviour suite: points are read from the archive's
complete files by decoding each archived message's original bytes."""

from __future__ import annotations

from pathlib import Path

from flarestream.consumers.archive import ArchiveSink
from flarestream.consumers.archive_reader import ArchiveReader
from flarestream.consumers.sink import Sink
from flarestream.schemas import AnalyticsDataType, decode
from tests.integration.sinks.harness import Point, SinkHarness


class ArchiveHarness(SinkHarness):
    name = "archive"

    def make_sink(self, root: Path) -> Sink:
        return ArchiveSink(root)

    def cli_args(self, root: Path) -> list[str]:
        return ["--root", str(root), "--max-age", "1"]

    def read_points(self, root: Path, job_id: str) -> list[Point]:
        points: list[Point] = []
        if not root.exists():
            return points
        with ArchiveReader(root) as archive:
            for file in archive.files(job_id=job_id):
                for row in archive.rows(file):
                    record = decode(row["message"])
                    if record.data_type is AnalyticsDataType.SCALAR:
                        step = -1 if record.step is None else record.step
                        points.append((record.site, record.tag, step, float(record.value)))
        return points


HARNESS = ArchiveHarness()
