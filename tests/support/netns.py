"""Several hosts on one machine: network namespaces, veth links, and ways to act in them.

Processes run in a namespace through ``ip netns exec NAME`` (which execs: the PID we
hold is the server's own, so we stop it by PID). Test code that must act from inside a
namespace (a client connecting from the client "host") runs in threads that joined it
with ``setns(2)``, which on Linux moves only the calling thread: the test process itself
stays where it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tests.support.ci import require
from tests.support.proxy import socket_inodes

_CLONE_NEWNET = 0x40000000
_TCP_LISTEN = "0A"
IP_TIMEOUT = 10.0
T = TypeVar("T")


def require_netns() -> None:
    """Skip (fail under CI) unless we are root with ``ip netns`` at hand."""
    require(os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("ip") is not None, "iproute2's ip not found")
    probe = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    )
    require(probe.returncode == 0, f"ip netns does not work here: {probe.stderr.strip()}")


def ip(*args: str) -> None:
    """Run ``ip ARGS``; raise with its stderr on failure."""
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def enter(name: str) -> None:
    """Move the calling thread into namespace *name* (setns on /run/netns/NAME)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class Netns:
    """One namespace (one "host"), created by :meth:`create`, gone after :meth:`delete`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.created = False

    def create(self) -> None:
        ip("netns", "add", self.name)
        self.created = True
        ip("-n", self.name, "link", "set", "lo", "up")

    def delete(self) -> None:
        """Delete it (and so its veth ends); harmless if never created or already gone."""
        if self.created:
            with contextlib.suppress(RuntimeError):
                ip("netns", "delete", self.name)
            self.created = False

    def ip(self, *args: str) -> None:
        ip("-n", self.name, *args)

    def exec_prefix(self) -> list[str]:
        """Prefix of a command line that runs it inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def sysctl(self, key: str, value: str) -> None:
        done = subprocess.run(
            [*self.exec_prefix(), "sysctl", "-q", "-w", f"{key}={value}"],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"sysctl {key} in {self.name}: {done.stderr.strip()}")

    def executor(self, workers: int) -> ThreadPoolExecutor:
        """A thread pool whose threads all live in this namespace."""
        return ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=self.name,
            initializer=enter,
            initargs=(self.name,),
        )

    def call(self, function: Callable[[], T], timeout: float = 30.0) -> T:
        """Run *function* in a fresh thread inside this namespace; its result or exception."""
        with self.executor(1) as pool:
            return pool.submit(function).result(timeout)


def link(a: Netns, a_dev: str, b: Netns, b_dev: str) -> None:
    """A veth pair with one end in each namespace, created there directly, so no name is
    ever taken in the test machine's own namespace."""
    ip(
        "link",
        "add",
        a_dev,
        "netns",
        a.name,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name,
    )


def listening_ports(pid: int) -> set[int]:
    """TCP ports process *pid* listens on, read in *its* namespace (/proc/PID/net)."""
    mine = socket_inodes(pid)
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 10 and fields[3] == _TCP_LISTEN and fields[9] in mine:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def run_in(ns: Netns, command: Sequence[str], timeout: float = 30.0) -> str:
    """Run a short command inside *ns*; its stdout (raises on failure)."""
    done = subprocess.run(
        [*ns.exec_prefix(), *command], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} in {ns.name}: {done.stderr.strip()}")
    return done.stdout
