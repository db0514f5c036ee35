"""Shard without a gateway: construction, results, and refusing to run on bad settings."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from shardctl.errors import ConfigurationError, PayloadError
from shardctl.ports import unused_port
from shardctl.worker.shard import CommandResult, Shard

TOKEN = "unit-test-token.xyz"


def shard(**kw: Any) -> Shard:
    args: dict[str, Any] = {"id": 0, "token": TOKEN, "total_shard_count": 1,
                            "gateway": "ws://127.0.0.1:9/", "output": lambda *a: None,
                            "intents": 1}
    args.update(kw)
    return Shard(**args)


def test_repr_and_properties_without_token() -> None:
    s = shard(id=2, total_shard_count=4)
    assert TOKEN not in repr(s) and "id=2/4" in repr(s)
    assert (s.id, s.state, s.session_id, s.seq, s.latency, s.resume_gateway_url) == (
        2, "closed", None, None, None, None)


@pytest.mark.parametrize("kw", [{"id": 4, "total_shard_count": 4},
                                {"transport_compression": "brotli"},
                                {"large_threshold": 500}])
def test_bad_settings_refused_at_construction(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        shard(**kw)


def test_invalid_presence_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        shard(presence={"status": "sleepy"})


def test_command_result_is_truthy_and_unpacks() -> None:
    ok, error = CommandResult(True)
    assert ok and error is None and CommandResult(True)
    failed = CommandResult(False, "closed")
    assert not failed and tuple(failed) == (False, "closed")


@pytest.mark.anyio
async def test_commands_on_a_closed_shard_return_errors() -> None:
    s = shard()
    for result in (await s.update_voice(1, None), await s.request_guild_members(1),
                   await s.fetch_guild_members(1, timeout=0.1)):
        ok, error = result
        assert not ok and error is not None and "not connected" in error


@pytest.mark.anyio
async def test_unreachable_gateway_without_auto_reconnect_returns() -> None:
    events: list[str] = []
    s = shard(gateway=f"ws://127.0.0.1:{unused_port()}/", auto_reconnect=False,
              output=lambda sh, name, data: events.append(name))
    with anyio.fail_after(5):
        await s.connect()
    assert s.state == "closed" and events == []


@pytest.mark.anyio
async def test_shutdown_interrupts_the_reconnect_backoff() -> None:
    s = shard(gateway=f"ws://127.0.0.1:{unused_port()}/")
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.connect)
        with anyio.fail_after(5):
            while s.state != "reconnecting":  # refused, now waiting out the backoff
                await anyio.wait_all_tasks_blocked()
        await s.shutdown()
        stopped_at = anyio.current_time()
    assert anyio.current_time() - stopped_at < 0.5
    assert s.state == "closed"


@pytest.mark.anyio
async def test_bad_gateway_url_is_a_configuration_error() -> None:
    with anyio.fail_after(5), pytest.raises(ConfigurationError):
        await shard(gateway="http://example.invalid/").connect()


@pytest.mark.anyio
async def test_an_awaitable_from_raw_output_holds_the_shard_until_it_completes() -> None:
    from shardctl.gateway.machine import Emit

    gate = anyio.Event()
    outputs: list[str] = []
    raw_seen: list[str] = []

    def raw_output(_: Shard, emit: Emit) -> Any:
        raw_seen.append(emit.name)
        return gate.wait() if emit.name == "MESSAGE_CREATE" else None

    s = shard(output=lambda _s, name, _d: outputs.append(name), raw_output=raw_output)
    async with anyio.create_task_group() as tg:
        tg.start_soon(s._emit, Emit("MESSAGE_CREATE", data={"id": "1"}))
        await anyio.wait_all_tasks_blocked()
        assert raw_seen == ["MESSAGE_CREATE"] and outputs == []  # held: the bus pushes back
        gate.set()
    assert outputs == ["MESSAGE_CREATE"]
    await s._emit(Emit("TYPING_START", data={}))  # None: straight through
    assert outputs == ["MESSAGE_CREATE", "TYPING_START"]
