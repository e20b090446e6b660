"""A local Kafka with transport security and least privilege, for development and tests.

:class:`SecureBroker` is a :class:`~flarestream.deploy.broker.LocalBroker` whose every
listener needs TLS (certificates made for the test by a private CA, for 127.0.0.1)
and an authenticated principal, with the KRaft ``StandardAuthorizer`` refusing
whatever no ACL allows:

- ``SASL_SSL`` (``bootstrap``): clients log in with SCRAM-SHA-512 user and password;
- ``MTLS`` (``mtls_bootstrap``): clients present a certificate signed by the CA, and
  the principal is its CN (``CN=site-1`` is ``User:site-1``);
- ``CONTROLLER``: TLS with client certificates too; only the broker's own
  certificate (``User:flarestream-broker``, a super user) is ever presented there.

The admin (``User:admin``, a super user) logs in with its own client certificate on
the MTLS listener, so no password exists before users are made and nothing secret
is ever on a command line. The broker's private key and the CA's live under
``DATA_DIR/tls`` with mode 0600, and so does ``server.properties`` (it embeds the
broker's key). Users and ACLs: :mod:`flarestream.deploy.access` (re-exported here).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flarestream.deploy import runtime
from flarestream.deploy.access import (
    ADMIN,
    BROKER_PRINCIPAL,
    GROUP_PREFIX,
    MECHANISM,
    RESERVED,
    add_scram_user,
    client_config_for,
    create_acls,
    describe_acls,
    grant_sink,
    grant_site,
    mtls_client_config,
    read_client_env,
    sink_user,
    write_client_env,
    write_private,
)
from flarestream.deploy.broker import HEAP, LocalBroker, read_state
from flarestream.deploy.osutil import HOST, free_port, port_in_use
from flarestream.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from flarestream.deploy.certs import Issued

__all__ = [
    "ADMIN",
    "BROKER_PRINCIPAL",
    "MECHANISM",
    "SecureBroker",
    "add_scram_user",
    "check_users",
    "client_config_for",
    "create_acls",
    "describe_acls",
    "grant_sink",
    "grant_site",
    "mtls_client_config",
    "provision",
    "read_client_env",
    "secure_properties",
    "sink_user",
]

AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
# listener settings of the plain template that the secure broker replaces
_REPLACED = (
    "listeners",
    "advertised.listeners",
    "inter.broker.listener.name",
    "listener.security.protocol.map",
)


def _certs() -> Any:
    """:mod:`flarestream.deploy.certs`, or a ConfigError naming the extra to install."""
    try:
        from flarestream.deploy import certs
    except ImportError as exc:
        raise ConfigError(
            f"the secure local broker makes its certificates with the cryptography package "
            f"({exc}); install it: pip install 'flarestream[security]'"
        ) from None
    return certs


def _escape(value: str) -> str:
    """``value`` as one java.util.Properties line (newlines as ``\\n``)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def secure_properties(
    port: int, mtls_port: int, controller_port: int, ca: Path, chain_pem: str, key_pem: str
) -> str:
    """The server.properties lines that secure a broker (they replace the plain
    template's listener lines). ``key_pem`` is the broker's private key: the text is
    secret."""
    return "\n".join(
        [
            "# security: written by flarestream.deploy.SecureBroker; the file is secret (0600)",
            f"listeners=SASL_SSL://{HOST}:{port},MTLS://{HOST}:{mtls_port},"
            f"CONTROLLER://{HOST}:{controller_port}",
            f"advertised.listeners=SASL_SSL://{HOST}:{port},MTLS://{HOST}:{mtls_port}",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:SSL",
            "inter.broker.listener.name=MTLS",
            f"sasl.enabled.mechanisms={MECHANISM}",
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.mtls.ssl.client.auth=required",
            "listener.name.controller.ssl.client.auth=required",
            "ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "ssl.endpoint.identification.algorithm=https",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.certificate.chain={_escape(chain_pem)}",
            f"ssl.keystore.key={_escape(key_pem)}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={_escape(str(ca))}",
            f"authorizer.class.name={AUTHORIZER}",
            f"super.users=User:{ADMIN};User:{BROKER_PRINCIPAL}",
            "allow.everyone.if.no.acl.found=false",
            "auto.create.topics.enable=false",
            "",
        ]
    )


