"""What the master of ``--workers N`` tells each worker: its number, configuration and sockets.

A worker reads the same file and command-line values as the master, validated the
same way, except for the options the master decides for each worker
(``MASTER_KEYS``): one process, its own slice of the passive range, and a private
metrics socket the master scrapes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftpsproxy.settings.config import Config, PortRange, build_config, load_toml

#: The environment variable that carries a worker's ``WorkerSpec`` (JSON).
SPEC_ENV = "FTPSPROXY_WORKER_SPEC"
#: Options the master decides for each worker, whatever the file or command line say.
#: (``instance`` too: the master has applied it, a worker's slice is of the instance's.)
MASTER_KEYS = frozenset({"workers", "passive-ports", "metrics", "instance"})
#: The first descriptor number of the inherited listening sockets in a worker.
FIRST_LISTENER_FD = 3


def worker_cli(cli: Mapping[str, Any], ports: PortRange, metrics: str | None) -> dict[str, Any]:
    """The command-line values one worker runs with: one process, its port slice, its metrics."""
    values = {key: value for key, value in cli.items() if key not in MASTER_KEYS}
    values["workers"] = 1
    values["passive-ports"] = f"{ports.low}-{ports.high}"
    if metrics is not None:
        values["metrics"] = metrics
    return values


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What the master tells a worker: its number, how to read its configuration, its sockets.

    The worker builds its ``Config`` with ``build_config`` from the same file and
    command-line values as the master (validated the same way), the master's keys
    replaced; it reads the file again on SIGHUP, as a single process does.
    """

    index: int
    config_file: str | None
    cli: dict[str, Any]
    listeners: tuple[tuple[str, str, int], ...]  # (option, endpoint description, fd)
    runtime_dir: str | None = None  # the master's private directory (metrics sockets)
    count: int = 1  # how many workers the master runs

    def session_ids(self) -> Iterator[int]:
        """This worker's session ids: index+1, index+1+count, …, so none is another's.

        The logs and the PROXY v2 unique id name a session by its id alone.  A worker
        restarted after a crash numbers from the start again (after its restart line).
        """
        return itertools.count(self.index + 1, self.count)

    def read_config(self) -> Config:
        file_values = load_toml(Path(self.config_file)) if self.config_file else {}
        kept = {key: value for key, value in file_values.items() if key not in MASTER_KEYS}
        return build_config(kept, self.cli)

    def to_json(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "config_file": self.config_file,
                "cli": self.cli,
                "listeners": [list(listener) for listener in self.listeners],
                "runtime_dir": self.runtime_dir,
                "count": self.count,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        return cls(
            index=int(data["index"]),
            config_file=data["config_file"],
            cli=dict(data["cli"]),
            listeners=tuple(
                (str(option), str(description), int(fd))
                for option, description, fd in data["listeners"]
            ),
            runtime_dir=data.get("runtime_dir"),
            count=int(data.get("count", 1)),
        )
