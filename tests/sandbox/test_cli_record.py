"""``shardctl sandbox --record FILE``: the sandbox's record as JSON lines, for clients the
test cannot reach into (other processes, other languages)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_sandbox import TOKEN, cli_sandbox, stop
from sandbox_client import RawClient

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: hikari's presence: the legacy game key, no activities (accepted, noted).
IDENTIFY = {"token": TOKEN, "intents": 513, "shard": [0, 1],
            "properties": {"os": "linux", "browser": "hikari", "device": "hikari"},
            "presence": {"since": None, "afk": False, "game": None, "status": "online"}}


async def test_record_file_holds_identify_notes_and_violations_but_never_the_token(
        tmp_path: Path) -> None:
    async with cli_sandbox(tmp_path, "--heartbeat-interval-ms", "5000") as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.hello()
        await c.send({"op": 2, "d": IDENTIFY})
        await c.recv_op(0, "READY")
        await c.send({"op": 3, "d": {"since": None, "afk": False, "status": "away"}})
        assert await c.closed() == 4001
        await stop(sb.process)
        assert sb.process.returncode == 0, sb.log()
        (identify,) = sb.records("identify")
        assert identify["shard_id"] == 0 and identify["details"]["shard"] == [0, 1]
        assert {r["details"]["rule"] for r in sb.records("note")} >= {"presence_legacy_game"}
        assert [r["details"]["rule"] for r in sb.records("violation")] == ["presence_shape"]
        assert TOKEN.encode() not in sb.record_path.read_bytes()
