"""Reaching MLflow's tracking store: where it is, how it is shown, how calls retry.

Guarantees:

- :func:`mask_uri` never shows a password or a query string (which may hold tokens).
- :func:`create_sqlite_store` makes a new sqlite file appear whole or not at all.
- :func:`send_pending` sends a run's buffered writes, artifacts first, in
  ``log_batch`` calls whose last one carries the partition's offset tag.
- :func:`retry` retries only errors a retry can fix; MLflow's permanent refusals
  are raised at once, unchanged, and a call that keeps failing ends in a
  FlarestreamError naming what was tried, where (masked) and how often.

MLflow and SQLAlchemy are imported only inside these functions.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from flarestream.consumers.mlflow_batches import PendingWrites, batches, offset_tag
from flarestream.errors import ConfigError, FlarestreamError
from flarestream.settings import home_dir

log = logging.getLogger("flarestream.consumers.mlflow")

# MLflow error codes that no retry can fix: the request itself is wrong. Not
# BAD_REQUEST: MLflow's SQL store reports two writers inserting the same param or
# metric row at once (a unique-key clash) as BAD_REQUEST, and a retry then passes.
PERMANENT_ERRORS = frozenset(
    {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
     "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED", "ENDPOINT_NOT_FOUND",
     "FEATURE_DISABLED", "NOT_IMPLEMENTED"}
)  # fmt: skip
R = TypeVar("R")


class Retry(Protocol):
    """Calls ``call`` (described by ``what``), retrying what a retry can fix."""

    def __call__(self, what: str, call: Callable[[], R]) -> R: ...


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


def create_sqlite_store(db: Path) -> None:
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


def retry(what: str, call: Callable[[], R], attempts: int, backoff_s: float, uri: str) -> R:
    """``call()``, retried with exponential backoff on errors a retry can fix;
    MLflow's permanent refusals are raised at once, unchanged."""
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if getattr(exc, "error_code", None) in PERMANENT_ERRORS:
                raise
            if attempt == attempts:
                raise FlarestreamError(
                    f"MLflow: could not {what} at {mask_uri(uri)} after "
                    f"{attempt} attempts: {type(exc).__name__}: {exc}"
                ) from exc
            log.warning("mlflow: %s failed (%s), retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def send_pending(
    client: Any, retry: Retry, run_id: str, pending: PendingWrites, topic: str, partition: int
) -> None:
    """Send one run's buffered writes of one partition: artifacts, then ``log_batch``
    chunks whose last one carries the partition's offset tag."""
    from mlflow.entities import Metric, Param, RunTag

    for path, data in pending.artifacts.items():
        store = functools.partial(log_artifact, client, run_id, path, data)
        retry(f"store artifact {path!r}", store)
    final = [(offset_tag(topic, partition), str(pending.last_offset))]
    for b in batches(
        pending.metrics, list(pending.params.items()), list(pending.tags.items()), final
    ):
        call = functools.partial(
            client.log_batch,
            run_id,
            metrics=[Metric(m.key, m.value, m.timestamp, m.step) for m in b.metrics],
            params=[Param(k, v) for k, v in b.params],
            tags=[RunTag(k, v) for k, v in b.tags],
            synchronous=True,
        )
        retry("log a batch", call)


def log_artifact(client: Any, run_id: str, path: str, data: bytes) -> None:
    """Store ``data`` as the run's artifact ``path`` (via a temporary local file)."""
    directory, _, filename = path.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="flarestream-mlflow-") as tmp:
        local = Path(tmp) / filename
        local.write_bytes(data)
        client.log_artifact(run_id, str(local), artifact_path=directory or None)
