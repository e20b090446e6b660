"""Security building blocks without a broker: certificates, broker configuration,
users and ACL layout, client settings, the start-up checks and secret masking."""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flarestream import connection
from flarestream.connection import (
    AuthenticationError,
    check_certificate,
    check_connection,
    check_files,
    describe_client,
    is_secured,
    scrub,
)
from flarestream.deploy import LocalBroker, free_port
from flarestream.deploy.access import (
    add_scram_user,
    check_principal_name,
    client_config_for,
    env_lines,
    mtls_client_config,
    read_client_env,
    sink_acls,
    sink_user,
    site_acls,
    write_client_env,
)
from flarestream.deploy.certs import CertificateAuthority, certificate_validity
from flarestream.deploy.security import SecureBroker, secure_properties
from flarestream.errors import BrokerError, ConfigError
from flarestream.producer import AnalyticsSender
from flarestream.settings import kafka_config_from_env, masked

NOW = dt.datetime.now(dt.timezone.utc)
DAY = dt.timedelta(days=1)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# -- certificates ---------------------------------------------------------------------------
def test_the_ca_is_self_signed_kept_on_disk_and_its_key_is_private(
    ca: CertificateAuthority,
) -> None:
    cert = _load(ca.cert_path)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(cert)
    assert (ca.directory / "ca.key").stat().st_mode & 0o777 == 0o600
    again = CertificateAuthority.open(ca.directory)  # loads, does not replace
    assert again.certificate == ca.certificate


def test_a_server_certificate_names_127_0_0_1_and_is_signed_by_the_ca(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    issued = ca.issue("broker", tmp_path / "tls", hosts=["127.0.0.1", "localhost"])
    cert = _load(issued.cert)
    cert.verify_directly_issued_by(ca.certificate)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert issued.key.stat().st_mode & 0o777 == 0o600
    assert issued.chain_pem().count("BEGIN CERTIFICATE") == 2
    assert "PRIVATE KEY" in issued.key_pem()


def test_a_client_certificate_has_only_its_common_name_as_subject(
    ca: CertificateAuthority,
) -> None:
    cert = _load(ca.issue("site-1").cert)
    assert cert.subject.rfc4514_string() == "CN=site-1"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "site-1"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_validity_can_be_set_in_the_past_but_not_backwards(ca: CertificateAuthority) -> None:
    issued = ca.issue("old", not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    start, end = certificate_validity(issued.cert)
    assert end < NOW and start < end
    with pytest.raises(ConfigError, match="before it starts"):
        ca.issue("bad", not_before=NOW, not_after=NOW - DAY)
    with pytest.raises(ConfigError, match="plain file name"):
        ca.issue("../escape")


def test_loading_a_directory_without_a_ca_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no usable CA"):
        CertificateAuthority.load(tmp_path)


# -- the secure broker's configuration --------------------------------------------------------
def test_secure_properties_have_no_plaintext_listener_and_deny_by_default(tmp_path: Path) -> None:
    text = secure_properties(9093, 9094, 9095, tmp_path / "ca.pem", "CHAIN\nX", "KEY\nY")
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert props["listeners"] == (
        "SASL_SSL://127.0.0.1:9093,MTLS://127.0.0.1:9094,CONTROLLER://127.0.0.1:9095"
    )
    assert "PLAINTEXT" not in props["listener.security.protocol.map"]
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["super.users"] == "User:admin;User:flarestream-broker"
    assert props["listener.name.mtls.ssl.client.auth"] == "required"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    # PEM text stays on one properties line (newlines escaped for java.util.Properties)
    assert props["ssl.keystore.key"] == "KEY\\nY"
    assert props["ssl.keystore.certificate.chain"] == "CHAIN\\nX"


def test_the_secure_broker_writes_a_private_config_and_remembers_it_is_secure(
    tmp_path: Path,
) -> None:
    broker = SecureBroker(tmp_path / "b", port=free_port(), controller_port=free_port())
    ca = CertificateAuthority.open(broker.tls_dir)
    ca.issue("flarestream-broker", broker.tls_dir, hosts=["127.0.0.1"])
    broker.data_dir.mkdir(parents=True, exist_ok=True)
    props = broker._write_config()
    assert props.stat().st_mode & 0o777 == 0o600  # it holds the broker's private key
    text = props.read_text()
    listeners = [line for line in text.splitlines() if line.startswith("listeners=")]
    assert len(listeners) == 1 and "PLAINTEXT" not in listeners[0]
    state = json.loads((broker.data_dir / "broker.json").read_text())
    assert state["secure"] is True and state["mtls_port"] == broker.mtls_port
    assert broker.mtls_port not in (broker.port, broker.controller_port)
    admin = broker.admin_config()
    assert admin["security.protocol"] == "SSL" and admin["bootstrap.servers"].endswith(
        f":{broker.mtls_port}"
    )


def test_a_secure_data_dir_is_never_started_plain_and_a_plain_one_never_secure(
    tmp_path: Path,
) -> None:
    secure_dir, plain_dir = tmp_path / "secure", tmp_path / "plain"
    secure_dir.mkdir()
    (secure_dir / "broker.json").write_text(json.dumps({"secure": True, "port": 1}))
    with pytest.raises(BrokerError, match="TLS and authentication"):
        LocalBroker(secure_dir).start()
    (plain_dir / "kraft").mkdir(parents=True)
    (plain_dir / "kraft" / "meta.properties").write_text("formatted\n")
    with pytest.raises(BrokerError, match="plain"):
        SecureBroker(plain_dir).start()


def test_ports_of_a_secure_broker_are_validated() -> None:
    with pytest.raises(ConfigError, match="mtls_port"):
        SecureBroker(Path("/nonexistent/x"), mtls_port=70000)
    with pytest.raises(ConfigError, match="differ"):
        SecureBroker(Path("/nonexistent/x"), port=9000, mtls_port=9000)


# -- users, ACLs and client settings -----------------------------------------------------------
@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "a\nb", "a,b", "a=b", "é", "x" * 200])
def test_unsafe_user_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        check_principal_name(name)


