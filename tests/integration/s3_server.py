"""An S3-compatible server for tests: moto's standalone server as a subprocess.

``s3_server`` (session fixture) starts ``python -m moto.server`` on 127.0.0.1 and a
free port, waits until it answers, creates a bucket, and stops the server at the
end of the session. Fake credentials live only in :meth:`S3Server.storage_options`
(given to fsspec/s3fs for this endpoint), never in the process environment.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BUCKET = "flarestream-test"
_FAKE_KEY, _FAKE_SECRET, _REGION = "testing", "testing", "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str

    def storage_options(self) -> dict[str, Any]:
        """fsspec options (s3fs) reaching this server with fake credentials."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": _FAKE_KEY,
            "secret": _FAKE_SECRET,
            "client_kwargs": {"region_name": _REGION},
        }

    def new_prefix(self) -> str:
        """A fresh ``s3://bucket/<unique>`` URL for one test."""
        return f"s3://{self.bucket}/{uuid.uuid4().hex[:12]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"moto server did not answer at {url} within {timeout} s: {log.read_text()}")


def _create_bucket(server: S3Server) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=_FAKE_KEY,
        aws_secret_access_key=_FAKE_SECRET,
        region_name=_REGION,
    )
    client.create_bucket(Bucket=server.bucket)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running moto S3 server with an empty bucket (see the module doc)."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_until_up(url, proc, log, timeout=60)
        server = S3Server(url, BUCKET)
        _create_bucket(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
