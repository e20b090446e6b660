"""The built wheel works on its own: installed into a fresh virtual environment (no
system site-packages, nothing from this repository on the path), every package imports
from site-packages, the data files are inside, the codec round-trips a record and the
``flarestream`` command answers ``--help``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = "flarestream.analytics.AnalyticsRecord.avsc"

# run as `python -c _CHECK SCHEMA_FILE`
_CHECK = """
import json, sys
from importlib import resources
import flarestream, flarestream.schemas, flarestream.producer, flarestream.consumers
import flarestream.deploy
from flarestream.schemas import AnalyticsDataType, LogWriterName, Record, decode, encode

record = Record(
    site="site-1", job_id="job-1", sender_id="abc", seq=7, timestamp_ms=1700000000000,
    tag="loss", data_type=AnalyticsDataType.SCALARS, value={"train": 0.5, "val": 2},
    writer=LogWriterName.MLFLOW, step=3, path="a/b.txt", kwargs={"walltime": 1.5},
)
back = decode(encode(record))
print(json.dumps({
    "files": {
        name: mod.__file__
        for name, mod in [
            ("flarestream", flarestream),
            ("schemas", flarestream.schemas),
            ("producer", flarestream.producer),
            ("consumers", flarestream.consumers),
            ("deploy", flarestream.deploy),
        ]
    },
    "schema": resources.files("flarestream.schemas").joinpath(sys.argv[1]).is_file(),
    "pom": resources.files("flarestream.deploy").joinpath("pom.xml").is_file(),
    "roundtrip": back == record,
    "decoded": [back.tag, back.data_type.name, back.value, back.step, back.path, back.kwargs],
    "prefix": sys.prefix,
}))
"""


def _clean_env() -> dict[str, str]:
    """The environment without anything that would put this repository on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)], REPO)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels = list(out.glob("flarestream-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel (and its dependencies) installed."""
    root = tmp_path_factory.mktemp("wheel-venv")
    made = _run([sys.executable, "-m", "venv", str(root / "venv")], root)
    assert made.returncode == 0, made.stderr
    cfg = (root / "venv" / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    python = root / "venv" / "bin" / "python"
    installed = _run([str(python), "-m", "pip", "install", "-q", str(wheel)], root)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return root / "venv"


def test_wheel_contains_the_schema_and_the_broker_pom(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert f"flarestream/schemas/{SCHEMA_FILE}" in names
    assert "flarestream/deploy/pom.xml" in names
    assert "flarestream/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_installed_wheel_imports_from_site_packages_and_round_trips_a_record(
    venv: Path, tmp_path: Path
) -> None:
    done = _run([str(venv / "bin" / "python"), "-c", _CHECK, SCHEMA_FILE], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    assert Path(result["prefix"]).resolve() == venv.resolve()
    for name, file in result["files"].items():
        path = Path(file).resolve()
        assert path.is_relative_to(venv.resolve()), f"{name} imported from {path}"
        assert "site-packages" in path.parts, f"{name} imported from {path}"
        assert not path.is_relative_to(REPO), f"{name} imported from the repository"
    assert result["schema"] is True
    assert result["pom"] is True
    assert result["roundtrip"] is True
    assert result["decoded"] == [
        "loss",
        "SCALARS",
        {"train": 0.5, "val": 2},
        3,
        "a/b.txt",
        {"walltime": 1.5},
    ]


@pytest.mark.parametrize("argv", [["--help"], ["broker", "--help"]], ids=["top", "broker"])
def test_installed_command_answers_help(venv: Path, tmp_path: Path, argv: list[str]) -> None:
    done = _run([str(venv / "bin" / "flarestream"), *argv], tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage: flarestream")
    if argv[0] == "broker":
        assert "start" in done.stdout and "stop" in done.stdout
