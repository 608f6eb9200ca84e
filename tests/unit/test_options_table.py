"""The option declarations: README's table, coverage of AgentConfig, environment vs flag,
and the converters."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from driftlog.cli import main as cli
from driftlog.cli import options
from driftlog.config import AgentConfig

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = "<!-- options:begin"
END = "<!-- options:end -->"


def readme_table() -> str:
    text = README.read_text()
    start = text.index("\n", text.index(BEGIN)) + 1
    return text[start : text.index(END)]


def parse(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_options(parser, environ or {})
    return parser.parse_args(argv)


def config(argv: list[str], environ: dict[str, str] | None = None) -> AgentConfig:
    return AgentConfig(**options.config_values(parse(argv, environ)))  # type: ignore[arg-type]


def test_readme_table_is_the_generated_one() -> None:
    assert readme_table() == options.markdown_table(), (
        "README.md's options table is stale: replace the lines between its options markers "
        "with the output of `.venv/bin/driftlog options --markdown`"
    )


def test_options_command_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "driftlog.cli.main", "options", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == options.markdown_table()


def test_every_config_field_is_set_by_exactly_one_option_or_listed() -> None:
    setters: dict[str, list[str]] = {}
    for spec in options.OPTIONS:
        for field in spec.fields:
            setters.setdefault(field, []).append(spec.flag)
    fields = options.config_fields()
    assert set(setters) <= fields, f"options set unknown fields: {set(setters) - fields}"
    assert {f: s for f, s in setters.items() if len(s) > 1} == {}
    listed = set(options.FIELDS_WITHOUT_OPTION)
    assert listed <= fields, f"stale FIELDS_WITHOUT_OPTION: {listed - fields}"
    assert not listed & set(setters), "a field both listed as optionless and set by an option"
    assert fields - set(setters) - listed == set(), "fields with neither option nor reason"
    assert all(reason for reason in options.FIELDS_WITHOUT_OPTION.values())


def test_flags_envs_and_dests_are_unique() -> None:
    for attribute in ("flag", "env", "dest"):
        values = [getattr(spec, attribute) for spec in options.OPTIONS]
        assert len(values) == len(set(values)), attribute


def test_defaults_are_agent_configs() -> None:
    assert config([]) == AgentConfig()
    args = parse([])
    assert args.log_level == "INFO"
    assert args.advertise is None  # follows --listen


def test_environment_sets_and_the_flag_wins() -> None:
    environ = {"DRIFTLOG_LEASE_MS": "7000", "DRIFTLOG_NODE_ID": "3"}
    from_env = config([], environ)
    assert (from_env.lease_ms, from_env.node_id) == (7000, 3)
    both = config(["--lease-ms", "9000"], environ)
    assert (both.lease_ms, both.node_id) == (9000, 3)


def test_build_parser_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOG_IDLE_TIMEOUT_MS", "1500")
    monkeypatch.setenv("DRIFTLOG_ZONE", "az1")
    args = cli.build_parser().parse_args(["serve", "--zone", "az2"])
    parsed = cli.config_from_args(args)
    assert (parsed.idle_timeout_s, parsed.zone) == (1.5, "az2")


def test_ms_options_become_seconds() -> None:
    parsed = config(["--idle-timeout-ms", "2500", "--request-timeout-ms", "1"])
    assert (parsed.idle_timeout_s, parsed.request_timeout_s) == (2.5, 0.001)
    assert parse([]).idle_timeout_ms == "600000"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("on", True), ("false", False), ("0", False)],
)
def test_bool(raw: str, expected: bool) -> None:
    assert config(["--auto-create-topics", raw]).auto_create_topics is expected
    assert config([], {"DRIFTLOG_AUTO_CREATE_TOPICS": raw}).auto_create_topics is expected


def test_bad_values_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"--auto-create-topics.*true or false.*'maybe'"):
        config(["--auto-create-topics", "maybe"])
    with pytest.raises(ValueError, match=r"--lease-ms \(DRIFTLOG_LEASE_MS\).*integer.*'5s'"):
        config([], {"DRIFTLOG_LEASE_MS": "5s"})
    with pytest.raises(ValueError, match=r"--listen.*HOST:PORT.*'localhost'"):
        config(["--listen", "localhost"])


def test_host_port_and_advertise() -> None:
    parsed = config(["--listen", "10.0.0.5:9093"])
    assert (parsed.listen_host, parsed.listen_port) == ("10.0.0.5", 9093)
    assert (parsed.advertise_host, parsed.advertise_port) == ("10.0.0.5", 9093)
    everywhere = config(["--listen", ":9094"])
    assert (everywhere.listen_host, everywhere.listen_port) == ("0.0.0.0", 9094)
    assert (everywhere.advertise_host, everywhere.advertise_port) == ("127.0.0.1", 9094)
    v6 = config(["--listen", "[::1]:9095", "--advertise", "broker.example:19095"])
    assert (v6.listen_host, v6.advertise_host, v6.advertise_port) == (
        "::1",
        "broker.example",
        19095,
    )
    # An empty advertise (e.g. an empty environment variable) means the listen address.
    empty = config(["--listen", "10.0.0.5:9093"], {"DRIFTLOG_ADVERTISE": ""})
    assert (empty.advertise_host, empty.advertise_port) == ("10.0.0.5", 9093)


def test_optional_strings_and_paths() -> None:
    parsed = config(
        ["--data-dir", "/tmp/d", "--object-store", "memory://", "--coordinator", ""],
        {"DRIFTLOG_AGENT_ID": ""},
    )
    assert parsed.data_dir == Path("/tmp/d")
    assert parsed.object_store_url == "memory://"
    assert parsed.coordinator_url is None  # empty: the embedded SQLite
    assert parsed.agent_id == ""  # empty agent id: the default
    assert parsed.node_id is None  # unset node id: assigned
    assert options.to_optional_path("--x")("") == (None,)
    assert options.to_optional_path("--x")("a/b") == (Path("a/b"),)
    assert options.to_str("--x")("a,b,c") == ("a,b,c",)


def test_main_reports_a_bad_value_and_exits() -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--flush-ms", "soon"])
    assert str(exit_.value.code).startswith("driftlog: --flush-ms (DRIFTLOG_FLUSH_MS)")


def test_a_percent_in_help_is_literal() -> None:
    spec = options.option("--lease-ms", "100% of the lease")
    parser = argparse.ArgumentParser()
    options.add_options(parser, {}, [spec])
    assert "100% of the lease" in parser.format_help()