def test_reserved_users_and_short_passwords_are_refused_before_connecting() -> None:
    nowhere = {"bootstrap.servers": f"127.0.0.1:{free_port()}"}
    with pytest.raises(ConfigError, match="super user"):
        add_scram_user(nowhere, "admin", "long-enough-password")
    with pytest.raises(ConfigError, match="8\\+ characters"):
        add_scram_user(nowhere, "site-1", "short")


def test_acls_give_sites_write_only_and_sinks_read_plus_dead_letters() -> None:
    def layout(bindings: list[Any]) -> set[tuple[Any, ...]]:
        return {
            (b.restype, b.name, b.resource_pattern_type, b.principal, b.operation) for b in bindings
        }

    t, g = ResourceType.TOPIC, ResourceType.GROUP
    lit, pre = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    assert layout(site_acls("an", "site-1")) == {
        (t, "an", lit, "User:site-1", AclOperation.WRITE),
        (t, "an", lit, "User:site-1", AclOperation.DESCRIBE),
    }
    assert sink_user("tb") == "sink-tb"
    assert layout(sink_acls("an", "an.dlq", "tb")) == {
        (t, "an", lit, "User:sink-tb", AclOperation.READ),
        (t, "an", lit, "User:sink-tb", AclOperation.DESCRIBE),
        (g, "flarestream.", pre, "User:sink-tb", AclOperation.READ),
        (t, "an.dlq", lit, "User:sink-tb", AclOperation.WRITE),
        (t, "an.dlq", lit, "User:sink-tb", AclOperation.DESCRIBE),
    }


def test_client_settings_files_are_private_and_read_back_by_the_environment_layer(
    tmp_path: Path,
) -> None:
    config = client_config_for("site-1", "s3cret-password", tmp_path / "ca.pem")
    path = write_client_env(tmp_path / "clients" / "site-1.env", "127.0.0.1:9093", config)
    assert path.stat().st_mode & 0o777 == 0o600
    env = read_client_env(path)
    assert env["FLARESTREAM_BOOTSTRAP_SERVERS"] == "127.0.0.1:9093"
    assert kafka_config_from_env(env) == config
    with pytest.raises(ConfigError, match="environment variable"):
        env_lines("x:1", {"some_setting": "1"})


def test_masked_settings_hide_passwords_and_keep_paths(tmp_path: Path) -> None:
    config = {
        **client_config_for("site-1", "s3cret-password", tmp_path / "ca.pem"),
        "ssl.key.password": "key-secret",
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----",
    }
    shown = masked(config)
    assert "s3cret-password" not in repr(shown) and "key-secret" not in repr(shown)
    assert "BEGIN PRIVATE KEY" not in repr(shown)
    assert shown["sasl.username"] == "site-1" and shown["ssl.ca.location"] == str(
        tmp_path / "ca.pem"
    )
    assert "s3cret" not in describe_client(config) and "site-1" in describe_client(config)
    assert scrub("failed for s3cret-password", config) == "failed for ***"


# -- start-up checks ------------------------------------------------------------------------------
def test_only_tls_and_sasl_protocols_count_as_secured() -> None:
    assert not is_secured({}) and not is_secured({"security.protocol": "PLAINTEXT"})
    for protocol in ("SSL", "sasl_ssl", "SASL_PLAINTEXT"):
        assert is_secured({"security.protocol": protocol})


