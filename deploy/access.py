"""Who may do what on a secured Kafka: SCRAM users, ACLs and client settings.

The layout (least privilege, with ``allow.everyone.if.no.acl.found=false`` on the
broker, so anything not granted here is refused):

- a site, ``User:<site>``: WRITE and DESCRIBE on the analytics topic. Nothing else: it
  cannot read any topic, join a group, create topics or touch ACLs. (Since Kafka 3.0
  WRITE on a topic also allows an idempotent producer's InitProducerId, so no cluster
  IDEMPOTENT_WRITE grant is needed.)
- a sink, ``User:sink-<name>``: READ and DESCRIBE on the analytics topic, READ on the
  consumer groups whose name starts with ``flarestream.`` (prefixed), WRITE and
  DESCRIBE on the dead-letter topic. It cannot write to the analytics topic.
- the admin (a super user of the broker) does everything else: topics, users, ACLs.

Every function takes ``admin_config``: complete librdkafka settings of an admin
(``bootstrap.servers`` included), e.g. :meth:`SecureBroker.admin_config`. Secrets
given here never appear in an error message or a log line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from flarestream.errors import BrokerError, ConfigError
from flarestream.settings import ENV_BOOTSTRAP, ENV_KAFKA_PREFIX

MECHANISM = "SCRAM-SHA-512"
# the super users of a SecureBroker; they log in with certificates only
ADMIN = "admin"
BROKER_PRINCIPAL = "flarestream-broker"
RESERVED = (ADMIN, BROKER_PRINCIPAL)
SINK_PREFIX = "sink-"
GROUP_PREFIX = "flarestream."
SCRAM_ITERATIONS = 8192
ADMIN_TIMEOUT = 30.0
# a principal name is also a file name (client settings) and a SCRAM user name:
# no separators, no ',' or '=' (escaped in SCRAM), no control characters
_PRINCIPAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_principal_name(name: object, what: str = "user") -> str:
    """``name`` when it is usable as a Kafka user name here; :class:`ConfigError` otherwise."""
    if not isinstance(name, str) or not _PRINCIPAL_NAME.fullmatch(name):
        raise ConfigError(
            f"{what} name {name!r} is not allowed: use 1-128 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit (no path separators or control characters)"
        )
    return name


def sink_user(sink: str) -> str:
    """The Kafka user of sink ``sink`` (``sink-<name>``)."""
    return SINK_PREFIX + check_principal_name(sink, "sink")


def client_config_for(user: str, password: str, ca: Path | str) -> dict[str, str]:
    """librdkafka settings for ``user`` over SASL_SSL with SCRAM-SHA-512, trusting the CA
    certificate file ``ca`` (the password is a secret: print only ``masked(...)``)."""
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": MECHANISM,
        "sasl.username": check_principal_name(user),
        "sasl.password": password,
        "ssl.ca.location": str(ca),
    }


def mtls_client_config(cert: Path | str, key: Path | str, ca: Path | str) -> dict[str, str]:
    """librdkafka settings for mutual TLS: the client certificate and key files (the
    principal is the certificate's CN), trusting the CA certificate file ``ca``."""
    return {
        "security.protocol": "SSL",
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.ca.location": str(ca),
    }


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` readable by its owner only: the file is created with
    mode 0600 (never readable by others, not even briefly) and then renamed over
    ``path``, so an existing file's looser mode is not reused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)
    return path


def env_lines(bootstrap: str, config: Mapping[str, Any]) -> list[str]:
    """``NAME=value`` lines that give ``config`` to every flarestream component through
    the environment (``FLARESTREAM_BOOTSTRAP_SERVERS``, ``FLARESTREAM_KAFKA_*``)."""
    lines = [f"{ENV_BOOTSTRAP}={bootstrap}"]
    for key, value in config.items():
        if "_" in key:  # FLARESTREAM_KAFKA_* reads '_' as '.': it cannot spell this name
            raise ConfigError(f"setting {key!r} cannot be given as an environment variable")
        lines.append(f"{ENV_KAFKA_PREFIX}{key.upper().replace('.', '_')}={value}")
    return lines


def write_client_env(path: Path, bootstrap: str, config: Mapping[str, Any]) -> Path:
    """Write :func:`env_lines` to ``path`` with mode 0600 (it may hold a password);
    ``set -a; . PATH; set +a`` then configures every flarestream command."""
    lines = ["# flarestream client settings (secret: keep mode 0600)"]
    lines += env_lines(bootstrap, config)
    return write_private(Path(path), ("\n".join(lines) + "\n").encode())


def read_client_env(path: Path) -> dict[str, str]:
    """The ``NAME=value`` pairs of a file written by :func:`write_client_env`."""
    pairs: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            pairs[name.strip()] = value
    return pairs


# -- admin operations ------------------------------------------------------------------
def _admin(admin_config: Mapping[str, Any]) -> AdminClient:
    if not admin_config.get("bootstrap.servers"):
        raise ConfigError("admin_config needs bootstrap.servers")
    try:
        return AdminClient({"log_level": 0, **admin_config})
    except KafkaException as exc:
        raise ConfigError(f"invalid admin settings: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


def _wait(futures: Mapping[Any, Any], what: str, bootstrap: str) -> None:
    for future in futures.values():
        try:
            future.result(timeout=ADMIN_TIMEOUT + 5)
        except KafkaException as exc:
            raise BrokerError(f"{what} at {bootstrap} failed: {_reason(exc)}") from None


def add_scram_user(
    admin_config: Mapping[str, Any],
    name: str,
    password: str,
    iterations: int = SCRAM_ITERATIONS,
) -> None:
    """Create user ``name`` (or set its password) with a SCRAM-SHA-512 credential.

    Idempotent. The password never appears in an error; :class:`BrokerError` when the
    broker refuses (e.g. ``admin_config`` is not a super user's). The names in
    :data:`RESERVED` are refused."""
    if check_principal_name(name) in RESERVED:
        raise ConfigError(
            f"{name!r} is a super user of the local secure broker, which logs in with its "
            "certificate only: a password for it would be a second way in"
        )
    if not isinstance(password, str) or len(password) < 8:
        raise ConfigError(f"the password of user {name!r} must be a string of 8+ characters")
    upsert = UserScramCredentialUpsertion(
        name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, iterations), password.encode()
    )
    admin = _admin(admin_config)
    futures = admin.alter_user_scram_credentials([upsert], request_timeout=ADMIN_TIMEOUT)
    where = admin_config["bootstrap.servers"]
    _wait(futures, f"setting the SCRAM credential of user {name!r}", where)


def _binding(
    rtype: ResourceType,
    name: str,
    pattern: ResourcePatternType,
    user: str,
    operation: AclOperation,
) -> AclBinding:
    return AclBinding(rtype, name, pattern, f"User:{user}", "*", operation, AclPermissionType.ALLOW)


def site_acls(topic: str, site: str) -> list[AclBinding]:
    """The ACLs of site ``site``: WRITE and DESCRIBE on ``topic``."""
    user = check_principal_name(site, "site")
    return [
        _binding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, user, op)
        for op in (AclOperation.WRITE, AclOperation.DESCRIBE)
    ]


def sink_acls(
    topic: str, dlq_topic: str, sink: str, group_prefix: str = GROUP_PREFIX
) -> list[AclBinding]:
    """The ACLs of sink ``sink`` (user ``sink-<sink>``): read ``topic``, use the groups
    starting with ``group_prefix``, write ``dlq_topic``."""
    user = sink_user(sink)
    literal, prefixed = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    topic_t, group_t = ResourceType.TOPIC, ResourceType.GROUP
    return [
        _binding(topic_t, topic, literal, user, AclOperation.READ),
        _binding(topic_t, topic, literal, user, AclOperation.DESCRIBE),
        _binding(group_t, group_prefix, prefixed, user, AclOperation.READ),
        _binding(topic_t, dlq_topic, literal, user, AclOperation.WRITE),
        _binding(topic_t, dlq_topic, literal, user, AclOperation.DESCRIBE),
    ]


def create_acls(admin_config: Mapping[str, Any], bindings: Sequence[AclBinding]) -> None:
    """Create ``bindings`` (idempotent: an existing ACL is left as it is)."""
    admin = _admin(admin_config)
    futures = admin.create_acls(list(bindings), request_timeout=ADMIN_TIMEOUT)
    _wait(futures, "creating ACLs", admin_config["bootstrap.servers"])


def grant_site(admin_config: Mapping[str, Any], topic: str, site: str) -> list[AclBinding]:
    """Let site ``site`` write to ``topic`` and nothing else; returns the ACLs made."""
    bindings = site_acls(topic, site)
    create_acls(admin_config, bindings)
    return bindings


def grant_sink(
    admin_config: Mapping[str, Any],
    topic: str,
    dlq_topic: str,
    sink: str,
    group_prefix: str = GROUP_PREFIX,
) -> list[AclBinding]:
    """Let sink ``sink`` read ``topic`` in groups ``<group_prefix>*`` and write
    ``dlq_topic``, and nothing else; returns the ACLs made."""
    bindings = sink_acls(topic, dlq_topic, sink, group_prefix)
    create_acls(admin_config, bindings)
    return bindings


def describe_acls(admin_config: Mapping[str, Any], user: str | None = None) -> list[AclBinding]:
    """Every ACL on the broker, or only those of ``User:<user>``."""
    anything: Any = None  # None matches any value (the stubs only say str)
    principal: Any = f"User:{user}" if user else None
    match = AclBindingFilter(
        ResourceType.ANY, anything, ResourcePatternType.ANY,
        principal, anything, AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    admin = _admin(admin_config)
    try:
        found = admin.describe_acls(match, request_timeout=ADMIN_TIMEOUT).result(
            timeout=ADMIN_TIMEOUT + 5
        )
    except KafkaException as exc:
        raise BrokerError(f"listing ACLs failed: {_reason(exc)}") from None
    return list(found)
