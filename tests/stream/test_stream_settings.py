"""--stream settings and the [stream] table of the configuration file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardctl.cli import main
from shardctl.errors import ConfigurationError
from shardctl.stream.settings import StreamSettings, parse_servers


def test_several_servers_are_comma_separated() -> None:
    assert parse_servers("nats://a:4222, tls://b:4223") == ("nats://a:4222", "tls://b:4223")


@pytest.mark.parametrize("bad", [{"duplicate_window": 0.0}, {"max_age": 10.0,
                                                             "duplicate_window": 20.0},
                                 {"replicas": 6}, {"buffer": 5}, {"prefix": "a.*"}])
def test_a_setting_that_cannot_work_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        StreamSettings(("nats://a:4222",), **bad)  # type: ignore[arg-type]


def test_the_stream_table_of_a_config_file_sets_the_stream_options(tmp_path: Path) -> None:
    path = tmp_path / "shardctl.toml"
    path.write_text('[stream]\nurl = "nats://10.0.0.1:4222,nats://10.0.0.2:4222"\n'
                    'name = "BOT"\nmax-age = 3600\nreplicas = 3\n')
    result = CliRunner().invoke(main, ["config", "--config", str(path)],
                                env={"SHARDCTL_CONFIG": None})
    assert result.exit_code == 0, result.output
    assert 'stream = "nats://10.0.0.1:4222,nats://10.0.0.2:4222"' in result.output
    assert 'stream-name = "BOT"' in result.output
    assert "stream-max-age = 3600" in result.output
    assert "stream-replicas = 3" in result.output


def test_a_wrong_value_in_the_stream_table_names_its_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "shardctl.toml"
    path.write_text('[stream]\nurl = "http://x"\n')
    result = CliRunner().invoke(main, ["config", "--config", str(path)],
                                env={"SHARDCTL_CONFIG": None})
    assert result.exit_code == 2
    assert "bad value for 'stream'" in result.output and str(path) in result.output


def test_stream_without_the_nats_extra_is_one_line_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)  # `import nats` raises ImportError
    result = CliRunner().invoke(
        main, ["run", "--api-url", "http://127.0.0.1:9/api/v10", "--stream",
               "nats://127.0.0.1:4222"],
        env={"DISCORD_TOKEN": "t0ken", "SHARDCTL_RUNTIME_DIR": str(tmp_path / "run"),
             "SHARDCTL_CONFIG": None})
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1
    assert "pip install 'shardctl[nats]'" in errors[0]


def test_a_stream_option_without_stream_is_refused_not_ignored(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["run", "--api-url", "http://127.0.0.1:9/api/v10", "--stream-replicas", "3"],
        env={"DISCORD_TOKEN": "t0ken", "SHARDCTL_RUNTIME_DIR": str(tmp_path / "run"),
             "SHARDCTL_CONFIG": None})
    assert result.exit_code == 2, result.output
    assert "--stream-replicas needs --stream" in result.output
