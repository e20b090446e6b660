"""Small operating-system helpers of the local broker: ports and processes (POSIX)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

from flarestream import settings

HOST = settings.LOCAL_BROKER_HOST


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on at ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something listens on, or holds, ``host:port``.

    Sockets merely lingering in TIME_WAIT (e.g. of a broker just stopped) do not
    count: the JVM binds with SO_REUSEADDR, and so does this check.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def pid_alive(pid: int, *cmdline_parts: str) -> bool:
    """True when process ``pid`` exists, is not a zombie and (where /proc exists) its
    command line contains every string of ``cmdline_parts`` as a whole argument, so
    a recycled pid of an unrelated program does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs: trust the signal check
    try:
        if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        argv = proc.joinpath("cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return all(part.encode() in argv for part in cmdline_parts)


def send_signal(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid``; a process that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
