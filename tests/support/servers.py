"""Real Debian FTP servers (vsftpd, ProFTPD, Pure-FTPd) as test backends on loopback.

Each launcher writes a scratch configuration under its own work directory, starts the
server in the foreground on a free 127.0.0.1 port with its own passive range, and stops
it by PID (SIGTERM, then SIGKILL after a grace period), together with the session
processes it forked. They share one shape with :class:`tests.support.backend.PyftpdBackend`:
context manager, ``start()``, ``stop()``, ``host``, ``port``, ``url``, ``root``, ``user``,
``password``, ``path(name)``, ``log_text()``.

Where the servers come from (``tests/run.sh`` installs them as root):

- ProFTPD 1.3.8 with mod_tls: installed with apt (``/usr/sbin/proftpd``).
- vsftpd 3.0.3 and Pure-FTPd 1.0.50 conflict with it (``Conflicts: ftp-server``), so they
  are unpacked from their .debs into ``.servers/`` at the repository root
  (``FTPSPROXY_SERVERS_DIR`` overrides), their libraries installed with apt.

All of them need root: vsftpd and ProFTPD log in a local Unix user (``ftptest``, created
on first use, see :func:`ensure_test_user`) and drop to it; Pure-FTPd logs in a virtual
user of the same name mapped to that Unix user. The served root belongs to that user.

Quirks worth knowing (details in each class):

- vsftpd and ProFTPD refuse a TLS data connection that does not resume the control
  connection's TLS session (``require_reuse=True``, their default); Pure-FTPd never asks.
- vsftpd 3.0.3 has no TLS 1.2/1.3 switches; ``tls13=False`` caps OpenSSL through a scratch
  ``OPENSSL_CONF`` for vsftpd and Pure-FTPd, and with ``TLSProtocol`` for ProFTPD.
- vsftpd fails an upload (``426 Failure reading network stream.``) whose TLS data
  connection ends without close_notify (``strict_ssl_read_eof=YES``); ProFTPD and
  Pure-FTPd answer 226. Refused data without reuse: vsftpd ``522`` and ends the session,
  ProFTPD ``425`` and the session goes on.
- Pure-FTPd logs only to syslog, and these machines have no ``/dev/log``: its
  ``log_text()`` has its stderr and its transfer log, nothing per command.
- The served root must stay reachable by the unprivileged user (vsftpd changes into it
  as that user; a 0700 ancestor gives ``500 OOPS`` in cleartext, which TLS clients see as
  garbage): roots live under ``/tmp/ftpsproxy-served-*``, not in pytest's 0700 tree.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import ClassVar, Final, Protocol, Self

from tests.support._proc import REPO_ROOT, ManagedProcess
from tests.support.certs import Pki
from tests.support.ci import unavailable
from tests.support.clients import make_random_file
from tests.support.ports import free_port, free_port_range
from tests.support.waiting import wait_until

#: Every kind of backend the interop tests can parametrize over.
SERVER_KINDS: Final[tuple[str, ...]] = ("pyftpdlib", "vsftpd", "proftpd", "pure-ftpd")
#: The real servers of this module.
REAL_SERVER_KINDS: Final[tuple[str, ...]] = ("vsftpd", "proftpd", "pure-ftpd")

#: The login every backend kind accepts (pyftpdlib too, when the fixtures start it).
TEST_USER: Final = "ftptest"
TEST_PASSWORD: Final = "s3cret-test-pw"
#: Home of the local Unix test user; the servers serve their own scratch roots instead.
TEST_HOME: Final = Path("/var/lib/ftpsproxy-tests/ftptest")
_TEST_USER_GECOS: Final = "ftpsproxy FTP test user"

SERVERS_DIR: Final = Path(os.environ.get("FTPSPROXY_SERVERS_DIR") or REPO_ROOT / ".servers")

READY_TIMEOUT: Final = 10.0
STOP_GRACE: Final = 5.0
START_ATTEMPTS: Final = 3
_POLL: Final = 0.02
_TCP_LISTEN: Final = "0A"


class ServerUnavailable(RuntimeError):
    """This machine cannot run the server (binary missing, not root)."""


class ServerError(RuntimeError):
    """The server did not start; the message carries its log."""


class FtpServer(Protocol):
    """What tests may rely on from any backend kind (pyftpdlib's launcher included)."""

    host: str
    port: int
    root: Path
    user: str
    password: str

    @property
    def url(self) -> str: ...

    def path(self, name: str) -> Path: ...

    def log_text(self) -> str: ...

    def stop(self) -> int | None: ...


# -- binaries and the test user -------------------------------------------------------


def _executable(*candidates: Path | str | None) -> Path | None:
    for candidate in candidates:
        if candidate is None:
            continue
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def vsftpd_binary() -> Path | None:
    return _executable(SERVERS_DIR / "vsftpd/usr/sbin/vsftpd", _which("vsftpd"))


def proftpd_binary() -> Path | None:
    return _executable("/usr/sbin/proftpd", _which("proftpd"))


def pure_ftpd_binary() -> Path | None:
    return _executable(SERVERS_DIR / "pure-ftpd/usr/sbin/pure-ftpd", _which("pure-ftpd"))


def pure_pw_binary() -> Path | None:
    return _executable(SERVERS_DIR / "pure-ftpd/usr/bin/pure-pw", _which("pure-pw"))


def unavailable_reason(kind: str) -> str | None:
    """Why ``kind`` cannot run here, or None when it can."""
    if kind == "pyftpdlib":
        return None
    if kind not in REAL_SERVER_KINDS:
        raise ValueError(f"unknown server kind {kind!r}; expected one of {SERVER_KINDS}")
    if os.geteuid() != 0:
        return f"{kind} tests need root (local test user, privilege separation)"
    missing: list[str] = []
    if kind == "vsftpd":
        if vsftpd_binary() is None:
            missing.append(f"vsftpd (looked in {SERVERS_DIR}/vsftpd and PATH)")
        if not Path("/etc/pam.d/vsftpd").is_file():
            missing.append("/etc/pam.d/vsftpd")
    elif kind == "proftpd":
        if proftpd_binary() is None:
            missing.append("proftpd (apt: proftpd-core)")
        if not Path(ProFtpd.MODULE_PATH, "mod_tls.so").is_file():
            missing.append(f"{ProFtpd.MODULE_PATH}/mod_tls.so (apt: proftpd-mod-crypto)")
    else:
        if pure_ftpd_binary() is None or pure_pw_binary() is None:
            missing.append(f"pure-ftpd/pure-pw (looked in {SERVERS_DIR}/pure-ftpd and PATH)")
        if shutil.which("openssl") is None:
            missing.append("openssl (hashes the virtual user's password)")
    if missing:
        return f"{kind} not installed (run tests/run.sh as root): missing " + ", ".join(missing)
    return None


def require_server(kind: str) -> None:
    """Skip the test when ``kind`` cannot run here; fail instead under CI=true."""
    reason = unavailable_reason(kind)
    if reason is not None:
        unavailable(reason)


@functools.cache
def ensure_test_user(name: str = TEST_USER, password: str = TEST_PASSWORD) -> pwd.struct_passwd:
    """The local Unix test user, created once if missing; its password set once per process.

    Refuses an existing account of that name that the tests did not create. Shell
    ``/bin/sh`` (PAM's ``pam_shells`` wants one listed in /etc/shells), home
    :data:`TEST_HOME`. Needs root.
    """
    if os.geteuid() != 0:
        raise ServerUnavailable("creating the local FTP test user needs root")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        TEST_HOME.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                "useradd",
                "--home-dir",
                str(TEST_HOME),
                "--no-create-home",
                "--shell",
                "/bin/sh",
                "--user-group",
                "--comment",
                _TEST_USER_GECOS,
                name,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        # 9: created meanwhile by a concurrent test run.
        if result.returncode not in (0, 9):
            raise ServerError(f"useradd {name} failed: {result.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    if entry.pw_gecos != _TEST_USER_GECOS:
        # Never take over (and re-password) an account these tests did not create.
        raise ServerError(f"user {name} exists but was not created by the tests; remove it")
    shells = Path("/etc/shells").read_text().split() if Path("/etc/shells").exists() else []
    if entry.pw_shell not in shells:
        raise ServerError(f"test user {name} has shell {entry.pw_shell!r}, not in /etc/shells")
    home = Path(entry.pw_dir)
    if home == TEST_HOME:
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        home.chmod(0o755)
    subprocess.run(
        ["chpasswd"],
        input=f"{name}:{password}\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return entry


_served_base: Path | None = None


def _new_served_root(kind: str) -> Path:
    """A fresh directory to serve, outside pytest's temporary tree.

    vsftpd changes into the root as the unprivileged user, so every ancestor must stay
    searchable by it; pytest resets its ``/tmp/pytest-of-USER`` to 0700 whenever another
    pytest session starts, which would break a running server's logins. So roots live in
    one ``/tmp/ftpsproxy-served-*`` folder per process (0711), removed at exit.
    """
    global _served_base
    if _served_base is None or not _served_base.is_dir():
        _served_base = Path(tempfile.mkdtemp(prefix="ftpsproxy-served-"))
        _served_base.chmod(0o711)
        atexit.register(shutil.rmtree, _served_base, True)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=_served_base))


def _make_traversable(path: Path) -> None:
    """Let the dropped-privilege test user reach ``path``: add o+x to ancestors lacking it.

    pytest's temporary directories are 0700; only the search bit is added, never read.
    """
    for parent in [path, *path.parents]:
        if parent == Path(parent.anchor):
            break
        with contextlib.suppress(OSError):
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _listening(port: int) -> bool:
    """Whether some IPv4 socket listens on 127.0.0.1/0.0.0.0:``port`` (no connection made)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return _connects(port)
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[1] in wanted and fields[3] == _TCP_LISTEN:
            return True
    return False


def _connects(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _process_start_time(pid: int) -> str | None:
    """Start time of a live (not zombie) process, to recognise it; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name: state is field 3, starttime field 22.
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError):
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every live process below ``pid`` (session processes)."""
    result: list[tuple[int, str]] = []
    todo = [pid]
    while todo and len(result) < 1000:
        for child in _children(todo.pop()):
            started = _process_start_time(child)
            if started is not None:
                result.append((child, started))
                todo.append(child)
    return result


def _openssl_conf(path: Path, *, tls13: bool) -> Path:
    """An OpenSSL config whose system defaults cap TLS at 1.2 (or allow 1.3)."""
    path.write_text(
        textwrap.dedent(
            f"""\
            # Written by tests/support/servers.py: read by the server's OpenSSL at start.
            openssl_conf = ftpsproxy_tests_init

            [ftpsproxy_tests_init]
            ssl_conf = ftpsproxy_tests_ssl

            [ftpsproxy_tests_ssl]
            system_default = ftpsproxy_tests_tls

            [ftpsproxy_tests_tls]
            MinProtocol = TLSv1.2
            MaxProtocol = {"TLSv1.3" if tls13 else "TLSv1.2"}
            CipherString = DEFAULT:@SECLEVEL=2
            """
        )
    )
    return path


# -- the launchers ----------------------------------------------------------------------


class RealFtpServer(ManagedProcess):
    """Common life cycle of the real servers; subclasses write configs and argv.

    ``workdir`` gets the configuration, logs and pid files. The served ``root`` (owned by
    the test user) is a fresh folder under ``/tmp/ftpsproxy-served-*`` unless given, with
    a ``workdir/root`` symlink to it; see :func:`_new_served_root` for why not in workdir.
    """

    kind: ClassVar[str] = ""
    supports_implicit: ClassVar[bool] = True
    supports_reuse_requirement: ClassVar[bool] = True
    #: Size of the passive port range chosen when none is given.
    passive_port_count: ClassVar[int] = 32
    stop_grace = STOP_GRACE

    def __init__(
        self,
        workdir: Path,
        *,
        pki: Pki | None = None,
        tls: bool = True,
        implicit: bool = False,
        require_reuse: bool = True,
        tls13: bool = True,
        passive_ports: tuple[int, int] | None = None,
        port: int = 0,
        root: Path | None = None,
        user: str = TEST_USER,
        password: str = TEST_PASSWORD,
        banner: str | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        if (tls or implicit) and pki is None:
            raise ValueError(f"{self.kind}: TLS needs a pki (certificate and key)")
        if implicit and not tls:
            raise ValueError(f"{self.kind}: implicit FTPS needs tls=True")
        if implicit and not self.supports_implicit:
            raise ValueError(f"{self.kind} has no implicit FTPS")
        if require_reuse and tls and not self.supports_reuse_requirement:
            raise ValueError(f"{self.kind} cannot require TLS session reuse")
        self.workdir = Path(workdir).resolve()
        self.root = Path(root).resolve() if root is not None else _new_served_root(self.kind)
        self.pki = pki
        self.tls = tls
        self.implicit = implicit
        self.require_reuse = require_reuse and tls
        self.tls13 = tls13
        self.user = user
        self.password = password
        self.banner = banner or f"ftpsproxy test {self.kind}"
        self.ready_timeout = ready_timeout
        self.host = "127.0.0.1"
        self._fixed_port = port
        self.port = port
        self._fixed_passive = passive_ports
        self.passive_ports: tuple[int, int] = passive_ports or (0, 0)
        super().__init__(self.workdir / f"{self.kind}.out")  # its stdout and stderr
        self.name = self.kind
        self._uid = -1
        self._gid = -1

    # -- subclass hooks ----------------------------------------------------------------

    def _prepare(self) -> None:
        """One-time setup before the first start attempt (users, databases)."""

    def _write_config(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        """The argv that starts the server in the foreground."""
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSSL_")}
        env["LC_ALL"] = "C"
        return env

    def log_paths(self) -> list[Path]:
        """The server's own log files (``log_text`` adds its stdout/stderr)."""
        return []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait (bounded) until it listens.

        A port taken between choosing and binding it is retried on a new port, unless
        the port was fixed (``port=``) or this is a :meth:`restart`.
        """
        return self._start(keep_ports=False)

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port and passive range."""
        self.stop()
        return self._start(keep_ports=True)

    def _start(self, *, keep_ports: bool) -> Self:
        if self.is_running():
            raise RuntimeError(f"{self.kind} already started")
        self._proc = None
        reason = unavailable_reason(self.kind)
        if reason is not None:
            raise ServerUnavailable(reason)
        if self._uses_unix_user():
            entry = ensure_test_user(self.user, self.password)
        else:
            entry = ensure_test_user()
        self._uid, self._gid = entry.pw_uid, entry.pw_gid
        self.workdir.mkdir(parents=True, exist_ok=True)
        # ProFTPD refuses logs in group/world-writable directories.
        self.workdir.chmod(0o755)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chown(self.root, self._uid, self._gid)
        self.root.chmod(0o755)
        _make_traversable(self.root)
        link = self.workdir / "root"
        if link != self.root and not link.exists() and not link.is_symlink():
            link.symlink_to(self.root)  # for whoever browses the work directory
        self._prepare()
        fixed = keep_ports or self._fixed_port != 0
        for attempt in range(1, START_ATTEMPTS + 1):
            if not keep_ports:
                self.port = self._fixed_port or free_port(self.host)
                self.passive_ports = self._fixed_passive or free_port_range(
                    self.passive_port_count, self.host
                )
            self._write_config()
            self._spawn()
            try:
                self._wait_ready()
            except ServerError:
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                # An early exit may be a port taken since free_port(): try a new one.
                if exited and not fixed and attempt < START_ATTEMPTS:
                    continue
                raise
            except BaseException:
                self.stop()
                raise
            return self
        raise AssertionError("unreachable")

    def _uses_unix_user(self) -> bool:
        return True

    def _spawn(self) -> None:
        with open(self.output_path, "ab") as out:
            out.write(f"--- start: {' '.join(self.command())}\n".encode())
        self._launch(self.command(), cwd=self.workdir, env=self._environment(), new_session=True)

    def _wait_ready(self) -> None:
        proc = self._require_proc()

        def listening() -> bool:
            code = proc.poll()
            if code is not None:
                raise ServerError(
                    f"{self.kind} exited with {code} before listening on port {self.port}:\n"
                    f"{self.log_text()}"
                )
            return _listening(self.port)

        def late() -> ServerError:
            return ServerError(
                f"{self.kind} not listening on port {self.port} after "
                f"{self.ready_timeout}s:\n{self.log_text()}"
            )

        wait_until(listening, self.ready_timeout, interval=_POLL, error=late)

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM by PID (then SIGKILL), and the same for the sessions it forked.

        Returns the server's exit code (None if never started). Idempotent.
        """
        proc = self._proc
        if proc is None:
            return None
        sessions = _descendants(proc.pid) if proc.poll() is None else []
        for pid, started in sessions:
            if _process_start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        code = super().stop(grace)
        deadline = time.monotonic() + self.stop_grace
        for pid, started in sessions:
            while _process_start_time(pid) == started and time.monotonic() < deadline:
                time.sleep(_POLL)
            if _process_start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return code

    @property
    def url(self) -> str:
        """``ftp://127.0.0.1:PORT``, ``ftps://`` when implicit."""
        return f"{'ftps' if self.implicit else 'ftp'}://{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def ca_cert(self) -> Path:
        """The CA that signed the server certificate (what clients should trust)."""
        if self.pki is None:
            raise RuntimeError(f"{self.kind} runs without TLS")
        return self.pki.ca_cert

    def path(self, name: str) -> Path:
        """A file in the served root (what the server really stored)."""
        return self.root / name

    def make_file(self, name: str, size: int) -> str:
        """Put ``size`` random bytes at ``path(name)``, owned by the test user; sha256 hex."""
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = make_random_file(target, size)
        if self._uid >= 0:
            os.chown(target, self._uid, self._gid)
        return digest

    def log_text(self) -> str:
        parts: list[str] = []
        for path in [self.output_path, *self.log_paths()]:
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts)

    def _cert_paths(self) -> tuple[Path, Path]:
        assert self.pki is not None
        return self.pki.server_cert, self.pki.server_key


