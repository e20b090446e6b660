"""The server-side bridge: NVFlare's federated analytics events, produced to Kafka.

For jobs that keep NVFlare's federated event path (``ConvertToFedEvent`` on the
clients, receivers on the server), :class:`KafkaReceiver` is one more
``AnalyticsReceiver`` on the server: each ``fed.analytix_log_stats`` event (and a
local ``analytix_log_stats`` of the server itself) becomes one Kafka record whose
site is the record's origin, the sending site's NVFlare identity, as NVFlare's own
receivers see it.

What this bridge cannot repair: records arrive here through NVFlare's federated
events, which are sent fire-and-forget, so a record NVFlare lost on the way or
delivered out of order stays lost or out of order. Put
:class:`~flarestream.producer.nvflare.KafkaStreamer` on the clients instead where
that matters. From here on the guarantees are those of
:class:`~flarestream.producer.nvflare.streaming.SenderPool`; :meth:`KafkaReceiver.finalize`
(NVFlare's END_RUN) waits up to ``flush_timeout`` seconds for the broker to confirm
every record and logs, per site, what was not delivered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flarestream.producer.nvflare.streaming import (
    NVFLARE_EXTRA_HINT,
    MissingNVFlareError,
    SenderPool,
    StreamSettings,
)
from flarestream.settings import DEFAULT_TOPIC

try:
    from nvflare.apis.dxo import from_shareable
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.app_common.widgets.streaming import AnalyticsReceiver
except ImportError as exc:
    raise MissingNVFlareError(
        f"flarestream's NVFlare components need NVFlare ({exc}): {NVFLARE_EXTRA_HINT}"
    ) from None


class KafkaReceiver(AnalyticsReceiver):
    """Server-side: produce the records NVFlare's federated events carry to Kafka.

    Arguments as for :class:`~flarestream.producer.nvflare.KafkaStreamer`; ``events``
    defaults to NVFlare's receiver default (``analytix_log_stats`` and
    ``fed.analytix_log_stats``). One Kafka producer is kept per sending site.
    """

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        topic: str = DEFAULT_TOPIC,
        config: Mapping[str, Any] | None = None,
        events: Sequence[str] | None = None,
        flush_timeout: float = 30.0,
        max_block_s: float = 0.0,
    ) -> None:
        super().__init__(events=list(events) if events is not None else None)
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.config = config
        self.flush_timeout = flush_timeout
        self.max_block_s = max_block_s
        settings = StreamSettings(bootstrap_servers, topic, config, flush_timeout, max_block_s)
        self._pool = SenderPool(settings, type(self).__name__)

    def initialize(self, fl_ctx: FLContext) -> None:
        """Nothing to connect yet: a producer is made when a site's first record comes."""
        self.log_info(
            fl_ctx,
            f"producing analytics of job {fl_ctx.get_job_id()} to Kafka topic "
            f"{self._pool.settings.topic!r}",
            fire_event=False,
        )

    def save(self, fl_ctx: FLContext, shareable: Shareable, record_origin: str) -> None:
        job_id = fl_ctx.get_job_id()
        try:
            dxo = from_shareable(shareable)
        except Exception as exc:  # NVFlare raises several types for a non-DXO Shareable
            self._pool.refuse(record_origin, job_id, "invalid", f"no DXO in the event: {exc}")
            return
        self._pool.produce(record_origin, job_id, dxo.data, dxo.meta)

    def finalize(self, fl_ctx: FLContext) -> None:
        self._pool.close()
