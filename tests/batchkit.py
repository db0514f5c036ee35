"""Worker batches built by hand: what a forged or hand-made publisher sends to events-in."""

from __future__ import annotations

from shardctl.ipc.events import BATCH_KEY_SIZE, batch_header


def encode_batch(records: list[bytes], *, worker: int = 0,
                 key: bytes = bytes(BATCH_KEY_SIZE)) -> bytes:
    """Records from ``encode_record`` joined into one batch sent by ``worker`` with ``key``."""
    return batch_header(len(records), worker, key) + b"".join(records)
