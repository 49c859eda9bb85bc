"""The one wrapper of the tests' child processes: started with a log, stopped only by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

#: The repository root: ``python -m tests.support...`` and the twistd plugin need it.
REPO_ROOT = Path(__file__).resolve().parents[2]


def env_with_repo_path(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment with the repository root first on PYTHONPATH."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + old if old else "")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def terminate(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM our child by PID, wait ``grace`` seconds, then SIGKILL; return its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


class ManagedProcess:
    """A server the tests start (the proxy, pyftpdlib, vsftpd...), its output in a file.

    Subclasses build the command and say when the process is ready (``start``); this
    class launches it, answers the common questions (``pid``, ``is_running``,
    ``log_text``) and stops it by PID: SIGTERM, SIGKILL after ``stop_grace`` seconds.
    Usable as a context manager (``with ... as process``: started, then stopped).
    """

    #: What the process is, in messages ("proxy", "vsftpd"...).
    name = "process"
    #: Seconds between SIGTERM and SIGKILL in ``stop``.
    stop_grace = 10.0

    def __init__(self, output_path: Path) -> None:
        #: The child's stdout and stderr (stderr only with ``pipe_stdout``).
        self.output_path = Path(output_path)
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _launch(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        pipe_stdout: bool = False,
        new_session: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start *command* with its output appended to ``output_path``.

        With *pipe_stdout* the child's stdout is a pipe the subclass reads (a READY
        line) and only stderr goes to the file; *new_session* puts it in a session of
        its own (servers that fork per connection).
        """
        if self.is_running():
            raise RuntimeError(f"{self.name} already started")
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        self._output = open(self.output_path, "ab")  # closed in stop()
        try:
            self._proc = subprocess.Popen(
                list(command),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_stdout else self._output,
                stderr=self._output if pipe_stdout else subprocess.STDOUT,
                start_new_session=new_session,
            )
        except BaseException:
            self._close_output()
            raise
        return self._proc

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM by PID, SIGKILL after *grace* (``stop_grace``) seconds.

        Returns the exit code, None if never started; stopping twice is harmless.
        """
        proc = self._proc
        if proc is None:
            return None
        code = terminate(proc, self.stop_grace if grace is None else grace)
        if proc.stdout is not None:
            proc.stdout.close()
        self._close_output()
        return code

    def _close_output(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- facts ---------------------------------------------------------------------

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self._proc

    @property
    def pid(self) -> int:
        return self._require_proc().pid

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited, else None."""
        return self._require_proc().poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """What the process wrote so far (subclasses add their own log files)."""
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
