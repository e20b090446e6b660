"""Checks a Kafka client runs at start, so bad security settings fail there, clearly,
before any record is accepted, sent or written.

librdkafka reports a refused login or a refused certificate only asynchronously (a
log line and an ``error_cb`` call, then endless reconnects), so a client with a
wrong password would otherwise start, accept records and fail minutes later. Here:

- :func:`check_files`: every file a setting names (CA, certificate, key, ...) exists
  and is readable -> else :class:`ConfigError` naming the setting and the path.
- :func:`check_certificate`: the client certificate is currently valid ->
  else :class:`ConfigError` with its validity dates (needs ``cryptography``; without
  it the broker's refusal is reported by :func:`check_connection` instead).
- :func:`check_connection`: both checks, then (for a secured ``security.protocol``)
  one metadata request: a refused login or certificate raises
  :class:`AuthenticationError` naming the user or the certificate file.

No secret (a password, a key) ever appears in an error or a log line: messages name
the user, never the password, and every message is scrubbed of secret values.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flarestream.errors import ConfigError, FlarestreamError
from flarestream.settings import is_secret

log = logging.getLogger("flarestream.connection")

SECURED_PROTOCOLS = frozenset({"ssl", "sasl_ssl", "sasl_plaintext"})
# librdkafka settings that name a file the client reads at start
FILE_SETTINGS = (
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
    "sasl.kerberos.keytab",
)
DEFAULT_TIMEOUT = 10.0
# librdkafka's local error codes
_AUTHENTICATION, _SSL, _TRANSPORT, _ALL_BROKERS_DOWN = -169, -181, -195, -187
_DOWN = re.compile(r"(\d+)/(\d+) brokers are down")


class AuthenticationError(FlarestreamError):
    """Kafka refused this client: wrong user or password, or a certificate the broker
    does not accept (expired, signed by another CA, missing), or a broker certificate
    this client does not trust."""


def is_secured(config: Mapping[str, Any]) -> bool:
    """True when ``security.protocol`` asks for TLS and/or SASL."""
    return str(config.get("security.protocol", "plaintext")).strip().lower() in SECURED_PROTOCOLS


def scrub(text: str, config: Mapping[str, Any]) -> str:
    """``text`` with every secret value of ``config`` replaced by ``***``."""
    for key, value in config.items():
        if is_secret(key) and isinstance(value, str) and len(value) >= 3:
            text = text.replace(value, "***")
    return text


def check_files(config: Mapping[str, Any]) -> None:
    """:class:`ConfigError` unless every file named by :data:`FILE_SETTINGS` is a
    readable file (``ssl.ca.location=probe`` asks librdkafka to search: allowed)."""
    for key in FILE_SETTINGS:
        value = config.get(key)
        if value is None or value == "" or (key == "ssl.ca.location" and value == "probe"):
            continue
        path = Path(str(value)).expanduser()
        if key == "ssl.ca.location" and path.is_dir():
            continue  # a directory of hashed CA certificates is allowed too
        if not path.is_file():
            raise ConfigError(
                f"{key}={path}: no such file; give the path of an existing file "
                f"(FLARESTREAM_KAFKA_{key.upper().replace('.', '_')} or the client config)"
            )
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{key}={path}: the file is not readable by this user")


def check_certificate(config: Mapping[str, Any], now: dt.datetime | None = None) -> None:
    """:class:`ConfigError` when ``ssl.certificate.location`` is not a PEM certificate
    or is not valid now (expired, or not valid yet). Skipped without ``cryptography``."""
    value = config.get("ssl.certificate.location")
    if not value:
        return
    try:
        from cryptography import x509
    except ImportError:  # the broker still refuses it; check_connection reports that
        return
    path = Path(str(value)).expanduser()
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"ssl.certificate.location={path}: not PEM: {exc}") from None
    now = now or dt.datetime.now(dt.timezone.utc)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    subject = cert.subject.rfc4514_string()
    if end < now:
        raise ConfigError(
            f"ssl.certificate.location={path}: the client certificate ({subject}) expired "
            f"on {end:%Y-%m-%d %H:%M} UTC; the broker will refuse it. Use a renewed certificate"
        )
    if start > now:
        raise ConfigError(
            f"ssl.certificate.location={path}: the client certificate ({subject}) is not "
            f"valid before {start:%Y-%m-%d %H:%M} UTC; check the clock or the certificate"
        )


def describe_client(config: Mapping[str, Any]) -> str:
    """Who this client is, without secrets: the SASL user, or the certificate file."""
    protocol = str(config.get("security.protocol", "plaintext")).lower()
    if protocol.startswith("sasl"):
        mechanism = config.get("sasl.mechanisms") or config.get("sasl.mechanism") or "GSSAPI"
        return f"user {config.get('sasl.username')!r} ({mechanism})"
    if config.get("ssl.certificate.location"):
        return f"the client certificate {config['ssl.certificate.location']}"
    if config.get("ssl.certificate.pem"):
        return "the client certificate given as PEM"
    return "a client without a certificate"


def _classify(errors: list[Any], config: Mapping[str, Any], bootstrap: str, who: str) -> None:
    """Raise :class:`AuthenticationError` for the first error that says the broker (or
    this client) refused the other side; return when none does."""
    client = describe_client(config)
    for err in errors:
        code, text = err.code(), scrub(err.str(), config)
        if code == _AUTHENTICATION:
            hint = (
                "check the user name and password (sasl.username/sasl.password, or "
                "FLARESTREAM_KAFKA_SASL_USERNAME/_PASSWORD) and the SASL mechanism"
            )
        elif code == _SSL:
            hint = (
                "this client does not trust the broker's certificate: ssl.ca.location "
                f"({config.get('ssl.ca.location', 'the system CAs')}) must hold the CA that "
                "signed it, and the certificate must name the host"
            )
        elif code == _TRANSPORT and "alert" in text.lower():
            hint = (
                "the broker refused the TLS handshake: a listener with client certificates "
                "needs ssl.certificate.location and ssl.key.location, signed by a CA the "
                "broker trusts and currently valid"
            )
        else:
            continue
        whom = f"{who} as {client}" if who else client
        raise AuthenticationError(f"Kafka at {bootstrap} refused {whom}: {text}; {hint}")


def _all_down(errors: list[Any]) -> bool:
    """True once librdkafka said every broker is down (``N/N brokers are down``; it
    also sends ``0/N`` with the same code, which means nothing)."""
    for err in errors:
        match = _DOWN.match(err.str()) if err.code() == _ALL_BROKERS_DOWN else None
        if match and match.group(1) == match.group(2):
            return True
    return False


def check_connection(
    bootstrap_servers: str,
    config: Mapping[str, Any],
    *,
    who: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    force: bool = False,
) -> bool:
    """Check a client's settings at start; True once the broker answered.

    Always: :func:`check_files` and :func:`check_certificate` (:class:`ConfigError`).
    Then, when ``config`` is secured (or ``force``): one metadata request within
    ``timeout`` s. A refused login or certificate raises :class:`AuthenticationError`
    naming ``who`` (e.g. ``"site 'site-1'"``) and the user or certificate file. A broker
    that does not answer at all returns False with a warning: records may still be
    queued and delivered once it is back, as without security.
    """
    check_files(config)
    check_certificate(config)
    if not (force or is_secured(config)):
        return False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[Any] = []
    settings = {k: v for k, v in config.items() if not callable(v) and k != "logger"}
    settings.update({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    settings["error_cb"] = errors.append
    try:
        admin = AdminClient(settings)
    except (KafkaException, TypeError, ValueError) as exc:
        reason = exc.args[0].str() if isinstance(exc, KafkaException) else str(exc)
        raise ConfigError(f"invalid Kafka client setting: {scrub(reason, config)}") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=max(0.1, min(0.5, deadline - time.monotonic())))
            return True
        except KafkaException:
            admin.poll(0)  # serves error_cb
        _classify(errors, config, bootstrap_servers, who)
        if _all_down(errors) or time.monotonic() >= deadline:
            last = scrub(errors[-1].str(), config) if errors else "no answer"
            log.warning(
                "could not verify the Kafka connection of %s at %s at start (%s); going on: "
                "the client keeps retrying",
                who or describe_client(config), bootstrap_servers, last,
            )  # fmt: skip
            return False
