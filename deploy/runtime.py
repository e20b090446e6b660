"""What the local broker needs from the machine: a Java 17+ runtime and the Kafka jars.

The jars are fetched once with Maven (``deploy/pom.xml`` pins the version) into
``settings.cache_dir()/kafka-<version>/libs``, outside any repository, and reused
afterwards. A fetch goes to a temporary directory that is renamed into place and a
``.complete`` marker is written last, so an interrupted fetch is never mistaken for
a finished one: it is simply redone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

from flarestream import settings
from flarestream.errors import BrokerError

MIN_JAVA = 17
_POM_NS = "{http://maven.apache.org/POM/4.0.0}"
_MARKER = ".complete"
_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """A progress callback that says nothing."""


@contextlib.contextmanager
def packaged_file(name: str) -> Iterator[Path]:
    """A real filesystem path to the package-data file ``name`` of flarestream.deploy."""
    with resources.as_file(resources.files("flarestream.deploy") / name) as path:
        yield Path(path)


def pinned_kafka_version() -> str:
    """The Kafka version pinned by the ``kafka.version`` property of ``deploy/pom.xml``."""
    with packaged_file("pom.xml") as pom:
        node = ET.parse(pom).getroot().find(f"{_POM_NS}properties/{_POM_NS}kafka.version")
    if node is None or not (node.text or "").strip():
        raise BrokerError("deploy/pom.xml has no <kafka.version> property; reinstall flarestream")
    return (node.text or "").strip()


def find_java() -> Path:
    """The ``java`` executable: ``$JAVA_HOME/bin/java`` when that exists, else ``java`` on PATH.

    Raises :class:`BrokerError` saying how to install Java when neither exists. The
    version is not checked here (see :func:`check_java`).
    """
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("java")
    if found:
        return Path(found)
    hint = f" (JAVA_HOME={home} has no bin/java)" if home else ""
    raise BrokerError(
        f"java not found{hint}: the local Kafka broker needs Java {MIN_JAVA} or newer. "
        f"Install a JDK/JRE {MIN_JAVA}+ (e.g. the openjdk-{MIN_JAVA}-jre-headless package) "
        "and put it on PATH or set JAVA_HOME, or point FLARESTREAM_BOOTSTRAP_SERVERS "
        "at an existing Kafka instead"
    )


def java_major_version(java: Path) -> int:
    """The major version reported by ``java -version`` (8 for ``1.8.0_x``)."""
    try:
        out = subprocess.run(
            [str(java), "-version"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"could not run {java} -version: {exc}") from exc
    match = _JAVA_VERSION.search(out.stderr + out.stdout)
    if not match:
        raise BrokerError(f"could not tell the version of {java} from: {out.stderr.strip()!r}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> Path:
    """:func:`find_java`, refusing (:class:`BrokerError`) a Java older than 17."""
    java = find_java()
    major = java_major_version(java)
    if major < MIN_JAVA:
        raise BrokerError(
            f"{java} is Java {major}; Kafka 4 needs Java {MIN_JAVA} or newer. Install a "
            f"newer JDK/JRE and set JAVA_HOME to it (or put it first on PATH)"
        )
    return java


def find_mvn() -> Path:
    """The ``mvn`` executable on PATH; :class:`BrokerError` saying what to do when missing."""
    found = shutil.which("mvn")
    if not found:
        raise BrokerError(
            "mvn (Apache Maven) not found on PATH and the Kafka jars are not cached yet: "
            "install Maven (e.g. the maven package) so they can be fetched once, or set "
            "FLARESTREAM_CACHE to a directory that already holds kafka-<version>/libs"
        )
    return Path(found)


def libs_dir(kafka_version: str, cache: Path | None = None) -> Path:
    """Where the jars of ``kafka_version`` live (whether or not they are there yet)."""
    return (cache or settings.cache_dir()) / f"kafka-{kafka_version}" / "libs"


def jars_cached(kafka_version: str, cache: Path | None = None) -> bool:
    """True when a complete fetch of ``kafka_version`` is in the cache."""
    libs = libs_dir(kafka_version, cache)
    return (libs.parent / _MARKER).is_file() and any(libs.glob("*.jar"))


def ensure_jars(kafka_version: str, cache: Path | None = None, log: Log = quiet) -> Path:
    """The directory holding every jar the broker needs, fetching them first if needed.

    Guarantees: returns only a directory whose fetch completed; concurrent callers
    (other processes too) fetch at most once; a failed or interrupted fetch leaves
    no completion marker, so the next call fetches again. Raises
    :class:`BrokerError` when Maven is missing or the fetch fails.
    """
    libs = libs_dir(kafka_version, cache)
    if jars_cached(kafka_version, cache):
        return libs
    mvn = find_mvn()
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if jars_cached(kafka_version, cache):
            return libs
        log(f"fetching Kafka {kafka_version} jars with Maven into {libs} (once)")
        tmp = libs.parent / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _run_maven(mvn, kafka_version, tmp)
        if not list(tmp.glob(f"kafka_*-{kafka_version}.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            raise BrokerError(f"Maven finished but fetched no Kafka {kafka_version} jar")
        (libs.parent / _MARKER).unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        (libs.parent / _MARKER).write_text(kafka_version + "\n")
    return libs


def _run_maven(mvn: Path, kafka_version: str, out_dir: Path) -> None:
    """Copy the pom's runtime dependencies for ``kafka_version`` into ``out_dir``."""
    with packaged_file("pom.xml") as pom:
        cmd = [
            str(mvn),
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={out_dir}",
            "-DincludeScope=runtime",
            f"-Dkafka.version={kafka_version}",
        ]
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=1800,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerError(f"could not fetch the Kafka jars with Maven: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BrokerError(
            f"Maven could not fetch Kafka {kafka_version} (exit {done.returncode}); check the "
            f"network and the Maven settings, then retry. Maven said:\n{tail}"
        )


def classpath(libs: Path) -> str:
    """The Java classpath made of every jar in ``libs`` (sorted, so it is stable)."""
    return os.pathsep.join(str(jar) for jar in sorted(libs.glob("*.jar")))