class Vsftpd(RealFtpServer):
    """vsftpd 3.0.3, standalone in the foreground (``listen=YES``, ``background=NO``).

    - ``seccomp_sandbox=NO``: with the sandbox every session dies of SIGSYS here.
    - PAM only (service ``vsftpd``, ``/etc/pam.d/vsftpd`` from the package): local user,
      chrooted to the root like the other servers (``allow_writeable_chroot=YES``), so
      ``PWD`` is ``/`` everywhere.
    - TLS: ``force_local_logins_ssl``/``force_local_data_ssl``, ``require_ssl_reuse``,
      ``strict_ssl_read_eof=YES`` (an upload must end with close_notify).
      ``ssl_ciphers`` defaults to DES-CBC3-SHA in 3.0.3, which OpenSSL 3 refuses, so
      TLS 1.2 needs it set (``HIGH``). There are no TLS 1.2/1.3 switches in this version
      (only ``ssl_sslv2``/``ssl_sslv3``/``ssl_tlsv1``): TLS 1.3 is whatever OpenSSL
      negotiates, and ``tls13=False`` caps it through ``OPENSSL_CONF``.
    """

    kind = "vsftpd"

    @property
    def config_path(self) -> Path:
        return self.workdir / "vsftpd.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "vsftpd.log"

    def log_paths(self) -> list[Path]:
        return [self.log_path]

    def command(self) -> list[str]:
        binary = vsftpd_binary()
        if binary is None:
            raise ServerUnavailable("vsftpd not installed")
        return [str(binary), str(self.config_path)]

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        env["OPENSSL_CONF"] = str(_openssl_conf(self.workdir / "openssl.cnf", tls13=self.tls13))
        return env

    def _write_config(self) -> None:
        empty = self.workdir / "empty"
        empty.mkdir(exist_ok=True)
        empty.chmod(0o755)
        yes_no = {True: "YES", False: "NO"}
        options: dict[str, str | int] = {
            "listen": "YES",
            "listen_ipv6": "NO",
            "listen_address": self.host,
            "listen_port": self.port,
            "background": "NO",
            "seccomp_sandbox": "NO",
            "secure_chroot_dir": str(empty),
            "pam_service_name": "vsftpd",
            "anonymous_enable": "NO",
            "local_enable": "YES",
            "write_enable": "YES",
            "local_umask": "022",
            "local_root": str(self.root),
            "chroot_local_user": "YES",
            "allow_writeable_chroot": "YES",
            "userlist_enable": "NO",
            "tcp_wrappers": "NO",
            "connect_from_port_20": "NO",
            "pasv_enable": "YES",
            "pasv_address": self.host,
            "pasv_min_port": self.passive_ports[0],
            "pasv_max_port": self.passive_ports[1],
            "port_enable": "YES",
            "ftpd_banner": self.banner,
            "idle_session_timeout": 120,
            "data_connection_timeout": 60,
            "syslog_enable": "NO",
            "vsftpd_log_file": str(self.log_path),
            "xferlog_enable": "YES",
            "xferlog_std_format": "NO",
            "log_ftp_protocol": "YES",
            "ssl_enable": yes_no[self.tls],
        }
        if self.tls:
            cert, key = self._cert_paths()
            options.update(
                {
                    "rsa_cert_file": str(cert),
                    "rsa_private_key_file": str(key),
                    "ssl_ciphers": "HIGH",
                    "ssl_sslv2": "NO",
                    "ssl_sslv3": "NO",
                    "ssl_tlsv1": "YES",
                    "force_local_logins_ssl": "YES",
                    "force_local_data_ssl": "YES",
                    "require_ssl_reuse": yes_no[self.require_reuse],
                    "strict_ssl_read_eof": "YES",
                    "implicit_ssl": yes_no[self.implicit],
                    "debug_ssl": "YES",
                }
            )
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in options.items()))
        self.config_path.chmod(0o600)


