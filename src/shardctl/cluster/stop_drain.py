"""The end of a graceful stop: hand consumers what they can still read, then say what to save.

Order (DESIGN.md §7): the shards have closed resumably and their last batches are forwarded;
now events-out and the in-process ``output`` get up to ``--drain-timeout`` seconds, together,
to hand over what they hold; then the sessions are saved with each shard's seq capped at what
was actually sent, so the next start RESUMEs and Discord replays the rest.

- events-out: PUB/SUB has no receipts.  The forwarder sends padding last, then closes the
  socket with that LINGER in a context of its own; term() returning early means everything
  before the padding left the process (ipc/bus.py ``_send_closing``).  Otherwise
  the saved seqs fall back to :meth:`~shardctl.ipc.bus.EventForwarder.unsent_bound`: below
  anything libzmq may still have held, so consumers get replays (``replayed`` for
  ``shardctl.Consumer``, the same (session, seq)) instead of a gap.
- ``output``: the events it never got are known exactly; each shard's seq is capped just
  below the first of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace

import anyio

from shardctl.cluster.fanout import EventFanout
from shardctl.cluster.sessions import SessionRecord
from shardctl.ipc.bus import EventForwarder
from shardctl.ipc.events import NEW_SESSION_TYPE, Event

log = logging.getLogger(__name__)


async def drain(forwarder: EventForwarder, fanout: EventFanout, bound: float,
                last_seq: Mapping[int, int]) -> dict[int, int]:
    """Drain events-out and ``output`` (at most ``bound`` s in all); the cap per shard."""
    started = anyio.current_time()
    subscriptions = len(forwarder.subscriptions)
    log.info("supervisor: shards closed; consumers get up to %g s (--drain-timeout) to read "
             "what they are behind by", bound)
    sent = False
    undelivered: list[Event] = []

    async def bus() -> None:
        nonlocal sent
        sent = await forwarder.drain(bound)

    async def output() -> None:
        nonlocal undelivered
        undelivered = await fanout.drain_output(bound)

    async with anyio.create_task_group() as tg:
        tg.start_soon(bus)
        tg.start_soon(output)
    caps: dict[int, int] = {}
    if sent:
        log.info("supervisor: events-out handed its consumers everything in %.1f s",
                 anyio.current_time() - started)
    elif forwarder.stats.events:
        caps = forwarder.unsent_bound()
        back = {s: last_seq[s] - cap for s, cap in caps.items()
                if s in last_seq and last_seq[s] > cap}
        log.warning("supervisor: --drain-timeout %g s ran out before events-out had handed "
                    "its consumers (%d subscriptions) everything; PUB/SUB cannot tell what "
                    "each got, so %d shards are saved up to %d events back (%d in all) and "
                    "the next start RESUMEs them: consumers see those again, as replays",
                    bound, subscriptions, len(back), max(back.values(), default=0),
                    sum(back.values()))
    if undelivered:
        log.warning("supervisor: the output callback did not take %d events within "
                    "--drain-timeout %g s; their shards are saved from the first of them, "
                    "so the next start RESUMEs and replays them", len(undelivered), bound)
    for shard, cap in undelivered_caps(undelivered).items():
        caps[shard] = min(cap, caps.get(shard, cap))
    return caps


def undelivered_caps(undelivered: Iterable[Event]) -> dict[int, int]:
    """Per shard, the highest seq that may be saved when ``undelivered`` (in order) never
    reached the callback: just below the first of them, or the READY itself when the
    current session's READY is among them (a RESUME cannot replay a READY, but replays
    everything after it)."""
    caps: dict[int, int] = {}
    for event in undelivered:
        if event.seq is None:
            continue  # lifecycle events: nothing to replay
        if event.type == NEW_SESSION_TYPE:
            caps[event.shard] = event.seq  # events before it were of an older session
        elif event.shard not in caps:
            caps[event.shard] = event.seq - 1
    return caps


def lowered(records: Iterable[SessionRecord], caps: Mapping[int, int]) -> list[SessionRecord]:
    """``records`` with each shard's seq no higher than its cap."""
    return [replace(r, seq=caps[r.shard_id]) if r.shard_id in caps and caps[r.shard_id] < r.seq
            else r for r in records]
