"""The option table: the command line, the TOML file, the README and the example agree with it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from ftpsproxy.ops.tap import Options, usage_error_line
from ftpsproxy.settings.backends import TABLE_KEYS
from ftpsproxy.settings.config import build_config, load_toml
from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.options import FILE_OPTIONS, OPTIONS, RELOADABLE, Config, as_written
from ftpsproxy.settings.values import (
    BackendDataMode,
    ClientCertificates,
    LogFormat,
    PortRange,
    TLSVersion,
)

REPO = Path(__file__).resolve().parent.parent
BASE = {"backend": "ftp://127.0.0.1:2100", "listen": ["tcp:2121"]}


def _readme_table_options() -> list[str]:
    """The ``--names`` in the first column of the README's ``| option | meaning |`` table."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("| option | meaning |")
    names: list[str] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names += re.findall(r"`(?:--)?([a-z][a-z0-9-]*)", line.split(" | ")[0])
    return names


def test_readme_option_table_lists_every_option_once_and_no_other() -> None:
    names = _readme_table_options()
    assert sorted(names) == sorted(option.name for option in OPTIONS)


def test_example_config_file_shows_every_key() -> None:
    text = (REPO / "deploy" / "ftpsproxy.toml").read_text()
    top, tables = text.split("# [[backends]]\n", 1)
    keys = set(re.findall(r"^#? ?([a-z0-9-]+) = ", top, re.MULTILINE))
    assert keys == set(FILE_OPTIONS) - {"backends"}
    table_keys = set(re.findall(r"^# ([a-z0-9-]+) = ", tables, re.MULTILINE))
    assert table_keys == set(TABLE_KEYS)


def test_example_pool_tables_load() -> None:
    text = (REPO / "deploy" / "ftpsproxy.toml").read_text()
    top, tables = text.split("# [[backends]]\n", 1)
    pool = "[[backends]]\n" + tables.replace("# [[backends]]", "[[backends]]")
    uncommented = re.sub(r"^# ?([a-z-]+ = )", r"\1", pool, flags=re.MULTILINE)
    values = tomllib.loads(top.replace('backend = "ftp://127.0.0.1:2100"\n', "") + uncommented)
    names = [backend.name for backend in build_config(values, {}).pool]
    assert names == ["ftp1", "ftp2"]


def test_every_config_field_is_an_option_with_its_default() -> None:
    config = build_config(BASE, {})
    for option in OPTIONS:
        if option.in_file and option.name not in BASE:
            assert getattr(config, option.field) == option.default, option.name
    assert {option.field for option in OPTIONS if option.in_file} == set(
        Config.__dataclass_fields__
    )


def test_sighup_may_change_limits_timeouts_and_tls_files_only() -> None:
    assert {"max_sessions", "idle_timeout", "certificate", "client_certificate"} <= RELOADABLE
    assert not {"listen", "backend", "passive_ports", "workers", "metrics"} & RELOADABLE


def test_help_shows_defaults_and_choices_from_the_table() -> None:
    docs = Options().docs
    assert docs["idle-timeout"] == "Seconds without a command, outside transfers (default: 900)."
    assert docs["passive-ports"].endswith("(default: 30000-30099).")
    assert docs["login-failure-delay"].endswith("(default: 1).")
    assert docs["client-certificate"].endswith("(none, optional or required; default: none).")
    assert docs["backend-tls-max-version"].endswith("(1.2 or 1.3).")
    assert docs["require-tls"].endswith("PROT P.")  # a flag: no default shown
    assert "repeatable" in docs["listen"] and "repeatable" in docs["listen-implicit"]
    assert set(docs) >= {option.name for option in OPTIONS if option.kind.command_line}
    assert "backends" not in docs  # tables: only the file can say them