class ProFtpd(RealFtpServer):
    """ProFTPD 1.3.8 with mod_tls: ``proftpd -n -q -c CONF`` (foreground, standalone).

    - Loads only ``mod_tls.so`` from ``/usr/lib/proftpd`` (the rest is compiled in).
    - Local Unix user through PAM/``/etc/shadow``, chrooted (``DefaultRoot``) to the root.
    - ``TLSRequired on`` with TLS; session reuse on data connections is required by
      mod_tls's default (``require_reuse=False`` adds ``NoSessionReuseRequired``).
    - ``DelayEngine off``; the 1.3.8 daemon still pauses ~0.4 s after each session ends
      before it accepts the next: no session-rate figures from it.
    """

    kind = "proftpd"
    MODULE_PATH: ClassVar[str] = "/usr/lib/proftpd"

    @property
    def config_path(self) -> Path:
        return self.workdir / "proftpd.conf"

    def log_paths(self) -> list[Path]:
        return [self.workdir / name for name in ("system.log", "tls.log", "commands.log")]

    def command(self) -> list[str]:
        binary = proftpd_binary()
        if binary is None:
            raise ServerUnavailable("proftpd not installed")
        return [str(binary), "-n", "-q", "-c", str(self.config_path)]

    def config_text(self) -> str:
        w = self.workdir
        lines = [
            "# Written by tests/support/servers.py",
            'ServerName "ftpsproxy test proftpd"',
            "ServerType standalone",
            f'ServerIdent on "{self.banner}"',
            "UseIPv6 off",
            f"DefaultAddress {self.host}",
            "SocketBindTight on",
            f"Port {self.port}",
            f"PassivePorts {self.passive_ports[0]} {self.passive_ports[1]}",
            f"PidFile {w / 'proftpd.pid'}",
            f"ScoreboardFile {w / 'proftpd.scoreboard'}",
            "User nobody",
            "Group nogroup",
            "Umask 022",
            "MaxInstances 50",
            "DelayEngine off",
            "WtmpLog off",
            "UseReverseDNS off",
            "RequireValidShell off",
            "TimeoutIdle 120",
            "TimeoutNoTransfer 120",
            f"DefaultRoot {self.root}",
            "AllowOverwrite on",
            "AllowStoreRestart on",
            f"SystemLog {w / 'system.log'}",
            'LogFormat commands "%t %a %u %r => %s"',
            f"ExtendedLog {w / 'commands.log'} ALL commands",
            f"ModulePath {self.MODULE_PATH}",
        ]
        if self.tls:
            cert, key = self._cert_paths()
            options = []
            if self.implicit:
                options.append("UseImplicitSSL")
            if not self.require_reuse:
                options.append("NoSessionReuseRequired")
            lines += [
                "LoadModule mod_tls.c",
                "TLSEngine on",
                f"TLSLog {w / 'tls.log'}",
                f"TLSRSACertificateFile {cert}",
                f"TLSRSACertificateKeyFile {key}",
                f"TLSProtocol {'TLSv1.2 TLSv1.3' if self.tls13 else 'TLSv1.2'}",
                "TLSRequired on",
                "TLSVerifyClient off",
                "TLSRenegotiate none",
            ]
            if options:
                lines.append("TLSOptions " + " ".join(options))
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        self.config_path.write_text(self.config_text())
        self.config_path.chmod(0o600)


