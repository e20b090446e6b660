"""The client-side NVFlare component: a site's analytics events, produced to Kafka.

:class:`KafkaStreamer` takes the place of NVFlare's ``ConvertToFedEvent`` on a
client. Every analytics record the site makes (NVFlare's ``AnalyticsSender``, the
Client API writers ``SummaryWriter``/``MLflowWriter``/``WandBWriter`` in process or
in an external trainer process) becomes one Kafka record, with the site's NVFlare
identity as its site and NVFlare's job id as its job. The event kinds it takes:

- ``analytix_log_stats`` fired locally (``AnalyticsSender``, the in-process Client
  API), or as a federated event fired on this site (NVFlare's ``MetricRelay``);
- ``fed.analytix_log_stats`` fired on this site (the Client API's external-process
  and attach modes fire it directly, and ``ConvertToFedEvent`` re-fires local
  events under that name when it is still configured). Events of that name that
  came from another site are not this site's records and are left alone.

Each record is produced once even when the same event data arrives under both
names. Records logged in the client job's own process (in-process Client API,
``AnalyticsSender``) are produced on the logging thread, in call order. Records that
came from a trainer process reach the component out of order (NVFlare hands its
messages to a pool of threads); they are held for ``reorder_window`` seconds and
sent in step order per tag (:mod:`flarestream.producer.nvflare.reorder`).

Guarantees are those of :class:`~flarestream.producer.nvflare.streaming.SenderPool`
(never raises into NVFlare, never waits on the training thread beyond
``max_block_s``). In addition, the producer is flushed (at most ``flush_timeout``
seconds) when a task ends, so what a round logged in process is confirmed by the
broker before the round's result is sent; and when the run ends
(``ABOUT_TO_END_RUN``, the simulator's ``SWAP_OUT``, ``END_RUN``), after releasing
every held record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from flarestream.errors import ConfigError
from flarestream.producer.nvflare.reorder import StepReorderer
from flarestream.producer.nvflare.streaming import (
    NVFLARE_EXTRA_HINT,
    MissingNVFlareError,
    SeenOnce,
    SenderPool,
    StreamSettings,
)
from flarestream.settings import DEFAULT_TOPIC

try:
    from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
    from nvflare.apis.dxo import from_shareable
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import EventScope, FedEventHeader, FLContextKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.widgets.widget import Widget
except ImportError as exc:
    raise MissingNVFlareError(
        f"flarestream's NVFlare components need NVFlare ({exc}): {NVFLARE_EXTRA_HINT}"
    ) from None

log = logging.getLogger("flarestream.producer.nvflare")

FED_ANALYTIC_EVENT_TYPE = "fed." + ANALYTIC_EVENT_TYPE
DEFAULT_EVENTS = (ANALYTIC_EVENT_TYPE, FED_ANALYTIC_EVENT_TYPE)
APP_PACKAGE = "flarestream"
_DRAIN_EVENTS = frozenset({EventType.ABOUT_TO_END_RUN, EventType.SWAP_OUT})
_Item = tuple[str, str, Any, Any]  # (site, job id, DXO data, DXO meta)


def check_events(events: object) -> tuple[str, ...]:
    if events is None:
        return DEFAULT_EVENTS
    if (
        isinstance(events, (str, bytes))
        or not isinstance(events, Sequence)
        or not events
        or not all(isinstance(e, str) and e for e in events)
    ):
        raise ConfigError(f"events must be a non-empty list of event names, got {events!r}")
    return tuple(events)


class KafkaStreamer(Widget):
    """Client-side: produce this site's analytics events to Kafka (see the module doc).

    Args:
        bootstrap_servers: Kafka brokers; None takes ``FLARESTREAM_BOOTSTRAP_SERVERS``
            from the site's environment (then the local default).
        topic: the topic the sinks read.
        config: librdkafka settings on top of the site's ``FLARESTREAM_KAFKA_*``
            variables. Keep secrets in those variables: a job's config is not secret.
        events: the analytics event names to take (default: both listed above).
        flush_timeout: longest wait, in seconds, for the broker to confirm records at
            the end of a task and of the run.
        max_block_s: how long one record may wait for room when the local producer
            queue is full (default 0: the record is refused and logged instead of
            holding up training).
        reorder_window: how long, in seconds, a record that came from a trainer
            process is held at first so that each tag's records leave in step order
            (it doubles, up to 60 s, when a record comes later than that; see
            :mod:`flarestream.producer.nvflare.reorder`); 0 sends them as they come.
            Records logged in the client job's own process are never held.

    Raises ConfigError for a malformed argument, when the job is built; the
    connection to Kafka is made when the first record of a site is sent.
    """

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        topic: str = DEFAULT_TOPIC,
        config: Mapping[str, Any] | None = None,
        events: Sequence[str] | None = None,
        flush_timeout: float = 30.0,
        max_block_s: float = 0.0,
        reorder_window: float = 5.0,
    ) -> None:
        super().__init__()
        # stored under the argument names: FedJob writes them into the job's config
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.config = config
        self.events = events
        self.flush_timeout = flush_timeout
        self.max_block_s = max_block_s
        self.reorder_window = reorder_window
        settings = StreamSettings(bootstrap_servers, topic, config, flush_timeout, max_block_s)
        if isinstance(reorder_window, bool) or not isinstance(reorder_window, (int, float)):
            raise ConfigError(f"reorder_window must be seconds >= 0, got {reorder_window!r}")
        if not 0 <= reorder_window <= 60:
            raise ConfigError(f"reorder_window must be 0 to 60 seconds, got {reorder_window}")
        self._event_types = frozenset(check_events(events))
        self._pool = SenderPool(settings, type(self).__name__)
        self._seen = SeenOnce()
        self._reorder: StepReorderer[_Item] = StepReorderer(reorder_window, self._produce)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        try:
            self._handle(event_type, fl_ctx)
        except Exception:  # a bug of ours must not reach NVFlare's dispatch (training thread)
            log.exception("%s: handling %s failed", type(self).__name__, event_type)

    def _handle(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type in self._event_types:
            self._take(fl_ctx)
        elif event_type == EventType.AFTER_TASK_EXECUTION:
            self._pool.flush()
        elif event_type in _DRAIN_EVENTS:
            self._reorder.drain()
            self._pool.flush()
        elif event_type == EventType.START_RUN:
            # connect now, so a bad setting shows in the log at start, not at the first record
            self._pool.sender(fl_ctx.get_identity_name(), fl_ctx.get_job_id())
        elif event_type == EventType.END_RUN:
            self._reorder.close()
            self._pool.close()

    def _take(self, fl_ctx: FLContext) -> None:
        site, job_id = fl_ctx.get_identity_name(), fl_ctx.get_job_id()
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA, None)
        if not isinstance(data, Shareable):
            self._pool.refuse(site, job_id, "invalid", f"event data is {type(data).__name__}")
            return
        federated = fl_ctx.get_prop(FLContextKey.EVENT_SCOPE) == EventScope.FEDERATION
        if federated and data.get_header(FedEventHeader.DIRECTION) == "in":
            return  # a federated event from another site: not this site's record
        if not self._seen.first_time(data):
            return  # the same record re-fired under the other name
        try:
            dxo = from_shareable(data)
        except Exception as exc:  # NVFlare raises several types for a non-DXO Shareable
            self._pool.refuse(site, job_id, "invalid", f"no DXO in the event: {exc}")
            return
        item = (site, job_id, dxo.data, dxo.meta)
        if not federated:  # fired in this process, on the logging thread: already in order
            self._produce(item)
            return
        # fired for a record that came from a trainer process (see the reorder module)
        fields = dxo.data if isinstance(dxo.data, dict) else {}
        tag, step = fields.get("track_key"), fields.get("global_step")
        if isinstance(tag, str) and isinstance(step, int) and not isinstance(step, bool):
            self._reorder.add(tag, step, item)
        else:  # no step to order by (or an invalid record): send it now
            self._reorder.add("", None, item)

    def _produce(self, item: _Item) -> None:
        self._pool.produce(*item)

    def add_to_fed_job(self, job: Any, ctx: Any, **kwargs: Any) -> Any:
        """FedJob hook: add this streamer as a client component. It makes the streamer
        acceptable where a FedJob expects a ``ConvertToFedEvent`` (``BaseFedJob``'s
        ``convert_to_fed_event=``), and keeps flarestream's own code out of the job's
        ``custom`` folder (flarestream is installed on the sites)."""
        job.check_kwargs(args_to_check=kwargs, args_expected={})
        packages = list(getattr(job.job, "app_packages", None) or [])
        if APP_PACKAGE not in packages:
            job.set_app_packages([*packages, APP_PACKAGE])
        return job.add_component(ctx.comp_id or "flarestream", self, ctx)


def add_kafka_streaming(
    recipe: Any,
    streamer: KafkaStreamer | None = None,
    clients: list[str] | None = None,
    **streamer_args: Any,
) -> KafkaStreamer:
    """Stream a recipe's client analytics through flarestream, in the manner of
    NVFlare's ``add_experiment_tracking``: ``streamer`` (or a new ``KafkaStreamer``
    made from ``streamer_args``) goes to every client, or to ``clients``.

    Before the recipe's client apps exist (right after the recipe is made), a
    recipe built on ``BaseFedJob`` gets the streamer *instead of* its
    ``ConvertToFedEvent``. Otherwise the streamer is added beside it; each record is
    still produced once, and ConvertToFedEvent also sends it to the server.
    """
    if streamer is None:
        streamer = KafkaStreamer(**streamer_args)
    elif streamer_args:
        raise ConfigError("pass either a streamer or arguments to make one, not both")
    job = getattr(recipe, "_job", None)
    if job is None:
        raise ConfigError(f"expected an NVFlare recipe, got {type(recipe).__name__}")
    prepared = getattr(recipe, "_client_apps_prepared", True)
    if clients is None and not prepared and hasattr(job, "convert_to_fed_event"):
        # BaseFedJob adds this object to each client app it makes, under "event_to_fed"
        job.convert_to_fed_event = streamer
    else:
        recipe._add_to_client_apps(streamer, clients=clients, id="flarestream")
    return streamer