def test_missing_files_are_named_with_their_setting(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    check_files({"ssl.ca.location": str(ca)})
    check_files({"ssl.ca.location": "probe"})
    check_files({"ssl.ca.location": str(tmp_path)})  # a CA directory
    for setting in ("ssl.ca.location", "ssl.key.location", "ssl.certificate.location"):
        with pytest.raises(ConfigError, match=rf"{setting}={tmp_path}/gone\.pem: no such file"):
            check_files({setting: str(tmp_path / "gone.pem")})


def test_client_certificates_must_be_valid_now(ca: CertificateAuthority, tmp_path: Path) -> None:
    check_certificate({"ssl.certificate.location": str(ca.issue("ok").cert)})
    expired = ca.issue("expired", not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    with pytest.raises(ConfigError, match=r"\(CN=expired\) expired on"):
        check_certificate({"ssl.certificate.location": str(expired.cert)})
    future = ca.issue("future", not_before=NOW + DAY, not_after=NOW + 10 * DAY)
    with pytest.raises(ConfigError, match="not valid before"):
        check_certificate({"ssl.certificate.location": str(future.cert)})
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="not PEM"):
        check_certificate({"ssl.certificate.location": str(junk)})


def _err(code: int, text: str) -> KafkaError:
    return KafkaError(code, text)


@pytest.mark.parametrize(
    ("code", "text", "hint"),
    [
        (KafkaError._AUTHENTICATION, "SASL authentication error", "user name and password"),
        (KafkaError._SSL, "SSL handshake failed: certificate verify failed", "does not trust"),
        (KafkaError._TRANSPORT, "Receive failed: alert certificate unknown", "TLS handshake"),
    ],
)
def test_refusals_are_told_apart_from_an_absent_broker(code: int, text: str, hint: str) -> None:
    config = client_config_for("site-1", "pw-in-config-1", "/ca.pem")
    with pytest.raises(AuthenticationError, match=hint) as refused:
        connection._classify([_err(code, text + " pw-in-config-1")], config, "h:1", "site 's'")
    assert "pw-in-config-1" not in str(refused.value)
    assert "site 's' as user 'site-1'" in str(refused.value)
    connection._classify([_err(KafkaError._TRANSPORT, "Connection refused")], config, "h:1", "")
    assert connection._all_down([_err(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")])
    assert not connection._all_down([_err(KafkaError._ALL_BROKERS_DOWN, "0/2 brokers are down")])


def test_a_plaintext_client_is_not_connected_at_start() -> None:
    assert check_connection(f"127.0.0.1:{free_port()}", {}) is False


def test_a_secured_client_with_no_broker_goes_on_with_a_warning_without_secrets(
    tmp_path: Path, ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    password = f"pw-{secrets.token_hex(6)}"
    config = client_config_for("site-1", password, ca.cert_path)
    caplog.set_level(logging.WARNING, logger="flarestream.connection")
    assert check_connection(f"127.0.0.1:{free_port()}", config, timeout=5) is False
    assert "could not verify" in caplog.text and "user 'site-1'" in caplog.text
    assert password not in caplog.text


@pytest.mark.parametrize("site", ["a/b", "..", "evil\x00", "tab\tname"])
def test_the_sender_refuses_bad_site_names_and_missing_files_before_connecting(
    site: str, tmp_path: Path
) -> None:
    secured = client_config_for("site-1", "long-enough-password", tmp_path / "missing-ca.pem")
    nowhere = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match="site"):
        AnalyticsSender(site=site, job_id="j", bootstrap_servers=nowhere, config=secured)
    with pytest.raises(ConfigError, match=r"ssl\.ca\.location=.*missing-ca\.pem: no such file"):
        AnalyticsSender(site="site-1", job_id="j", bootstrap_servers=nowhere, config=secured)


# -- command line ---------------------------------------------------------------------------------
def test_site_and_sink_options_need_secure_and_valid_names(
    tmp_path: Path, run_cli: Callable[..., Any]
) -> None:
    data_dir = str(tmp_path / "b")
    plain = run_cli("broker", "start", "--site", "site-1", "--data-dir", data_dir)
    assert plain.rc == 2 and "--secure" in plain.err
    bad = run_cli("broker", "start", "--secure", "--site", "../x", "--data-dir", data_dir)
    assert bad.rc == 2 and "not allowed" in bad.err
    reserved = run_cli("broker", "start", "--secure", "--site", "admin", "--data-dir", data_dir)
    assert reserved.rc == 2 and "super user" in reserved.err
    assert not (tmp_path / "b" / "broker.json").exists()  # nothing was started


def test_mtls_settings_name_the_files() -> None:
    assert mtls_client_config("/c.pem", "/c.key", "/ca.pem") == {
        "security.protocol": "SSL",
        "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/c.key",
        "ssl.ca.location": "/ca.pem",
    }


def test_super_user_certificates_are_only_made_by_the_broker(tmp_path: Path) -> None:
    broker = SecureBroker(tmp_path / "b")
    for name in ("admin", "flarestream-broker"):
        with pytest.raises(ConfigError, match="super user"):
            broker.issue_client_certificate(name)
    issued = broker.issue_client_certificate("site-1")
    assert issued.ca == broker.ca_path and issued.cert.parent == broker.clients_dir