class PureFtpd(RealFtpServer):
    """Pure-FTPd 1.0.50 in the foreground, one virtual user in a PureDB file.

    - Command line only: ``-S 127.0.0.1,PORT -p MIN:MAX -P 127.0.0.1 -l puredb:FILE
      -E -H -A -Y 3 -2 combined.pem`` (``-Y 3``: TLS required on control and data).
    - No implicit FTPS, and no way to require TLS session reuse on data connections.
    - The virtual user is written to ``pureftpd.passwd`` with a SHA-512 crypt hash and
      compiled with ``pure-pw mkdb``: ``pure-pw useradd`` would hash with argon2, which
      costs ~2 s of CPU at creation and again at every login.
    - Logs go to syslog only (none here): ``log_text()`` has stderr and the transfer log.
    - It allows at most half as many clients as the passive range has ports; a cleartext
      USER under ``-Y 3`` gets 421. The greeting is ``220-<banner>`` then
      ``220 This is a private system - No anonymous login`` (``-F`` with the banner).
    """

    kind = "pure-ftpd"
    supports_implicit = False
    supports_reuse_requirement = False
    # Pure-FTPd caps its client count (-c) at half the passive range: 100 ports, 50 clients.
    passive_port_count = 100

    def __init__(
        self,
        workdir: Path,
        *,
        pki: Pki | None = None,
        tls: bool = True,
        implicit: bool = False,
        require_reuse: bool = False,
        tls13: bool = True,
        passive_ports: tuple[int, int] | None = None,
        port: int = 0,
        root: Path | None = None,
        user: str = TEST_USER,
        password: str = TEST_PASSWORD,
        banner: str | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        super().__init__(
            workdir,
            pki=pki,
            tls=tls,
            implicit=implicit,
            require_reuse=require_reuse,
            tls13=tls13,
            passive_ports=passive_ports,
            port=port,
            root=root,
            user=user,
            password=password,
            banner=banner,
            ready_timeout=ready_timeout,
        )

    def _uses_unix_user(self) -> bool:
        # The virtual user maps to the Unix test user's uid/gid; its own name and
        # password live only in the PureDB file.
        return False

    @property
    def passwd_path(self) -> Path:
        return self.workdir / "pureftpd.passwd"

    @property
    def puredb_path(self) -> Path:
        return self.workdir / "pureftpd.pdb"

    @property
    def banner_path(self) -> Path:
        return self.workdir / "banner.txt"

    @property
    def transfer_log_path(self) -> Path:
        return self.workdir / "transfers.log"

    def log_paths(self) -> list[Path]:
        return [self.transfer_log_path]

    def _prepare(self) -> None:
        pure_pw = pure_pw_binary()
        if pure_pw is None:
            raise ServerUnavailable("pure-pw not installed")
        hashed = _sha512_crypt(self.password)
        # account:hash:uid:gid:gecos:home(/./ = chroot there):13 empty limit fields
        self.passwd_path.write_text(
            f"{self.user}:{hashed}:{self._uid}:{self._gid}::{self.root}/./" + ":" * 12 + "\n"
        )
        self.passwd_path.chmod(0o600)
        result = subprocess.run(
            [str(pure_pw), "mkdb", str(self.puredb_path), "-f", str(self.passwd_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(f"pure-pw mkdb failed: {result.stdout}{result.stderr}")
        # The "fortune" replaces Pure-FTPd's usual multi-line greeting.
        self.banner_path.write_text(self.banner + "\n")
        if self.tls:
            cert, key = self._cert_paths()
            combined = self.workdir / "pure-ftpd.pem"
            combined.write_bytes(cert.read_bytes() + key.read_bytes())
            combined.chmod(0o600)

    def command(self) -> list[str]:
        binary = pure_ftpd_binary()
        if binary is None:
            raise ServerUnavailable("pure-ftpd not installed")
        cmd = [
            str(binary),
            "-S",
            f"{self.host},{self.port}",
            "-p",
            f"{self.passive_ports[0]}:{self.passive_ports[1]}",
            "-P",
            self.host,
            "-l",
            f"puredb:{self.puredb_path}",
            "-E",
            "-H",
            "-A",
            "-c",
            "50",
            "-C",
            "50",
            "-I",
            "2",
            "-O",
            f"clf:{self.transfer_log_path}",
            "-F",
            str(self.banner_path),
        ]
        if self.tls:
            cmd += ["-Y", "3", "-2", str(self.workdir / "pure-ftpd.pem")]
        return cmd

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        env["OPENSSL_CONF"] = str(_openssl_conf(self.workdir / "openssl.cnf", tls13=self.tls13))
        return env

    def _write_config(self) -> None:
        # Everything is on the command line; the user database is written in _prepare.
        pass


def _sha512_crypt(password: str) -> str:
    """A ``$6$`` crypt(3) hash (``openssl passwd -6``): fast to check, unlike argon2."""
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


#: Launcher class of each real server kind.
SERVER_CLASSES: Final[dict[str, type[RealFtpServer]]] = {
    "vsftpd": Vsftpd,
    "proftpd": ProFtpd,
    "pure-ftpd": PureFtpd,
}


def server_class(kind: str) -> type[RealFtpServer]:
    try:
        return SERVER_CLASSES[kind]
    except KeyError:
        raise ValueError(f"unknown real server kind {kind!r}: {REAL_SERVER_KINDS}") from None
