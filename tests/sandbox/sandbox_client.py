"""A minimal raw gateway client for sandbox tests: websockets + our own tiny inflaters.

Deliberately independent of shardctl.gateway/worker so the sandbox is tested against a
client written from the protocol doc alone.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
import zstandard
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TOKEN = "sandbox-token"
PROPS = {"os": "linux", "browser": "raw-test", "device": "raw-test"}
SUFFIX = b"\x00\x00\xff\xff"


class RawClient:
    def __init__(self, ws: ClientConnection, compress: str | None) -> None:
        self.ws = ws
        self.compress = compress
        self._zbuf = bytearray()
        self._z = zlib.decompressobj()
        self._zstd = zstandard.ZstdDecompressor().decompressobj()
        self.messages = 0  # raw websocket messages received
        self.binary = 0
        self.last_seq: int | None = None

    @classmethod
    async def open(cls, url: str, *, v: str | None = "10", compress: str | None = None,
                   encoding: str | None = "json") -> RawClient:
        query = []
        if v is not None:
            query.append(f"v={v}")
        if encoding is not None:
            query.append(f"encoding={encoding}")
        if compress is not None:
            query.append(f"compress={compress}")
        ws = await connect(url + ("?" + "&".join(query) if query else ""),
                           compression=None, max_size=None, ping_interval=None,
                           close_timeout=2)
        return cls(ws, compress)

    async def recv(self) -> dict[str, Any]:
        """Next gateway payload, decompressed."""
        while True:
            msg = await self.ws.recv()
            self.messages += 1
            if isinstance(msg, str):
                payload: bytes | None = msg.encode()
            else:
                self.binary += 1
                payload = self._inflate(msg)
            if payload is not None:
                frame: dict[str, Any] = orjson.loads(payload)
                if frame.get("s") is not None:
                    self.last_seq = frame["s"]
                return frame

    def _inflate(self, msg: bytes) -> bytes | None:
        if self.compress == "zlib-stream":
            self._zbuf += msg
            if self._zbuf[-4:] != SUFFIX:
                return None
            out = self._z.decompress(bytes(self._zbuf))
            self._zbuf.clear()
            return out
        if self.compress == "zstd-stream":
            out2: bytes = self._zstd.decompress(msg)
            return out2
        return zlib.decompress(msg)  # payload compression: one complete stream per message

    async def send(self, obj: Any) -> None:
        await self.ws.send(obj if isinstance(obj, str | bytes) else orjson.dumps(obj).decode())

    async def hello(self) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["op"] == 10, frame
        return frame

    async def heartbeat(self) -> dict[str, Any]:
        await self.send({"op": 1, "d": self.last_seq})
        return await self.recv_op(11)

    async def recv_op(self, op: int, t: str | None = None) -> dict[str, Any]:
        while True:
            frame = await self.recv()
            if frame["op"] == op and (t is None or frame["t"] == t):
                return frame

    async def identify(self, *, token: str = TOKEN, intents: int = 513,
                       shard: list[int] | None = None, **extra: Any) -> None:
        d: dict[str, Any] = {"token": token, "intents": intents, "properties": PROPS, **extra}
        if shard is not None:
            d["shard"] = shard
        await self.send({"op": 2, "d": d})

    async def ready(self, **kwargs: Any) -> dict[str, Any]:
        """HELLO, IDENTIFY, READY; returns READY's frame."""
        await self.hello()
        await self.identify(**kwargs)
        return await self.recv_op(0, "READY")

    async def resume(self, session_id: str, seq: int | None, token: str = TOKEN) -> None:
        await self.send({"op": 6, "d": {"token": token, "session_id": session_id, "seq": seq}})

    async def closed(self) -> int | None:
        """Read until the server closes; its close code."""
        try:
            while True:
                await self.recv()
        except ConnectionClosed:
            pass
        return self.ws.close_code

    async def close(self, code: int = 1000) -> None:
        await self.ws.close(code)
