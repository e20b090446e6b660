"""The MLflow sink: NVFlare's MLflow receiver, without its losses.

Layout (NVFlare's): one experiment per job, named by ``--experiment-name``
(default ``"FLARE FL Experiment"``, NVFlare's; ``{job_id}`` in the name gives
each job its own experiment), and in it one run per site, named
``--run-name`` (default ``"{site}-{job_id:.6}-FLARE FL Run"``, NVFlare's scheme
less the job name, which records do not carry) and tagged ``site``, ``job_id``
and ``run_name``. What each record becomes is in
:mod:`flarestream.consumers.mlflow_batches`.

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
import functools
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from flarestream.consumers.mlflow_batches import (
    OFFSET_TAG,
    RESERVED_TAG_PREFIX,
    RUN_KEY_TAG,
    PendingWrites,
    RecordRefused,
    batches,
    entries_for,
    key_problem,
    offset_tag,
    run_key,
    site_problem,
)
from flarestream.consumers.sink import Delivered, Rejection, Sink, TopicPartition
from flarestream.errors import ConfigError, FlarestreamError
from flarestream.schemas.dxo import received
from flarestream.schemas.record import AnalyticsDataType, LogWriterName
from flarestream.settings import home_dir

log = logging.getLogger("flarestream.consumers.mlflow")

DEFAULT_EXPERIMENT = "FLARE FL Experiment"
DEFAULT_RUN_NAME = "{site}-{job_id:.6}-FLARE FL Run"
# MLflow error codes that no retry can fix: the request itself is wrong. Not
# BAD_REQUEST: MLflow's SQL store reports two writers inserting the same param or
# metric row at once (a unique-key clash) as BAD_REQUEST, and a retry then passes.
PERMANENT_ERRORS = frozenset(
    {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
     "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "ENDPOINT_NOT_FOUND",
     "FEATURE_DISABLED", "NOT_IMPLEMENTED"}
)  # fmt: skip
MAX_CACHED_RUNS = 1024
R = TypeVar("R")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a sqlite store under FLARESTREAM_HOME."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home_dir() / 'mlflow' / 'mlflow.db'}"
    )


def mask_uri(uri: str) -> str:
    """The URI without its password and query (which may hold tokens)."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
        netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI (None for other stores); ConfigError
    for MLflow's file store, which MLflow 3 refuses by default."""
    if urlsplit(uri).scheme in ("", "file"):
        raise ConfigError(
            f"tracking URI {uri!r} is MLflow's file store, which MLflow refuses unless "
            "MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///PATH or a tracking server's URL"
        )
    if not uri.startswith("sqlite:"):
        return None
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        raise ConfigError(f"{uri!r}: an in-memory MLflow store keeps nothing; give a file path")
    return Path(path)