def test_command_line_gives_flags_lists_and_choices() -> None:
    options = Options()
    options.parseOptions(
        [
            *("--listen", "tcp:2121", "--listen", "tcp:2122", "-b", "ftp://127.0.0.1:2100"),
            *("--backend-data-mode", "active", "--log-format", "json", "--idle-timeout", "30"),
            *("--certificate", "c.pem", "--private-key", "k.pem", "--require-tls"),
            *("--client-ca", "ca.pem", "--client-certificate", "required"),
        ]
    )
    config = options.config
    assert config.listen == ("tcp:2121", "tcp:2122")
    assert config.backend_data_mode is BackendDataMode.ACTIVE
    assert config.log_format is LogFormat.JSON
    assert config.client_certificate is ClientCertificates.REQUIRED
    assert config.require_tls is True and config.backend_insecure is False
    assert config.idle_timeout == 30.0
    assert config.tls_minimum_version is TLSVersion.V1_2


def test_bad_choice_on_the_command_line_is_one_line_naming_the_option() -> None:
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(["--listen", "tcp:2121", "-b", "ftp://h", "--data-path", "kernel"])
    assert raised.value.code == "ftpsproxy: data-path: 'kernel' is not one of splice, copy"


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (
            "option --idle-timout not recognized",
            "--idle-timout: unknown option (did you mean '--idle-timeout'?)",
        ),
        ("option --lsten not recognized", "--lsten: unknown option (did you mean '--listen'?)"),
        ("option --zzzzzz not recognized", "--zzzzzz: unknown option"),
        ("option --backend requires argument", "--backend: needs a value"),
        (
            "option --require-tls must not have an argument",
            "--require-tls: is a flag and takes no value",
        ),
        ("backend: required", "backend: required"),
    ],
)
def test_getopts_words_become_the_operators(message: str, line: str) -> None:
    assert usage_error_line(message) == line


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('idle-timeout = "900"', "idle-timeout: expected a number of seconds, got '900'"),
        ('listen = "tcp:2121"', "listen: expected a list of endpoint strings, got 'tcp:2121'"),
        ("listen = [2121]", "listen: [2121] is not a list of endpoint strings"),
        ("max-sessions = 10.5", "max-sessions: expected a whole number, got 10.5"),
        ("max-sessions = true", "max-sessions: expected a whole number, got True"),
        ("workers = 0", "workers: 0 must be a whole number >= 1"),
        ('require-tls = "yes"', "require-tls: expected true or false, got 'yes'"),
        ("passive-ports = 30000", "passive-ports: expected a range string MIN-MAX, got 30000"),
        ('log-format = "xml"', "log-format: 'xml' is not one of text, json"),
        ("backend-tls-max-version = 1.2", "backend-tls-max-version: expected one of 1.2, 1.3"),
        ("metrics = 9102", "metrics: expected an endpoint string, got 9102"),
        ("login-failure-delay = 61", "login-failure-delay: 61 must be between 0 and 60 seconds"),
    ],
)
def test_file_values_of_the_wrong_type_are_one_line_errors_naming_the_key(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(f"{line}\n")
    values = {**BASE, **load_toml(path)}
    with pytest.raises(ConfigError) as raised:
        build_config(values, {})
    text = str(raised.value)
    assert text.startswith(message) and "\n" not in text


def test_command_line_text_is_parsed_by_the_same_rules_as_the_file() -> None:
    from_text = build_config(BASE, {"idle-timeout": "30", "max-sessions": "7", "workers": "1"})
    from_file = build_config({**BASE, "idle-timeout": 30, "max-sessions": 7, "workers": 1}, {})
    assert from_text == from_file
    with pytest.raises(ConfigError, match=r"^max-sessions: '7.5' is not a whole number$"):
        build_config(BASE, {"max-sessions": "7.5"})


def test_settings_read_back_as_an_operator_writes_them() -> None:
    """SIGHUP's log lines name options and values as written, not Python fields and reprs."""
    assert as_written("idle_timeout", 900.0) == ("idle-timeout", "900")
    assert as_written("passive_ports", PortRange(45100, 45139)) == ("passive-ports", "45100-45139")
    assert as_written("log_format", LogFormat.JSON) == ("log-format", "json")
    assert as_written("xferlog", None) == ("xferlog", "(unset)")
    assert as_written("listen", ("tcp:21", "tcp6:21")) == ("listen", "tcp:21, tcp6:21")
