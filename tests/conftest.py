"""Shared fixtures. Integration tests get a real Kafka and never skip for want of one.

Where the broker comes from (first that works):

1. ``FLARESTREAM_BOOTSTRAP_SERVERS`` or ``KAFKA_BOOTSTRAP_SERVERS``: an existing Kafka;
2. a testcontainers Kafka, when testcontainers is installed and a Docker engine answers
   (skipped when ``FLARESTREAM_TEST_BROKER=local``);
3. a :class:`LocalBroker` on free ports in a temporary directory (Java 17 + Maven or
   cached jars), started once per session and stopped at its end.

If none works the fixture fails the test with every reason (in CI and locally alike).
"""

from __future__ import annotations

import importlib.util
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from flarestream.deploy import LocalBroker, create_topic


@dataclass(frozen=True)
class CliResult:
    """Exit code and captured output of one ``flarestream`` command."""

    rc: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = self.out.strip().splitlines()
        return lines[-1] if lines else ""


def _container_bootstrap() -> tuple[Any, str]:
    """(started container, bootstrap) from testcontainers; raises on any problem."""
    import docker

    docker.from_env(timeout=5).ping()  # no engine: DockerException, fast
    from testcontainers.kafka import (
        KafkaContainer,
    )

    container = KafkaContainer()
    container.start()
    try:
        return container, str(container.get_bootstrap_server())
    except Exception:
        container.stop()
        raise


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address of a real Kafka for the whole session (see module doc)."""
    given = os.environ.get("FLARESTREAM_BOOTSTRAP_SERVERS") or os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS"
    )
    if given:
        yield given
        return
    reasons: list[str] = []
    if os.environ.get("FLARESTREAM_TEST_BROKER", "").lower() != "local":
        try:
            container, address = _container_bootstrap()
        except Exception as exc:  # no testcontainers, no Docker engine, pull failed...
            reasons.append(f"testcontainers: {type(exc).__name__}: {exc}")
        else:
            try:
                yield address
            finally:
                container.stop()
            return
    broker = LocalBroker(tmp_path_factory.mktemp("session-kafka"))
    try:
        address = broker.start(timeout=180)
    except Exception as exc:
        reasons.append(f"LocalBroker: {type(exc).__name__}: {exc}")
        broker.kill()
        where = "CI" if os.environ.get("CI") else "this machine"
        pytest.fail(
            f"no Kafka broker available on {where} for integration tests; set "
            "FLARESTREAM_BOOTSTRAP_SERVERS, start Docker, or install Java 17+ and Maven.\n"
            + "\n".join(reasons),
            pytrace=False,
        )
    try:
        yield address
    finally:
        broker.stop()


@pytest.fixture
def topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> str:
    """A new, uniquely named topic with 3 partitions (replication 1) on the session broker."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]
    name = f"test.{stem}.{uuid.uuid4().hex[:10]}"
    create_topic(kafka_bootstrap, name, partitions=3, replication_factor=1)
    return name


@pytest.fixture
def local_broker_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LocalBroker]]:
    """Make a test's OWN :class:`LocalBroker` (free ports, fresh temporary directory).

    ``make(start=True, **kwargs)`` returns it started (``broker.bootstrap`` is its
    address); ``start=False`` leaves starting to the test. Every broker made is
    stopped (killed if a clean stop fails) when the test ends.
    """
    made: list[LocalBroker] = []

    def make(start: bool = True, **kwargs: Any) -> LocalBroker:
        broker = LocalBroker(tmp_path_factory.mktemp("own-kafka"), **kwargs)
        made.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in made:
        try:
            broker.stop(timeout=20)
        except Exception:
            broker.kill()


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., CliResult]:
    """Run ``flarestream ARGS...`` in-process through ``flarestream.cli.main``.

    Subcommands whose module is not written yet are left out of the parser, so these
    tests do not depend on unrelated parts of the tool.
    """
    import flarestream.cli as cli

    available = tuple(
        (name, module) for name, module in cli.SUBCOMMANDS if importlib.util.find_spec(module)
    )
    monkeypatch.setattr(cli, "SUBCOMMANDS", available)

    def run(*argv: str) -> CliResult:
        capsys.readouterr()
        rc = cli.main(list(argv))
        out, err = capsys.readouterr()
        return CliResult(rc, out, err)

    return run