def parse_tags(pairs: Iterable[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} takes KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


@dataclass
class _Run:
    """What the sink knows of one site's run."""

    run_id: str
    params: dict[str, str]
    offsets: dict[str, int]  # offset tag -> highest offset stored
    mine: bool  # created by this sink (so it may delete it if another run wins)
    verified: bool = False  # checked again for a racing creator before the first write


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
        for option, template in (("experiment name", experiment_name), ("run name", run_name)):
            try:
                template.format(job_id="job", site="site")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    f"{option} {template!r} is not a valid template ({exc}); "
                    "use {job_id} and {site} only"
                ) from None
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.experiment_tags = dict(experiment_tags or {})
        self.run_tags = dict(run_tags or {})
        for key in [*self.experiment_tags, *self.run_tags]:
            problem = key_problem("tag", key)
            if problem or key.startswith(RESERVED_TAG_PREFIX):
                raise ConfigError(problem or f"tag {key!r}: {RESERVED_TAG_PREFIX!r} is reserved")
        if artifact_location is None and self._db is not None:
            artifact_location = str(self._db.absolute().parent / "mlartifacts")
        self.artifact_location = artifact_location
        if attempts < 1:
            raise ConfigError(f"attempts must be >= 1, got {attempts}")
        self.attempts, self.backoff_s = attempts, backoff_s
        self._client: Any = None
        self._experiments: dict[str, str] = {}
        self._runs: OrderedDict[tuple[str, str], _Run] = OrderedDict()
        self._pending: dict[tuple[str, str, str, int], PendingWrites] = {}
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
            self._create_sqlite_store(self._db.absolute())
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        # fail at start, not at the first record, when the store is unreachable
        self._retry(
            "reach the tracking store", lambda: self._client.search_experiments(max_results=1)
        )

    @staticmethod
    def _create_sqlite_store(db: Path) -> None:
        """Create the sqlite file whole: MLflow builds its tables in place in several
        steps, so a reader (MLflow's UI, another sink) opening it meanwhile would
        find half a schema, or build the same tables again and fail. Build it under
        a temporary name, then link it into place (which fails if one appeared)."""
        db.parent.mkdir(parents=True, exist_ok=True)
        try:
            import sqlalchemy
        except ImportError:
            raise ConfigError(
                "a sqlite: tracking URI needs SQLAlchemy: pip install 'flarestream[mlflow]'"
            ) from None
        try:
            from mlflow.store.db.utils import _initialize_tables
        except ImportError:  # an MLflow without it: let MLflow create the file in place
            return
        tmp = db.with_name(f".{db.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
        try:
            _initialize_tables(engine)
            engine.dispose()
            os.link(tmp, db)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            engine.dispose()
            tmp.unlink(missing_ok=True)

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
            run = self._run_for(rec.job_id, rec.site)
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

    def _param_conflict(self, job: str, site: str, run: _Run, params: dict[str, str]) -> str | None:
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

    # -- runs and experiments --------------------------------------------------
    def _run_for(self, job: str, site: str) -> _Run:
        cached = self._runs.get((job, site))
        if cached is not None:
            self._runs.move_to_end((job, site))
            return cached
        exp_id = self._experiment_id(job)
        key = run_key(job, site)
        found = self._find_runs(exp_id, key)
        mine = None
        if not found:
            run_name = self.run_name.format(job_id=job, site=site)
            tags = {
                **self.run_tags,
                "site": site,
                "job_id": job,
                "run_name": run_name,
                RUN_KEY_TAG: key,
            }
            mine = self._retry(
                "create a run",
                lambda: self.client.create_run(exp_id, run_name=run_name, tags=tags),
            )
            # another sink may have created the same run meanwhile: the oldest wins
            found = self._find_runs(exp_id, key) or [mine]
        run = self._adopt(found, mine.info.run_id if mine is not None else None)
        self._runs[(job, site)] = run
        self._evict()
        return run

    def _adopt(self, found: list[Any], mine: str | None) -> _Run:
        """The state of the winning run among ``found``; deletes ours if it lost."""
        winner = min(found, key=lambda r: (r.info.start_time or 0, r.info.run_id))
        if mine is not None and winner.info.run_id != mine:
            log.info("mlflow: another sink created run %s first; deleting ours", winner.info.run_id)
            self._retry("delete a duplicate run", lambda: self.client.delete_run(mine))
        offsets = {
            k: int(v)
            for k, v in winner.data.tags.items()
            if k.startswith(OFFSET_TAG) and v.isdigit()
        }
        return _Run(
            winner.info.run_id, dict(winner.data.params), offsets, winner.info.run_id == mine
        )

    def _find_runs(self, exp_id: str, key: str) -> list[Any]:
        from mlflow.entities import ViewType

        query = f"tags.`{RUN_KEY_TAG}` = '{key}'"
        return list(
            self._retry(
                "search runs",
                lambda: self.client.search_runs(
                    [exp_id],
                    filter_string=query,
                    run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=100,
                ),
            )
        )

    def _verify(self, job: str, site: str, run: _Run) -> _Run:
        """Before the first write to a run: a creator that raced ours may have won
        (its create landed after our search), so look again; the oldest run wins."""
        found = self._find_runs(self._experiment_id(job), run_key(job, site))
        if found:
            fresh = self._adopt(found, run.run_id if run.mine else None)
        else:  # deleted by hand meanwhile: start a new run
            del self._runs[(job, site)]
            fresh = self._run_for(job, site)
        fresh.verified = True
        self._runs[(job, site)] = fresh
        return fresh

    def _experiment_id(self, job: str) -> str:
        name = self.experiment_name.format(job_id=job)
        if name in self._experiments:
            return self._experiments[name]
        from mlflow.exceptions import MlflowException

        exp = self._retry(
            "look up the experiment", lambda: self.client.get_experiment_by_name(name)
        )
        if exp is None:
            location = self.artifact_location
            if location and "://" not in location:
                location = Path(location).absolute().as_uri()
            try:
                self._retry(
                    "create the experiment",
                    lambda: self.client.create_experiment(
                        name, artifact_location=location, tags=self.experiment_tags or None
                    ),
                )
            except MlflowException as exc:
                if exc.error_code == "INVALID_PARAMETER_VALUE":
                    raise RecordRefused(f"MLflow refuses experiment name {name!r}: {exc}") from None
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            exp = self._retry(
                "look up the experiment", lambda: self.client.get_experiment_by_name(name)
            )
        if exp is None or exp.lifecycle_stage == "deleted":
            raise ConfigError(
                f"MLflow experiment {name!r} is deleted or cannot be found; restore it (mlflow "
                f"experiments restore --experiment-id {exp.experiment_id if exp else '?'}) or "
                "choose another --experiment-name"
            )
        for k, v in self.experiment_tags.items():
            if exp.tags.get(k) != v:
                tag = functools.partial(self.client.set_experiment_tag, exp.experiment_id, k, v)
                self._retry("tag the experiment", tag)
        if len(self._experiments) >= MAX_CACHED_RUNS:
            self._experiments.clear()
        self._experiments[name] = exp.experiment_id
        return str(exp.experiment_id)

    def _evict(self) -> None:
        """Forget the least recently used runs that have nothing pending (bounded memory)."""
        busy = {(j, s) for j, s, _t, _p in self._pending}
        for key in list(self._runs):
            if len(self._runs) <= MAX_CACHED_RUNS:
                return
            if key not in busy:
                del self._runs[key]

    # -- flushing --------------------------------------------------------------
    def flush(self) -> Mapping[TopicPartition, int] | None:
        """Send everything buffered (artifacts, then ``log_batch`` chunks whose last
        one carries the partition's offset tag); None when all of it is stored.
        Raises FlarestreamError when MLflow still fails after the retries, or
        refuses a batch: the loop then stops without committing."""
        for key in list(self._pending):
            job, site, topic, partition = key
            pending = self._pending[key]
            run = self._runs.get((job, site)) or self._run_for(job, site)
            if not run.verified:
                run = self._verify(job, site, run)
            try:
                self._send(run, pending, topic, partition)
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

    def _send(self, run: _Run, pending: PendingWrites, topic: str, partition: int) -> None:
        from mlflow.entities import Metric, Param, RunTag

        for path, data in pending.artifacts.items():
            store = functools.partial(self._log_artifact, run.run_id, path, data)
            self._retry(f"store artifact {path!r}", store)
        final = [(offset_tag(topic, partition), str(pending.last_offset))]
        for b in batches(
            pending.metrics, list(pending.params.items()), list(pending.tags.items()), final
        ):
            call = functools.partial(
                self.client.log_batch,
                run.run_id,
                metrics=[Metric(m.key, m.value, m.timestamp, m.step) for m in b.metrics],
                params=[Param(k, v) for k, v in b.params],
                tags=[RunTag(k, v) for k, v in b.tags],
                synchronous=True,
            )
            self._retry("log a batch", call)

    def _log_artifact(self, run_id: str, path: str, data: bytes) -> None:
        directory, _, filename = path.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="flarestream-mlflow-") as tmp:
            local = Path(tmp) / filename
            local.write_bytes(data)
            self.client.log_artifact(run_id, str(local), artifact_path=directory or None)

    def _retry(self, what: str, call: Callable[[], R]) -> R:
        """``call()``, retried with exponential backoff on errors a retry can fix;
        MLflow's permanent refusals are raised at once, unchanged."""
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except Exception as exc:
                if getattr(exc, "error_code", None) in PERMANENT_ERRORS:
                    raise
                if attempt == self.attempts:
                    raise FlarestreamError(
                        f"MLflow: could not {what} at {mask_uri(self.tracking_uri)} after "
                        f"{attempt} attempts: {type(exc).__name__}: {exc}"
                    ) from exc
                log.warning("mlflow: %s failed (%s), retrying in %.1fs", what, exc, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

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
