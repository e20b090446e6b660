"""The local Kafka broker and the topic tools.

- :class:`LocalBroker`: a real single-node Kafka (KRaft) on 127.0.0.1 for development
  and tests; jars fetched once with Maven into ``settings.cache_dir()``.
- :func:`create_topic` (idempotent), :func:`describe_topic`, :func:`list_topics`.

Command line: ``flarestream broker start|stop|status`` and
``flarestream topic create|describe|list``.
"""

from flarestream.deploy.broker import LocalBroker, read_state
from flarestream.deploy.cluster import LocalCluster
from flarestream.deploy.osutil import free_port, port_in_use
from flarestream.deploy.runtime import (
    check_java,
    ensure_jars,
    find_java,
    find_mvn,
    pinned_kafka_version,
)
from flarestream.deploy.topics import TopicInfo, create_topic, describe_topic, list_topics

__all__ = [
    "LocalBroker",
    "LocalCluster",
    "TopicInfo",
    "check_java",
    "create_topic",
    "describe_topic",
    "ensure_jars",
    "find_java",
    "find_mvn",
    "free_port",
    "list_topics",
    "pinned_kafka_version",
    "port_in_use",
    "read_state",
]
