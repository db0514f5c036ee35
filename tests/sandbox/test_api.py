from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from shardctl import sandbox
from shardctl.cli import main
from shardctl.sandbox import (
    Close,
    InvalidSession,
    Reconnect,
    SandboxConfig,
    ScheduledFault,
    Zombie,
    parse_fault,
)
from shardctl.sandbox.faults import parse_scheduled


def test_public_names_are_listed_and_exist() -> None:
    assert "Sandbox" in sandbox.__all__ and "SandboxConfig" in sandbox.__all__
    for name in sandbox.__all__:
        assert hasattr(sandbox, name)


def test_token_is_not_in_config_repr() -> None:
    assert "secret-xyz" not in repr(SandboxConfig(token="secret-xyz"))


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="shard_count"):
        SandboxConfig(shard_count=0)
    with pytest.raises(ValueError, match="resume_path"):
        SandboxConfig(resume_path="/")


def test_fault_short_forms() -> None:
    assert parse_fault("reconnect") == Reconnect()
    assert parse_fault(("invalid_session", True)) == InvalidSession(resumable=True)
    assert parse_fault(("zombie", False)) == Zombie(on=False)
    assert parse_fault(("close", 4009)) == Close(4009)
    with pytest.raises(ValueError):
        parse_fault("explode")
    assert parse_scheduled("close:4000@2.5/1") == ScheduledFault(
        Close(4000), after=2.5, shard_id=1, once=False)
    assert parse_scheduled("reconnect_before_hello@0").trigger == "connect"


def test_cli_help_documents_every_config_field() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--help"])
    assert result.exit_code == 0
    for f in dataclasses.fields(SandboxConfig):
        assert "--" + f.name.replace("_", "-") in result.output


def test_cli_rejects_invalid_config_with_usage_error() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--shard-count", "0"])
    assert result.exit_code == 2
    assert "shard_count" in result.output
