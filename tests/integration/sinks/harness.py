"""What the behaviour suite needs from each sink, to prove the same promises for all.

Each sink provides a module ``tests/integration/sinks/<name>_harness.py`` defining
``HARNESS``, an instance of a :class:`SinkHarness` subclass. The suite sends plain
SCALAR records whose (site, tag, step) are unique, so each sink's contents can be
read back as a list of :data:`Point` and compared with what was sent: a record
lost is a missing point, a record written twice is a repeated point.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from flarestream.consumers.sink import Sink

Point = tuple[str, str, int, float]  # (site, tag, step, value)


class SinkHarness(ABC):
    name: str  # the sink's entry-point name

    @abstractmethod
    def make_sink(self, root: Path) -> Sink:
        """A sink writing under ``root`` (a fresh tmp dir per test)."""

    @abstractmethod
    def cli_args(self, root: Path) -> list[str]:
        """Arguments after ``flarestream sink NAME`` that write to the same place as
        :meth:`make_sink` (the suite adds --bootstrap-servers, --topic, --group...)."""

    @abstractmethod
    def read_points(self, root: Path, job_id: str) -> list[Point]:
        """Every scalar the sink holds for ``job_id``, duplicates included, read back
        with the backend's own reader (TensorBoard's, MLflow's client, the Avro files)."""

    def close(self) -> None:  # noqa: B027 - optional: stop servers started for the harness
        """Release anything the harness started."""
