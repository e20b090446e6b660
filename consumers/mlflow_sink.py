"""The MLflow sink: NVFlare's MLflow receiver, without its losses.

Layout (NVFlare's): one experiment per job, named by ``--experiment-name``
(default ``"FLARE FL Experiment"``, NVFlare's; ``{job_id}`` in the name gives
each job its own experiment), and in it one run per site, named
``--run-name`` (default ``"{site}-{job_id:.6}-FLARE FL Run"``, NVFlare's scheme
less the job name, which records do not carry) and tagged ``site``, ``job_id``
and ``run_name``. What each record becomes is in
:mod:`flarestream.consumers.mlflow_batches`; finding and creating runs in
:mod:`flarestream.consumers.mlflow_runs`; reaching the store in
:mod:`flarestream.consumers.mlflow_store`.

Guarantees:

- A run is found or created when its site is first seen; a site unknown at start
  is never an error. Runs are found by a tag derived from (job id, site), so
  restarts and several sinks share one run. Two sinks creating the same run at
  once keep the oldest (start time, then run id) and delete the newer, unused
  one, checked again before the first write to the run.
- Metrics, params and tags are buffered per run and sent at :meth:`flush` with
  ``log_batch``, chunked to MLflow's limits; each call is retried with
  exponential backoff; if it still fails, flush raises and the loop stops
  without committing (nothing is lost, nothing is dropped).
- Idempotent: metric rows carry the sender's timestamp, so a record written
  again is an identical row (MLflow's SQL store keeps one); beyond that, the
  last batch of a flush stores the highest offset written per partition as the
  run tag ``flarestream.offset.<topic>.<partition>``, and records at or below it
  are skipped after a restart or a replay.
- A record MLflow would refuse (bad key, changed param value, unsafe site name,
  artifact path outside the run) is returned as a Rejection before it reaches a
  batch. MODEL, LOG_RECORD and INIT_DATA records are ignored, as NVFlare does
  (logged once per type).

Where it writes: ``--tracking-uri`` (default ``$MLFLOW_TRACKING_URI``, else
``sqlite:///$FLARESTREAM_HOME/mlflow/mlflow.db``); a new sqlite file is built
whole under a temporary name and linked into place, so nobody sees it half made.
Artifacts of new experiments go to ``--artifact-location`` (default: ``mlartifacts/``
beside a sqlite file; the server's default for a tracking server).

Not promised: a sink that raced another one to create a run, and whose create
request was delayed past the other's first write, may leave two runs (the
oldest-wins check runs at creation and before the first write). Offsets are
trusted per topic name: records of the same job and site re-sent to a topic
deleted and created again are taken as already stored. MLflow itself stores
+-inf as +-1.7976931348623157e308 and cuts long param/tag values.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from flarestream.consumers.mlflow_batches import (
    PendingWrites,
    RecordRefused,
    entries_for,
    offset_tag,
    site_problem,
)
from flarestream.consumers.mlflow_runs import (
    MAX_CACHED_RUNS,
    SiteRun,
    SiteRuns,
    check_tag_keys,
    check_templates,
)
from flarestream.consumers.mlflow_store import (
    PERMANENT_ERRORS,
    create_sqlite_store,
    default_tracking_uri,
    mask_uri,
    parse_tags,
    retry,
    send_pending,
    sqlite_path,
)
from flarestream.consumers.sink import Delivered, Rejection, Sink, TopicPartition
from flarestream.errors import ConfigError, FlarestreamError
from flarestream.schemas.dxo import received
from flarestream.schemas.record import AnalyticsDataType, LogWriterName

# names that lived here before the split, still importable from this module
__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_RUN_NAME",
    "MAX_CACHED_RUNS",
    "PERMANENT_ERRORS",
    "MLflowSink",
    "default_tracking_uri",
    "mask_uri",
    "parse_tags",
    "sqlite_path",
]

log = logging.getLogger("flarestream.consumers.mlflow")

DEFAULT_EXPERIMENT = "FLARE FL Experiment"
DEFAULT_RUN_NAME = "{site}-{job_id:.6}-FLARE FL Run"
R = TypeVar("R")


class MLflowSink(Sink):
    """Writes analytics records to MLflow (sqlite file or tracking server)."""

    name = "mlflow"
    description = "MLflow: one experiment per job, one run per site (NVFlare's layout)"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = DEFAULT_EXPERIMENT,
        run_name: str = DEFAULT_RUN_NAME,
        experiment_tags: Mapping[str, str] | None = None,
        run_tags: Mapping[str, str] | None = None,
        artifact_location: str | None = None,
        attempts: int = 5,
        backoff_s: float = 0.5,
    ) -> None:
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self._db = sqlite_path(self.tracking_uri)
        check_templates(experiment_name, run_name)
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.experiment_tags = dict(experiment_tags or {})
        self.run_tags = dict(run_tags or {})
        check_tag_keys([*self.experiment_tags, *self.run_tags])
        if artifact_location is None and self._db is not None:
            artifact_location = str(self._db.absolute().parent / "mlartifacts")
        self.artifact_location = artifact_location
        if attempts < 1:
            raise ConfigError(f"attempts must be >= 1, got {attempts}")
        self.attempts, self.backoff_s = attempts, backoff_s
        self._client: Any = None
        self._pending: dict[tuple[str, str, str, int], PendingWrites] = {}
        self._runs = SiteRuns(
            lambda: self.client,
            self._retry,
            lambda: {(j, s) for j, s, _t, _p in self._pending},
            self.experiment_name,
            self.run_name,
            self.experiment_tags,
            self.run_tags,
            self.artifact_location,
        )
        self._ignored: set[AnalyticsDataType] = set()

    # -- lifecycle -------------------------------------------------------------
    def open(self) -> None:
        """Connect (and create the sqlite file's directory); raises ConfigError when
        MLflow is not installed, FlarestreamError when the store cannot be reached."""
        if self._client is not None:
            return
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ConfigError(
                f"the MLflow sink needs MLflow ({exc}): pip install 'flarestream[mlflow]'"
            ) from None
        if self._db is not None and not self._db.exists():
            create_sqlite_store(self._db.absolute())
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        # fail at start, not at the first record, when the store is unreachable
        self._retry(
            "reach the tracking store", lambda: self._client.search_experiments(max_results=1)
        )

    def close(self) -> None:
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self.open()
        return self._client

    # -- writing ---------------------------------------------------------------
    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        rejections: list[Rejection] = []
        for d in batch:
            reason = self._take(d)
            if reason is not None:
                rejections.append(Rejection(d, f"mlflow: {reason}"))
        return rejections

    def _take(self, d: Delivered) -> str | None:
        """Buffer one record; the reason it is refused, or None."""
        rec = d.record
        problem = site_problem(rec.site)
        if problem:
            return problem
        try:
            entries = entries_for(rec, received(rec, LogWriterName.MLFLOW))
        except RecordRefused as exc:
            return str(exc)
        if entries is None:
            if rec.data_type not in self._ignored:
                self._ignored.add(rec.data_type)
                log.warning("mlflow sink ignores %s records (as NVFlare does)", rec.data_type.name)
            return None
        try:
            run = self._runs.run_for(rec.job_id, rec.site)
        except RecordRefused as exc:
            return str(exc)
        if d.offset <= run.offsets.get(offset_tag(d.topic, d.partition), -1):
            return None  # stored by an earlier flush (a restart or a replay)
        conflict = self._param_conflict(rec.job_id, rec.site, run, entries.params)
        if conflict:
            return conflict
        key = (rec.job_id, rec.site, d.topic, d.partition)
        self._pending.setdefault(key, PendingWrites()).add(entries, d.offset)
        return None

    def _param_conflict(
        self, job: str, site: str, run: SiteRun, params: dict[str, str]
    ) -> str | None:
        for name, value in params.items():
            known = run.params.get(name)
            if known is None:
                for (j, s, _t, _p), pending in self._pending.items():
                    if (j, s) == (job, site) and name in pending.params:
                        known = pending.params[name]
                        break
            if known is not None and known != value:
                return (
                    f"param {name!r} of site {site!r} is already {known[:100]!r}; MLflow does "
                    f"not allow changing it to {value[:100]!r}"
                )
        return None

    # -- flushing --------------------------------------------------------------
    def flush(self) -> Mapping[TopicPartition, int] | None:
        """Send everything buffered (artifacts, then ``log_batch`` chunks whose last
        one carries the partition's offset tag); None when all of it is stored.
        Raises FlarestreamError when MLflow still fails after the retries, or
        refuses a batch: the loop then stops without committing."""
        for key in list(self._pending):
            job, site, topic, partition = key
            pending = self._pending[key]
            run = self._runs.cached(job, site) or self._runs.run_for(job, site)
            if not run.verified:
                run = self._runs.verify(job, site, run)
            try:
                send_pending(self.client, self._retry, run.run_id, pending, topic, partition)
            except FlarestreamError:
                raise
            except Exception as exc:  # a permanent refusal: say which run and why
                raise FlarestreamError(
                    f"MLflow refused data for site {site!r} of job {job!r} (run {run.run_id}): "
                    f"{exc}; nothing was committed: fix the cause and restart the sink"
                ) from exc
            del self._pending[key]
            run.params.update(pending.params)
            tag = offset_tag(topic, partition)
            run.offsets[tag] = max(run.offsets.get(tag, -1), pending.last_offset)
        return None

    def _retry(self, what: str, call: Callable[[], R]) -> R:
        """``call()``, retried with exponential backoff on errors a retry can fix;
        MLflow's permanent refusals are raised at once, unchanged."""
        return retry(what, call, self.attempts, self.backoff_s, self.tracking_uri)

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        gone = set(partitions)
        for key in [k for k in self._pending if (k[2], k[3]) in gone]:
            del self._pending[key]

    # -- command line ----------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--tracking-uri",
            default=None,
            help="MLflow store: sqlite:///PATH or http(s)://HOST:PORT of a tracking server "
            "(default: $MLFLOW_TRACKING_URI, else sqlite under $FLARESTREAM_HOME/mlflow/)",
        )
        parser.add_argument(
            "--experiment-name",
            default=DEFAULT_EXPERIMENT,
            help="experiment of a job; {job_id} is replaced by the job id (default: %(default)s)",
        )
        parser.add_argument(
            "--run-name",
            default=DEFAULT_RUN_NAME,
            help="run of a site; {site} and {job_id} are replaced (default: %(default)s)",
        )
        parser.add_argument(
            "--experiment-tag", action="append", default=[], metavar="KEY=VALUE",
            help="tag set on each experiment (repeatable)",
        )  # fmt: skip
        parser.add_argument(
            "--run-tag", action="append", default=[], metavar="KEY=VALUE",
            help="tag set on each run when it is created (repeatable)",
        )  # fmt: skip
        parser.add_argument(
            "--artifact-location",
            default=None,
            help="where new experiments keep artifacts (default: mlartifacts/ beside a sqlite "
            "file; the server's choice for a tracking server)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MLflowSink:
        return cls(
            tracking_uri=args.tracking_uri,
            experiment_name=args.experiment_name,
            run_name=args.run_name,
            experiment_tags=parse_tags(args.experiment_tag, "--experiment-tag"),
            run_tags=parse_tags(args.run_tag, "--run-tag"),
            artifact_location=args.artifact_location,
        )

    def describe(self) -> Mapping[str, Any]:
        art = self.artifact_location
        return {
            "sink": self.name,
            "tracking_uri": mask_uri(self.tracking_uri),
            "experiment_name": self.experiment_name,
            "run_name": self.run_name,
            "artifact_location": mask_uri(art) if art and "://" in art else art,
        }
