"""Finding and creating MLflow experiments and runs, safely against racing sinks.

One experiment per job (named from a ``{job_id}`` template) and in it one run per
site, found by the tag :data:`~flarestream.consumers.mlflow_batches.RUN_KEY_TAG`
derived from (job id, site), so restarts and several sinks share one run.

Guarantees:

- A run is found or created when its site is first seen; a site unknown at start
  is never an error.
- Two sinks creating the same run at once keep the oldest (start time, then run
  id) and the loser deletes its newer, unused one; :meth:`SiteRuns.verify` looks
  again before the first write to a run.
- Memory is bounded: at most :data:`MAX_CACHED_RUNS` runs and experiments are
  remembered; runs with writes pending are never forgotten.
- An experiment name MLflow refuses raises RecordRefused (the record goes to the
  dead-letter topic); a deleted experiment raises ConfigError naming the fix.

MLflow is imported only inside the methods that call it.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flarestream.consumers.mlflow_batches import (
    OFFSET_TAG,
    RESERVED_TAG_PREFIX,
    RUN_KEY_TAG,
    RecordRefused,
    key_problem,
    run_key,
)
from flarestream.consumers.mlflow_store import Retry
from flarestream.errors import ConfigError

log = logging.getLogger("flarestream.consumers.mlflow")

MAX_CACHED_RUNS = 1024


def check_templates(experiment_name: str, run_name: str) -> None:
    """ConfigError unless both names format with ``{job_id}`` and ``{site}`` alone."""
    for option, template in (("experiment name", experiment_name), ("run name", run_name)):
        try:
            template.format(job_id="job", site="site")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"{option} {template!r} is not a valid template ({exc}); "
                "use {job_id} and {site} only"
            ) from None


def check_tag_keys(keys: Iterable[str]) -> None:
    """ConfigError for a tag key MLflow would refuse or that flarestream reserves."""
    for key in keys:
        problem = key_problem("tag", key)
        if problem or key.startswith(RESERVED_TAG_PREFIX):
            raise ConfigError(problem or f"tag {key!r}: {RESERVED_TAG_PREFIX!r} is reserved")


@dataclass
class SiteRun:
    """What the sink knows of one site's run."""

    run_id: str
    params: dict[str, str]
    offsets: dict[str, int]  # offset tag -> highest offset stored
    mine: bool  # created by this sink (so it may delete it if another run wins)
    verified: bool = False  # checked again for a racing creator before the first write


class SiteRuns:
    """The run of each (job, site) and the experiment of each job, found or created
    on first use and remembered (least recently used forgotten first)."""

    def __init__(
        self,
        client: Callable[[], Any],
        retry: Retry,
        busy: Callable[[], set[tuple[str, str]]],
        experiment_name: str,
        run_name: str,
        experiment_tags: Mapping[str, str],
        run_tags: Mapping[str, str],
        artifact_location: str | None,
    ) -> None:
        """``client`` gives the (lazily opened) MlflowClient; ``busy`` the (job, site)
        pairs with writes pending, whose runs must stay remembered."""
        self._client, self._retry, self._busy = client, retry, busy
        self.experiment_name, self.run_name = experiment_name, run_name
        self.experiment_tags, self.run_tags = dict(experiment_tags), dict(run_tags)
        self.artifact_location = artifact_location
        self._experiments: dict[str, str] = {}
        self._runs: OrderedDict[tuple[str, str], SiteRun] = OrderedDict()

    @property
    def client(self) -> Any:
        return self._client()

    def cached(self, job: str, site: str) -> SiteRun | None:
        """The remembered run of (job, site), if any (without touching its recency)."""
        return self._runs.get((job, site))

    def run_for(self, job: str, site: str) -> SiteRun:
        """The run of (job, site): remembered, found by its tag, or created."""
        cached = self._runs.get((job, site))
        if cached is not None:
            self._runs.move_to_end((job, site))
            return cached
        exp_id = self.experiment_id(job)
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

    def _adopt(self, found: list[Any], mine: str | None) -> SiteRun:
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
        return SiteRun(
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

    def verify(self, job: str, site: str, run: SiteRun) -> SiteRun:
        """Before the first write to a run: a creator that raced ours may have won
        (its create landed after our search), so look again; the oldest run wins."""
        found = self._find_runs(self.experiment_id(job), run_key(job, site))
        if found:
            fresh = self._adopt(found, run.run_id if run.mine else None)
        else:  # deleted by hand meanwhile: start a new run
            del self._runs[(job, site)]
            fresh = self.run_for(job, site)
        fresh.verified = True
        self._runs[(job, site)] = fresh
        return fresh

    def experiment_id(self, job: str) -> str:
        """The id of the job's experiment, created (with the experiment tags) if new."""
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
        busy = self._busy()
        for key in list(self._runs):
            if len(self._runs) <= MAX_CACHED_RUNS:
                return
            if key not in busy:
                del self._runs[key]