class SecureBroker(LocalBroker):
    """A :class:`LocalBroker` with TLS, SCRAM and ACLs (see the module documentation).

    ``bootstrap`` is the SASL_SSL address; :attr:`mtls_bootstrap` the mutual-TLS
    one. :meth:`admin_config` gives the admin's client settings. Certificates are
    made at the first start and kept in ``DATA_DIR/tls``; client certificates made
    by :meth:`issue_client_certificate` go to ``DATA_DIR/clients``.
    """

    secure = True

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        mtls_port: int | None = None,
        kafka_version: str | None = None,
        heap: str = HEAP,
    ) -> None:
        super().__init__(data_dir, port, controller_port, kafka_version, heap)
        if mtls_port is not None and not (isinstance(mtls_port, int) and 0 < mtls_port < 65536):
            raise ConfigError(f"mtls_port must be a TCP port (1-65535), got {mtls_port!r}")
        if mtls_port is not None and mtls_port in (port, controller_port):
            raise ConfigError(f"mtls_port {mtls_port} must differ from the other ports")
        self._mtls_port: int | None = mtls_port or read_state(self.data_dir).get("mtls_port")

    # -- paths and addresses -------------------------------------------------------
    @property
    def tls_dir(self) -> Path:
        """The CA and the broker's certificate and key."""
        return self.data_dir / "tls"

    @property
    def clients_dir(self) -> Path:
        """Client certificates and client settings files."""
        return self.data_dir / "clients"

    @property
    def ca_path(self) -> Path:
        """The CA certificate every client trusts (``ssl.ca.location``)."""
        return self.tls_dir / "ca.pem"

    @property
    def mtls_port(self) -> int | None:
        return self._mtls_port

    @property
    def mtls_bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the mutual-TLS listener (after the first start)."""
        if self._mtls_port is None:
            raise BrokerError(f"the broker in {self.data_dir} has no port yet: start it first")
        return f"{HOST}:{self._mtls_port}"

    def admin_config(self) -> dict[str, Any]:
        """The admin's librdkafka settings, ``bootstrap.servers`` included."""
        return {
            "bootstrap.servers": self.mtls_bootstrap,
            **mtls_client_config(
                self.clients_dir / f"{ADMIN}.pem", self.clients_dir / f"{ADMIN}.key", self.ca_path
            ),
        }

    def site_config(self, user: str, password: str) -> dict[str, Any]:
        """SASL_SSL settings of ``user`` (``bootstrap.servers`` not included)."""
        return client_config_for(user, password, self.ca_path)

    def issue_client_certificate(self, name: str, **validity: Any) -> Issued:
        """A client certificate ``CN=name`` signed by this broker's CA, in
        :attr:`clients_dir` (``validity``: ``not_before``, ``not_after``, ``days``)."""
        from flarestream.deploy.access import check_principal_name

        if check_principal_name(name) in RESERVED:
            raise ConfigError(f"{name!r} is a super user: its certificate is made by start()")
        ca = _certs().CertificateAuthority.open(self.tls_dir)
        issued: Issued = ca.issue(name, self.clients_dir, client=True, **validity)
        return issued

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 120, log: runtime.Log = runtime.quiet) -> str:
        """Make the certificates if missing, then :meth:`LocalBroker.start`; returns the
        SASL_SSL address once the admin can fetch metadata over mutual TLS.

        Refuses (:class:`BrokerError`) a data directory formatted by a plain broker:
        its metadata has no ACLs, so securing it afterwards would be a surprise."""
        formatted = (self.data_dir / "kraft" / "meta.properties").is_file()
        if formatted and not read_state(self.data_dir).get("secure") and not self.is_running():
            raise BrokerError(
                f"{self.data_dir} holds a plain (unsecured) broker; use another data "
                "directory for a secure one"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        certs = _certs()
        ca = certs.CertificateAuthority.open(self.tls_dir)
        if not (self.tls_dir / f"{BROKER_PRINCIPAL}.key").is_file():
            log(f"making test certificates in {self.tls_dir}")
            ca.issue(BROKER_PRINCIPAL, self.tls_dir, hosts=[HOST], client=True)
        if not (self.clients_dir / f"{ADMIN}.key").is_file():
            ca.issue(ADMIN, self.clients_dir, client=True)
        return super().start(timeout=timeout, log=log)

    # -- LocalBroker hooks ---------------------------------------------------------------
    def _write_config(self) -> Path:
        props = super()._write_config()
        assert self.port is not None and self.controller_port is not None
        taken = (self.port, self.controller_port)
        if self._mtls_port is None:
            self._mtls_port = free_port()
            while self._mtls_port in taken:
                self._mtls_port = free_port()
        elif self._mtls_port in taken or port_in_use(self._mtls_port):
            raise BrokerError(
                f"the mutual-TLS port {HOST}:{self._mtls_port} is already in use; stop "
                "whatever listens there or choose another data directory"
            )
        plain = [
            line
            for line in props.read_text().splitlines()
            if line.partition("=")[0].strip() not in _REPLACED
        ]
        broker = self.tls_dir / BROKER_PRINCIPAL
        chain = broker.with_suffix(".pem").read_text() + self.ca_path.read_text()
        key = broker.with_suffix(".key").read_text()
        extra = secure_properties(
            self.port, self._mtls_port, self.controller_port, self.ca_path, chain, key
        )
        write_private(props, ("\n".join(plain) + "\n\n" + extra).encode())
        state = read_state(self.data_dir)
        state.update(secure=True, mtls_port=self._mtls_port)
        self._write_state(state)
        return props

    def _client_settings(self) -> dict[str, Any]:
        return self.admin_config()


def check_users(sites: Sequence[str], sinks: Sequence[str]) -> None:
    """:class:`ConfigError` unless every site and sink name makes a valid, unreserved user."""
    from flarestream.deploy.access import check_principal_name

    users = [check_principal_name(site, "site") for site in sites]
    users += [sink_user(sink) for sink in sinks]
    for user in users:
        if user in RESERVED:
            raise ConfigError(f"{user!r} is the name of a super user; choose another name")


def provision(
    broker: SecureBroker,
    topic: str,
    sites: Sequence[str] = (),
    sinks: Sequence[str] = (),
    dlq_topic: str | None = None,
) -> dict[str, Path]:
    """Make a SCRAM user with a random password and its ACLs for every site and sink,
    and write each one's client settings (``FLARESTREAM_*`` lines, mode 0600) to
    ``clients/<user>.env``; also ``clients/admin.env`` (mutual TLS). Returns
    {user: settings file}. A user whose file exists keeps its password. Idempotent."""
    check_users(sites, sinks)
    dlq = dlq_topic or f"{topic}.dlq"
    admin = broker.admin_config()
    files = {
        ADMIN: write_client_env(
            broker.clients_dir / f"{ADMIN}.env",
            broker.mtls_bootstrap,
            {k: v for k, v in admin.items() if k != "bootstrap.servers"},
        )
    }
    users = [(site, "site") for site in sites] + [(sink_user(sink), sink) for sink in sinks]
    for user, role in users:
        path = broker.clients_dir / f"{user}.env"
        known = read_client_env(path) if path.exists() else {}
        password = known.get("FLARESTREAM_KAFKA_SASL_PASSWORD") or secrets.token_urlsafe(24)
        add_scram_user(admin, user, password)
        if role == "site":
            grant_site(admin, topic, user)
        else:
            grant_sink(admin, topic, dlq, role, GROUP_PREFIX)
        files[user] = write_client_env(path, broker.bootstrap, broker.site_config(user, password))
    return files
