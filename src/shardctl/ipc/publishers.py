"""Who may publish on events-in: one credential per worker assignment (issue 12, item 2).

The supervisor's events-in socket is a SUB that any process able to reach the endpoint can
publish to (the ipc:// file, a loopback port).  What arrives there decides what consumers
see, the last seq forwarded per shard and the session a respawned worker RESUMEs -- so a
batch is taken only from a worker the supervisor assigned, and only for that worker's shards.

Each ``assign`` carries a fresh random key; the worker puts its slot index and the key in
the header of every batch (:mod:`shardctl.ipc.events`).  :class:`PublishGrants` holds, per
slot, the key of its current assignment and its shards.  A new assignment replaces the key,
so a respawned (or moved) worker's predecessor is shut out at once -- its late batches are
what the RESUME replays anyway.  A live worker that is given more shards (it adopts a lost
remote worker's) gets a new key too, but keeps its old ones until its first batch with the
new key arrives: the batches it sealed before hold events of shards it still runs, and one
publisher's batches arrive in order, so after that first new batch none with an old key
can still be on the way.  (Old keys, not one: two workers of a host that vanished are
adopted in the same moment, possibly by one worker.)

Pure bookkeeping, O(1) per batch: a dict lookup and :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["PUBLISH_KEY_SIZE", "PublishGrants", "new_publish_key"]

#: bytes of random key per assignment: far beyond guessing at any batch rate.
PUBLISH_KEY_SIZE: Final = 32
#: old keys a live worker may still use (adoptions faster than it switches): a bound, so
#: a check stays O(1).
_MAX_PREVIOUS: Final = 8


def new_publish_key() -> bytes:
    return secrets.token_bytes(PUBLISH_KEY_SIZE)


@dataclass(frozen=True, slots=True)
class _Grant:
    key: bytes
    shards: frozenset[int]


class PublishGrants:
    """Per worker slot: the key of its current assignment and the shards it may publish."""

    def __init__(self) -> None:
        self._current: dict[int, _Grant] = {}
        #: the keys a live worker held before its latest assignment, until it switches
        self._previous: dict[int, tuple[_Grant, ...]] = {}

    def authorize(self, worker: int, key: bytes, shards: Iterable[int], *,
                  same_process: bool = False) -> None:
        """``worker`` publishes with ``key`` for ``shards`` from now on.

        ``same_process``: the assignment goes to the process that held the previous key (it
        was given more shards), whose batches sealed before still carry the old key.
        """
        if len(key) != PUBLISH_KEY_SIZE:
            raise ValueError(f"a publish key has {PUBLISH_KEY_SIZE} bytes")
        old = self._current.get(worker)
        if same_process and old is not None:
            self._previous[worker] = (*self._previous.get(worker, ()), old)[-_MAX_PREVIOUS:]
        else:
            self._previous.pop(worker, None)
        self._current[worker] = _Grant(key, frozenset(shards))

    def revoke(self, worker: int) -> None:
        """Nothing from ``worker`` is taken any more (its process is lost for good)."""
        self._current.pop(worker, None)
        self._previous.pop(worker, None)

    def known(self, worker: int) -> bool:
        return worker in self._current

    def check(self, worker: int, key: bytes) -> frozenset[int] | None:
        """The shards a batch with this header may carry; None: drop the whole batch."""
        grant = self._current.get(worker)
        if grant is None:
            return None
        if hmac.compare_digest(grant.key, key):
            if self._previous:
                self._previous.pop(worker, None)  # switched: no old-key batch can follow
            return grant.shards
        for old in self._previous.get(worker, ()):
            if hmac.compare_digest(old.key, key):
                return old.shards
        return None
