"""Transport security and least privilege against a real secured Kafka.

One :class:`SecureBroker` for the module (TLS with a test CA, SCRAM-SHA-512 logins,
mutual TLS, the KRaft authorizer with ``allow.everyone.if.no.acl.found=false``):
sites may only write to the analytics topic, the sink may only read it and write
the dead-letter topic. Every refusal here is the broker's or librdkafka's own,
reported as a clear error when a client is made; no password ever shows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from flarestream import connection
from flarestream.connection import AuthenticationError, check_connection
from flarestream.consumers import Delivered, LoopConfig, Rejection, Sink, run_sink
from flarestream.consumers.deadletter import dead_letter_info
from flarestream.deploy import LocalBroker, create_topic, free_port
from flarestream.deploy.access import describe_acls, read_client_env
from flarestream.deploy.certs import CertificateAuthority
from flarestream.deploy.security import (
    SecureBroker,
    add_scram_user,
    client_config_for,
    grant_sink,
    grant_site,
    mtls_client_config,
)
from flarestream.errors import BrokerError, ConfigError, DeliveryError, TopicError
from flarestream.producer import AnalyticsSender
from flarestream.schemas import Codec, Record

pytestmark = pytest.mark.integration

TOPIC, DLQ = "flare.analytics", "flare.analytics.dlq"
SITES, SINK = ("site-a", "site-b"), "test"


@dataclass
class Secured:
    broker: SecureBroker
    passwords: dict[str, str]

    @property
    def admin(self) -> dict[str, Any]:
        return self.broker.admin_config()

    def login(self, user: str, password: str | None = None) -> dict[str, str]:
        """SASL_SSL settings of ``user`` (its real password unless one is given)."""
        return client_config_for(user, password or self.passwords[user], self.broker.ca_path)

    def sender(self, site: str, config: Mapping[str, Any], **kw: Any) -> AnalyticsSender:
        bootstrap = kw.pop("bootstrap_servers", self.broker.bootstrap)
        return AnalyticsSender(
            site=site, job_id=kw.pop("job_id", "job"), bootstrap_servers=bootstrap,
            topic=kw.pop("topic", TOPIC), config=config, **kw,
        )  # fmt: skip


def _no_bootstrap(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "bootstrap.servers"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    broker = SecureBroker(tmp_path_factory.mktemp("secure-kafka"))
    try:
        broker.start(timeout=180)
        admin = broker.admin_config()
        for name, partitions in ((TOPIC, 3), (DLQ, 1)):
            create_topic(
                admin["bootstrap.servers"], name, partitions, 1, client_config=_no_bootstrap(admin)
            )
        passwords = {user: secrets.token_urlsafe(18) for user in (*SITES, f"sink-{SINK}")}
        for site in SITES:
            add_scram_user(admin, site, passwords[site])
            grant_site(admin, TOPIC, site)
        add_scram_user(admin, f"sink-{SINK}", passwords[f"sink-{SINK}"])
        grant_sink(admin, TOPIC, DLQ, SINK)
        yield Secured(broker, passwords)
    finally:
        try:
            broker.stop(timeout=20)
        except Exception:
            broker.kill()


# -- helpers ---------------------------------------------------------------------------
def read_topic(
    bootstrap: str, config: Mapping[str, Any], topic: str, group: str = "flarestream.reader"
) -> list[Message]:
    """Every message of ``topic`` up to its current end, read with ``config``."""
    consumer = Consumer(
        {**config, "bootstrap.servers": bootstrap, "group.id": group,
         "enable.auto.commit": False, "log_level": 0}
    )  # fmt: skip
    try:
        parts = consumer.list_topics(topic, timeout=20).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=20)[1]
                for p in parts}  # fmt: skip
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        got: list[Message] = []
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                err = msg.error()
                if err is not None:
                    raise AssertionError(f"reading {topic}: {err.str()}")
                got.append(msg)
                if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                    done.add(msg.partition() or 0)
        assert len(done) == len(ends), f"could not read {topic} to its end"
        return got
    finally:
        consumer.close()


def records_of(messages: Sequence[Message], job_id: str) -> list[Record]:
    codec = Codec()
    decoded = [codec.decode(m.value() or b"") for m in messages]
    return [r for r in decoded if r.job_id == job_id]


def refused_with(consumer: Consumer, code: int, seconds: float = 30) -> bool:
    """True once the consumer reports error ``code``; AssertionError naming the errors
    it reported instead when it does not within ``seconds``."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for msg in consumer.consume(10, timeout=0.5):
            err = msg.error()
            if err is not None and err.code() == code:
                return True
            if err is not None:
                seen.add(err.name())
            elif msg.value() is not None:
                raise AssertionError(f"read a record from {msg.topic()}: it should be refused")
    raise AssertionError(f"no error {code} within {seconds}s; errors seen: {sorted(seen)}")


def send(sender: AnalyticsSender, n: int) -> None:
    for i in range(n):
        sender.add_scalar("loss", 1.0 / (i + 1), global_step=i)


# -- SCRAM logins ------------------------------------------------------------------------
@pytest.mark.parametrize("user", ["site-a", "site-nobody"])
def test_a_wrong_password_or_unknown_user_is_refused_when_the_sender_is_made(
    secured: Secured, user: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    before = len(read_topic(secured.broker.bootstrap, secured.login("sink-test"), TOPIC))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as refused:
        secured.sender("site-a", secured.login(user, wrong), job_id=f"j-{uuid.uuid4().hex}")
    message = str(refused.value)
    assert f"user {user!r}" in message and "site 'site-a'" in message
    assert "SCRAM-SHA-512" in message and "password" in message
    assert wrong not in message and wrong not in caplog.text
    # refused before any record was accepted: nothing reached the topic
    assert len(read_topic(secured.broker.bootstrap, secured.login("sink-test"), TOPIC)) == before


def test_a_site_writes_its_records_and_the_sink_reads_them(secured: Secured) -> None:
    job = f"job-{uuid.uuid4().hex[:8]}"
    with secured.sender("site-a", secured.login("site-a"), job_id=job) as sender:
        send(sender, 200)
    got = records_of(read_topic(secured.broker.bootstrap, secured.login("sink-test"), TOPIC), job)
    assert [(r.site, r.seq, r.step) for r in got] == [("site-a", i, i) for i in range(200)]


def test_a_site_cannot_read_the_topic(secured: Secured) -> None:
    base = {**secured.login("site-a"), "bootstrap.servers": secured.broker.bootstrap}
    grouped = Consumer({**base, "group.id": "flarestream.spy", "log_level": 0})
    try:
        grouped.subscribe([TOPIC])
        assert refused_with(grouped, KafkaError.GROUP_AUTHORIZATION_FAILED)
    finally:
        grouped.close()
    # fetching assigned partitions directly: the topic itself is refused
    fetching = Consumer(
        {**base, "group.id": "flarestream.spy", "enable.auto.commit": False, "log_level": 0}
    )
    try:
        fetching.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(3)])
        assert refused_with(fetching, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    finally:
        fetching.close()


def test_a_site_cannot_write_other_topics_or_create_topics(secured: Secured) -> None:
    sender = secured.sender("site-a", secured.login("site-a"), topic=DLQ)
    send(sender, 3)
    with pytest.raises(DeliveryError) as refused:
        sender.close(timeout=30)
    assert "Topic authorization failed" in str(refused.value)
    assert refused.value.undelivered == 3
    with pytest.raises(TopicError, match=r"(?i)authoriz"):
        create_topic(
            secured.broker.bootstrap, "made.by.a.site", 1, 1, client_config=secured.login("site-a")
        )


class RejectOddSteps(Sink):
    """Keeps the records of one job; refuses those with an odd step (dead letters)."""

    name = "reject-odd"

    def __init__(self, job: str) -> None:
        self.job = job
        self.kept: list[Record] = []

    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        mine = [d for d in batch if d.record.job_id == self.job]
        self.kept += [d.record for d in mine if (d.record.step or 0) % 2 == 0]
        return [Rejection(d, "odd step") for d in mine if (d.record.step or 0) % 2]

    def flush(self) -> Mapping[tuple[str, int], int] | None:
        return None


def test_the_sink_reads_the_topic_and_writes_dead_letters_but_cannot_write_the_topic(
    secured: Secured,
) -> None:
    job = f"job-{uuid.uuid4().hex[:8]}"
    with secured.sender("site-b", secured.login("site-b"), job_id=job) as sender:
        send(sender, 20)
    sink = RejectOddSteps(job)
    loop = LoopConfig(
        bootstrap_servers=secured.broker.bootstrap, topic=TOPIC, dlq_topic=DLQ,
        group=f"flarestream.sec-{uuid.uuid4().hex[:8]}", until_end=True, flush_interval_s=0.5,
        consumer_config=secured.login("sink-test"),
    )  # fmt: skip
    run_sink(sink, loop, handle_signals=False)
    assert [r.step for r in sink.kept] == list(range(0, 20, 2))
    admin = secured.admin
    letters = read_topic(admin["bootstrap.servers"], _no_bootstrap(admin), DLQ)
    codec = Codec()
    mine = [m for m in letters if codec.decode(m.value() or b"").job_id == job]
    assert [codec.decode(m.value() or b"").step for m in mine] == list(range(1, 20, 2))
    for letter in mine:
        info = dead_letter_info(letter.headers())
        assert info["error"] == "odd step" and info["sink"] == "reject-odd"
        assert info["topic"] == TOPIC
    # the sink's own user may not write to the analytics topic
    forger = secured.sender("site-b", secured.login("sink-test"), job_id=job)
    send(forger, 2)
    with pytest.raises(DeliveryError, match="Topic authorization failed") as refused:
        forger.close(timeout=30)
    assert refused.value.undelivered == 2
    everything = read_topic(secured.broker.bootstrap, secured.login("sink-test"), TOPIC)
    assert len(records_of(everything, job)) == 20  # the refused records are not there


def test_the_sink_may_only_use_groups_with_its_prefix(secured: Secured) -> None:
    consumer = Consumer(
        {**secured.login("sink-test"), "bootstrap.servers": secured.broker.bootstrap,
         "group.id": "someone.elses.group", "log_level": 0}
    )  # fmt: skip
    try:
        consumer.subscribe([TOPIC])
        assert refused_with(consumer, KafkaError.GROUP_AUTHORIZATION_FAILED)
    finally:
        consumer.close()


def test_users_have_exactly_the_acls_of_their_role(secured: Secured) -> None:
    def name(value: object) -> str:
        return str(getattr(value, "name", value))

    def summary(user: str) -> set[tuple[str, ...]]:
        return {
            (name(b.restype), b.name, name(b.resource_pattern_type), name(b.operation))
            for b in describe_acls(secured.admin, user)
        }

    assert summary("site-a") == {
        ("TOPIC", TOPIC, "LITERAL", "WRITE"), ("TOPIC", TOPIC, "LITERAL", "DESCRIBE"),
    }  # fmt: skip
    assert summary("sink-test") == {
        ("TOPIC", TOPIC, "LITERAL", "READ"), ("TOPIC", TOPIC, "LITERAL", "DESCRIBE"),
        ("GROUP", "flarestream.", "PREFIXED", "READ"),
        ("TOPIC", DLQ, "LITERAL", "WRITE"), ("TOPIC", DLQ, "LITERAL", "DESCRIBE"),
    }  # fmt: skip


# -- mutual TLS --------------------------------------------------------------------------
def mtls(issued: Any, ca: Path) -> dict[str, str]:
    return mtls_client_config(issued.cert, issued.key, ca)


def test_a_client_certificate_logs_in_as_its_common_name_and_its_acls_apply(
    secured: Secured,
) -> None:
    broker, job = secured.broker, f"job-{uuid.uuid4().hex[:8]}"
    site_cert = broker.issue_client_certificate("site-a")
    with secured.sender(
        "site-a",
        mtls(site_cert, broker.ca_path),
        job_id=job,
        bootstrap_servers=broker.mtls_bootstrap,
    ) as sender:
        send(sender, 50)
    got = records_of(read_topic(broker.bootstrap, secured.login("sink-test"), TOPIC), job)
    assert [r.seq for r in got] == list(range(50))
    # a valid certificate of a principal without ACLs connects but may not write
    stranger = broker.issue_client_certificate("site-stranger")
    sender = secured.sender(
        "site-a",
        mtls(stranger, broker.ca_path),
        job_id=job,
        bootstrap_servers=broker.mtls_bootstrap,
    )
    send(sender, 1)
    with pytest.raises(DeliveryError, match="Topic authorization failed"):
        sender.close(timeout=30)


def test_an_expired_client_certificate_is_refused_at_start(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = secured.broker
    now = dt.datetime.now(dt.timezone.utc)
    expired = broker.issue_client_certificate(
        "site-a-expired",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    config = mtls(expired, broker.ca_path)
    with pytest.raises(ConfigError, match="expired") as refused:
        secured.sender("site-a", config, bootstrap_servers=broker.mtls_bootstrap)
    assert str(expired.cert) in str(refused.value)
    # without the local check, the broker refuses it too, and that is reported at start
    monkeypatch.setattr(connection, "check_certificate", lambda config, now=None: None)
    with pytest.raises(AuthenticationError, match="refused the TLS handshake") as refused_by_kafka:
        secured.sender("site-a", config, bootstrap_servers=broker.mtls_bootstrap)
    assert str(expired.cert) in str(refused_by_kafka.value)


def test_a_certificate_from_a_foreign_ca_is_refused_at_start(
    secured: Secured, tmp_path: Path
) -> None:
    foreign = CertificateAuthority.create(tmp_path / "foreign-ca").issue("site-a")
    config = mtls(foreign, secured.broker.ca_path)
    with pytest.raises(AuthenticationError, match="refused the TLS handshake") as refused:
        secured.sender("site-a", config, bootstrap_servers=secured.broker.mtls_bootstrap)
    assert "site 'site-a'" in str(refused.value) and str(foreign.cert) in str(refused.value)


def test_a_client_that_does_not_trust_the_broker_or_sends_no_certificate_is_refused(
    secured: Secured, tmp_path: Path
) -> None:
    broker = secured.broker
    other_ca = CertificateAuthority.create(tmp_path / "other-ca").cert_path
    with pytest.raises(AuthenticationError, match="does not trust the broker"):
        check_connection(broker.bootstrap, client_config_for("site-a", "whatever-pw", other_ca))
    no_cert = {"security.protocol": "SSL", "ssl.ca.location": str(broker.ca_path)}
    with pytest.raises(AuthenticationError, match="without a certificate"):
        check_connection(broker.mtls_bootstrap, no_cert)


@pytest.mark.parametrize(
    "setting", ["ssl.ca.location", "ssl.certificate.location", "ssl.key.location"]
)
def test_a_missing_ca_certificate_or_key_file_is_a_config_error_naming_it(
    secured: Secured, setting: str, tmp_path: Path
) -> None:
    broker = secured.broker
    good = mtls(broker.issue_client_certificate("site-b"), broker.ca_path)
    missing = tmp_path / "nowhere" / "file.pem"
    with pytest.raises(ConfigError) as refused:
        secured.sender(
            "site-b", {**good, setting: str(missing)}, bootstrap_servers=broker.mtls_bootstrap
        )
    assert setting in str(refused.value) and str(missing) in str(refused.value)
    # checked before connecting: the same error with no broker at all
    with pytest.raises(ConfigError, match=re.escape(setting)):
        check_connection(f"127.0.0.1:{free_port()}", {**good, setting: str(missing)})


# -- the command line ----------------------------------------------------------------------
_CLI = (
    "import sys, importlib.util, flarestream.cli as c; "
    "c.SUBCOMMANDS = tuple(s for s in c.SUBCOMMANDS if importlib.util.find_spec(s[1])); "
    "sys.exit(c.main(sys.argv[1:]))"
)


def _flarestream(
    *argv: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *argv], capture_output=True, text=True, timeout=300, env=env
    )


def test_the_cli_starts_a_secure_broker_and_writes_settings_without_printing_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable[..., Any]
) -> None:
    data_dir = tmp_path / "secure"
    argv = ["--data-dir", str(data_dir)]
    started = _flarestream(
        "broker", "start", "--secure", "--port", "0", "--site", "site-x", "--sink", "archive",
        *argv,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        address = started.stdout.strip().splitlines()[-1]
        files = {u: data_dir / "clients" / f"{u}.env" for u in ("admin", "site-x", "sink-archive")}
        for path in files.values():
            assert str(path) in started.stderr
            assert path.stat().st_mode & 0o777 == 0o600
        site_env = read_client_env(files["site-x"])
        password = site_env["FLARESTREAM_KAFKA_SASL_PASSWORD"]
        assert password not in started.stdout + started.stderr
        assert site_env["FLARESTREAM_BOOTSTRAP_SERVERS"] == address
        # the settings file is all a site needs: every component reads the environment
        for name, value in site_env.items():
            monkeypatch.setenv(name, value)
        admin_env = read_client_env(files["admin"])
        admin = {k[len("FLARESTREAM_KAFKA_"):].lower().replace("_", "."): v
                 for k, v in admin_env.items() if k.startswith("FLARESTREAM_KAFKA_")}  # fmt: skip
        create_topic(admin_env["FLARESTREAM_BOOTSTRAP_SERVERS"], TOPIC, 1, 1, client_config=admin)
        with AnalyticsSender(site="site-x", job_id="cli", topic=TOPIC) as sender:
            send(sender, 5)
        # a wrong password in the environment: refused, and never printed
        monkeypatch.setenv("FLARESTREAM_KAFKA_SASL_PASSWORD", "wrong-but-secret-1234")
        with pytest.raises(AuthenticationError) as refused:
            AnalyticsSender(site="site-x", job_id="cli", topic=TOPIC)
        assert "wrong-but-secret-1234" not in str(refused.value)
        status = run_cli("broker", "status", *argv)
        assert status.rc == 0 and address in status.out
    finally:
        stopped = _flarestream("broker", "stop", *argv)
        assert stopped.returncode == 0, stopped.stderr
    # this data dir never starts without its security by mistake
    with pytest.raises(BrokerError, match="TLS and authentication"):
        LocalBroker(data_dir).start()


def test_help_never_shows_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    import flarestream.cli as cli

    available = tuple(c for c in cli.SUBCOMMANDS if importlib.util.find_spec(c[1]))
    monkeypatch.setattr(cli, "SUBCOMMANDS", available)
    secret = f"pw-{secrets.token_hex(8)}"
    monkeypatch.setenv("FLARESTREAM_KAFKA_SASL_PASSWORD", secret)
    monkeypatch.setenv("FLARESTREAM_KAFKA_SSL_KEY_PASSWORD", secret)
    for command in (["broker", "start"], ["topic", "create"], ["sink"], []):
        with pytest.raises(SystemExit):
            cli.main([*command, "--help"])
        out, err = capsys.readouterr()
        assert out and secret not in out + err


def test_a_record_forged_by_site_a_as_site_b_is_dead_lettered_and_named_by_the_audit(
    secured: Secured, tmp_path: Path, run_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flarestream.signing import write_key_pair

    keys = tmp_path / "keys"
    for site in SITES:
        write_key_pair(keys, site)
    job = f"job-{uuid.uuid4().hex[:8]}"
    # honest: each site logged in as itself, signing with its own key
    for site in SITES:
        with secured.sender(site, secured.login(site), job_id=job,
                            signing_key=keys / f"{site}.key") as sender:  # fmt: skip
            send(sender, 5)
    # forged: site A, logged in as site-a (its ACL lets it write the topic), claims site-b
    with secured.sender("site-b", secured.login("site-a"), job_id=job,
                        signing_key=keys / "site-a.key") as forger:  # fmt: skip
        forger.add_scalar("loss", 666.0, global_step=99)

    sink = RejectOddSteps(job)
    loop = LoopConfig(
        bootstrap_servers=secured.broker.bootstrap, topic=TOPIC, dlq_topic=DLQ,
        group=f"flarestream.sec-{uuid.uuid4().hex[:8]}", until_end=True, flush_interval_s=0.5,
        consumer_config=secured.login("sink-test"), verify_keys=keys,
    )  # fmt: skip
    run_sink(sink, loop, handle_signals=False)
    assert 666.0 not in [r.value for r in sink.kept]  # never reached the sink
    admin = secured.admin
    letters = read_topic(admin["bootstrap.servers"], _no_bootstrap(admin), DLQ)
    codec = Codec()
    forged = [m for m in letters if codec.decode(m.value() or b"").value == 666.0
              and codec.decode(m.value() or b"").job_id == job]  # fmt: skip
    assert len(forged) == 1
    error = dead_letter_info(forged[0].headers())["error"]
    assert error.startswith("signature does not verify for site 'site-b'")
    assert "key of site 'site-a'" in error

    # the audit, run with the sink's credentials from the environment, names it
    for name, value in secured.login("sink-test").items():
        monkeypatch.setenv("FLARESTREAM_KAFKA_" + name.upper().replace(".", "_"), value)
    report_path = tmp_path / "audit.json"
    result = run_cli(
        "audit", "--bootstrap-servers", secured.broker.bootstrap, "--topic", TOPIC,
        "--job", job, "--verify-keys", str(keys), "--json", str(report_path),
    )  # fmt: skip
    assert result.rc == 1, result.err
    assert secured.passwords["sink-test"] not in result.out + result.err
    report = json.loads(report_path.read_text())
    (named,) = [f for f in report["provenance"]["failures"] if f["verdict"] == "bad_signature"]
    assert (named["site"], named["signed_by"]) == ("site-b", "site-a")
    assert named["where"] == forged_at(forged[0])


def forged_at(letter: Message) -> str:
    """Where the dead letter came from, as the audit names places: topic[partition]@offset."""
    info = dead_letter_info(letter.headers())
    return f"{info['topic']}[{info['partition']}]@{info['offset']}"
