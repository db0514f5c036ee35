"""The session limiter as a service: the pure scheduler driven by the limiter channel.

Where policy meets the wire, on the supervisor's side (or ``shardctl limiter``'s).  The
scheduler (``cluster/limiter.py``) decides who may IDENTIFY and when; the ROUTER end
(:class:`~shardctl.ipc.limiter.LimiterWireServer`) moves the messages; this module's
:class:`SessionLimiterService` decides what a message means for the queue and when a client
is gone (the shards' end is :class:`~shardctl.ipc.limiter.LimiterClient`):

- a grant is held until the client releases it (its IDENTIFY is sent): the bucket's next
  grant comes an interval after the release, so IDENTIFYs leave the processes at least an
  interval apart however late each grant arrived.  A client that shares the service's
  monotonic clock (same boot and time namespace: its ping names the clock) is granted up to
  ``lead`` ahead of its slot with a ``not_before`` it waits out itself, so neither the timer's
  lateness nor the grant's trip lengthens a gap, and is believed about when its send ended
  (the release's ``sent_at``), so neither does the release's trip: the bucket is paced from
  that moment.  Any other client is granted at the slot and paced from when its release was
  handled.  Either way the next grant comes an interval plus the bucket's *margin* later
  (:class:`~shardctl.gateway.pacing.IdentifyMargin`, default 15 ms + 1 % of the interval):
  Discord stamps an IDENTIFY when a busy server of its fleet reads it, so the second of two
  IDENTIFYs sent an interval apart may look early by the difference in how late each was
  read.  A shard whose IDENTIFY was answered with op 9 anyway reports it (``rejected``): the
  bucket's margin widens a step, and the warning names the figures;
- a holder whose connection is gone (probed every ``probe_interval`` while it holds) counts
  as released when that is seen; one that never answers, at ``hold_limit`` -- long (see
  :func:`default_hold_limit`), because a live holder whose event loop is busy may send its
  IDENTIFY late, and pacing the next grant from an expired hold would then let two
  IDENTIFYs of one bucket come too close;
- a request is keyed ``(client id, request number)``; its grant goes to the routing id the
  client last spoke from, so a client that reconnects still gets its grants;
- a grant that fails to send (the client's connection is gone) is not a slot spent: the
  scheduler gives the slot to the next request at once, and every waiting request of that
  client is set aside with its place: a DEALER reconnects (after a heartbeat timeout, say)
  under a new routing id, and gets them back, in their places, with its next message;
- a client silent for ``client_timeout`` (no message; counted up to when the service last
  had no message unread, so a busy loop's backlog is not silence) loses its waiting
  requests; if it was only slow, its next pong shows them missing and it asks again;
- a request whose grant is still held (the grant was lost on the way) gets that grant
  again, not a second slot;
- the work per message does not grow with the queue: pongs list a client's own requests
  from the scheduler's per-client index, and the scheduler keeps each bucket's due time
  until it changes (10,000 waiting requests over 256 buckets in a big start-up);
- every grant that left is a slot spent, whatever happens to it afterwards (DESIGN.md §6);
- a client id is bound to the connection that first used it and the principal (CURVE key)
  behind it: a message naming it from another connection is refused (``refused``) and
  changes nothing, unless the first connection is gone and the principal is the same (the
  client reconnected).  ``configure`` is taken only from peers whose role may
  (:meth:`shardctl.ipc.limiter.LimiterWireServer.may_configure`), and always answered.

Run it in the supervisor (``await tg.start(server.serve)``) or on its own
(``shardctl limiter``) so several supervisors share one pace.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import anyio
from anyio.abc import TaskStatus

from shardctl.cluster.limiter import Grant, IdentifyScheduler, Parked
from shardctl.gateway.limits import DEFAULT_LIMITS, Limits
from shardctl.ipc.limiter import (
    DEFAULT_PEER_BURST,
    DEFAULT_PEER_RATE,
    Cancel,
    ClientMessage,
    Configure,
    LimiterStats,
    LimiterWireServer,
    Ping,
    Rejected,
    Release,
    Request,
    check_bind,
    clock_id,
)
from shardctl.ipc.security import CurveServer

__all__ = ["DEFAULT_CLIENT_TIMEOUT", "LimiterEvent", "RequestKey", "SessionLimiterService"]

log = logging.getLogger(__name__)

DEFAULT_CLIENT_TIMEOUT: Final = 10.0
"""Seconds without a ping after which a client's waiting requests are dropped."""

DEFAULT_LEAD: Final = 0.02
"""Seconds ahead of its slot a same-clock client may be granted: covers the grant's trip and
the client's wake-up (a few ms, tens on a loaded machine); the client waits out the rest."""

DEFAULT_PROBE_INTERVAL: Final = 0.05
"""Seconds between reachability probes of a client that holds an unreleased grant.  Holds
normally last the few milliseconds of one websocket send, so probes are rare."""

RECORD_SIZE: Final = 10_000

GRANTS_REMEMBERED: Final = 4096
"""Recent grants a ``rejected`` report may name (a few seconds' worth at any pace)."""

SAME_CLOCK_CHECK: Final = 0.001
"""Largest difference between the loop's clock and time.monotonic() taken for one clock."""

RequestKey = tuple[str, int]
"""(client id, request number): one request of one client."""


@dataclass(frozen=True, slots=True)
class LimiterEvent:
    """One entry of the service's own record: ``grant`` (``at``: when the shard may
    IDENTIFY; ``issued``: when the grant left, earlier for an early grant), ``release``
    (``at``: the time its bucket is paced from: its next grant comes an interval plus the
    margin later), ``rejected`` (an IDENTIFY answered with op 9, and the bucket's margin
    before and after), ``drop`` (a client's waiting requests, with the reason) or
    ``update`` (new limits)."""

    kind: str
    at: float
    client: str
    shard_id: int | None = None
    bucket: int | None = None
    detail: str = ""
    issued: float | None = None


@dataclass(slots=True)
class _Client:
    peer: bytes
    last_seen: float
    same_clock: bool = False  # its ping named our monotonic clock: sent_at and not_before
    principal: str = ""  # the CURVE User-Id that first used this client id
    last_probe: float = -math.inf  # when it was last asked whether it is still there
    #: its waiting requests, set aside with their places while its connection is gone
    parked: list[Parked[RequestKey]] = field(default_factory=list)


def _client_of(key: RequestKey) -> str:
    return key[0]


def _wall(at: float, now: float) -> str:
    """A service-clock time as UTC wall time, for operators reading logs."""
    stamp = datetime.fromtimestamp(time.time() + (at - now), tz=UTC)
    return stamp.isoformat(timespec="seconds")


#: A held grant expires no sooner than this: a dead holder is noticed by the probe within
#: ``probe_interval``; expiry is only for a holder that is alive but never answers.
MIN_HOLD_LIMIT: Final = 10.0


def default_hold_limit(interval: float) -> float:
    """Long enough that a live holder's late IDENTIFY (a worker busy starting hundreds of
    shards) is still released before the hold expires."""
    return max(MIN_HOLD_LIMIT, 2 * interval)


class SessionLimiterService:
    """Serves the session limiter on ``endpoint`` until cancelled: the supervisor's side.

    ``limits``: the pace, margin and session-start budget to start with (without a budget
    none is enforced); ``configure`` messages and :meth:`update` change them while serving.
    Times (``last_grants``, the record) are in the event loop's clock
    (``anyio.current_time()``, monotonic).  ``hold_limit`` (default:
    :func:`default_hold_limit`) bounds how long an unreleased grant blocks its bucket.
    ``lead`` (seconds, 0 to turn off): how far ahead of its slot a client sharing this clock
    may be granted; ``pace_from_sent``: pace such a client's bucket from its ``sent_at``;
    off, from when its release is handled.
    """

    def __init__(
        self,
        endpoint: str,
        limits: Limits = DEFAULT_LIMITS,
        *,
        last_grants: Mapping[int, float] | None = None,
        client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
        hold_limit: float | None = None,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        curve: CurveServer | None = None,
        lead: float = DEFAULT_LEAD,
        pace_from_sent: bool = True,
        insecure_loopback: bool = False,
        peer_rate: float = DEFAULT_PEER_RATE,
        peer_burst: int = DEFAULT_PEER_BURST,
    ) -> None:
        self._limits = limits
        self._granted: OrderedDict[RequestKey, int] = OrderedDict()  # recent grants: shard
        if not (math.isfinite(lead) and lead >= 0):
            raise ValueError(f"lead must be a finite number of seconds >= 0, not {lead}")
        self._lead = lead
        self._pace_from_sent = pace_from_sent
        self._clock: str | None = None  # our monotonic clock's name, once serving
        check_bind(endpoint, curve=curve is not None, insecure_loopback=insecure_loopback)
        self._insecure_loopback = insecure_loopback
        self._peer_rate, self._peer_burst = peer_rate, peer_burst
        #: what peers were denied (refusals, unread replies, excess rate), while serving
        self.stats = LimiterStats()
        self._curve = curve
        self._endpoint = endpoint
        self._last_grants = None if last_grants is None else dict(last_grants)
        self._client_timeout = client_timeout
        self._hold_limit = (default_hold_limit(limits.interval) if hold_limit is None
                            else hold_limit)
        self._probe_interval = probe_interval
        self._scheduler: IdentifyScheduler[RequestKey] | None = None
        self._service: LimiterWireServer | None = None
        self._clients: dict[str, _Client] = {}
        self._wakeup = anyio.Event()
        self._changed = anyio.Event()
        self._held_logged: float | None = None
        self._caught_up = -math.inf  # when the receive loop last found no message waiting
        self.endpoint: str | None = None
        self.record: deque[LimiterEvent] = deque(maxlen=RECORD_SIZE)
        # Validate now, not when serving starts.
        IdentifyScheduler[RequestKey](now=0.0, limits=limits, hold_limit=self._hold_limit)

    # -- public ---------------------------------------------------------------------------

    @property
    def scheduler(self) -> IdentifyScheduler[RequestKey]:
        if self._scheduler is None:
            raise RuntimeError("the limiter is not serving")
        return self._scheduler

    def grants(self) -> list[LimiterEvent]:
        return [e for e in self.record if e.kind == "grant"]

    def last_grants(self) -> dict[int, float]:
        """Bucket -> last grant time; give it to the next service to skip its start-up wait."""
        return self.scheduler.last_grants()

    def hold_until(self, until: float) -> None:
        """No grant before ``until`` (the event loop's clock); see the scheduler's."""
        self.scheduler.hold_until(until)
        self._pump()

    def gate(self, until: float | None) -> None:
        """No grant starts before ``until`` (the loop's clock); ``None`` opens the gate."""
        self.scheduler.gate(until)
        self._pump()

    async def open_gate_when_asked(self, expected: int, *, quiet: float) -> None:
        """Open the gate once ``expected`` requests wait, or none arrived for ``quiet`` s.

        For a cluster start with the gate closed, so that every bucket starts together.
        Shards keep asking for as long as their workers keep connecting (a thousand shards
        take several seconds on a loaded host); waiting for them costs nothing at the end,
        because the start-up ends with the last grant of the latest bucket either way.  A
        shard that never asks (a worker that died while starting) holds the others back by
        ``quiet`` only.
        """
        asked = -1
        while (waiting := len(self.scheduler)) < expected and waiting != asked:
            asked = waiting
            with anyio.move_on_after(quiet):
                await self.wait_for(functools.partial(self._more_waiting_than, asked))
        self.gate(None)

    def _more_waiting_than(self, count: int) -> bool:
        return len(self.scheduler) > count

    def update(
        self,
        *,
        max_concurrency: int | None = None,
        remaining: int | None = None,
        total: int | None = None,
        reset_after: float | None = None,
    ) -> None:
        """New limits while running (``reset_after`` in seconds)."""
        self.scheduler.update(
            anyio.current_time(), max_concurrency=max_concurrency, remaining=remaining,
            total=total, reset_after=reset_after,
        )
        log.info("limiter: limits updated: max_concurrency=%d remaining=%s total=%s",
                 self.scheduler.max_concurrency, self.scheduler.remaining, self.scheduler.total)
        self._note(LimiterEvent("update", anyio.current_time(), "", detail=(
            f"max_concurrency={self.scheduler.max_concurrency} "
            f"remaining={self.scheduler.remaining} total={self.scheduler.total}")))
        self._pump()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; re-checked after every message and grant."""
        while not predicate():
            await self._changed.wait()

    async def serve(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind and serve; ``task_status.started`` receives the bound endpoint."""
        async with LimiterWireServer(self._endpoint, curve=self._curve,
                                  insecure_loopback=self._insecure_loopback,
                                  peer_rate=self._peer_rate, peer_burst=self._peer_burst,
                                  stats=self.stats) as service:
            now = anyio.current_time()
            self._scheduler = IdentifyScheduler[RequestKey](
                now=now, limits=self._limits, last_grants=self._last_grants,
                hold_limit=self._hold_limit, owner=_client_of)
            self._service = service
            self.endpoint = service.endpoint
            # Clients send time.monotonic() values: comparable with our `now` only if the
            # event loop's clock is that clock (asyncio's is; another loop's may not be).
            self._clock = clock_id() if abs(now - time.monotonic()) < SAME_CLOCK_CHECK else None
            log.info("limiter: serving %s (max_concurrency=%d, interval=%.3gs, remaining=%s)",
                     service.endpoint, self._scheduler.max_concurrency,
                     self._scheduler.interval, self._scheduler.remaining)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._receive_loop, service)
                    tg.start_soon(self._timer_loop)
                    task_status.started(service.endpoint)
            finally:
                self._service = None

    # -- loops ----------------------------------------------------------------------------

    async def _receive_loop(self, service: LimiterWireServer) -> None:
        while True:
            if not service.backlog():
                self._caught_up = anyio.current_time()
            peer, message = await service.receive()
            self._handle(peer, message, anyio.current_time())
            # pyzmq hands over a queued message without yielding to the event loop: without
            # this, a burst of messages (a cluster starting) starves the timer loop, and a
            # release is acted on before the loop has even read sockets that were ready
            # before it arrived (an IDENTIFY to a co-hosted sandbox, say).
            await anyio.lowlevel.checkpoint()

    async def _timer_loop(self) -> None:
        while True:
            now = anyio.current_time()
            deadlines = [d for d in (self.scheduler.next_deadline(), self._liveness_deadline(),
                                     self._probe_deadline()) if d is not None]
            delay = max(0.0, min(deadlines) - now) if deadlines else math.inf
            with anyio.move_on_after(delay):
                await self._wakeup.wait()
            self._wakeup = anyio.Event()
            now = anyio.current_time()
            self._expire_silent(now, self._heard_until(now))
            self._probe_holders(now)
            self._pump(replan=False)  # this loop re-plans anyway; waking itself would spin

    # -- policy ---------------------------------------------------------------------------

    def _handle(self, peer: bytes, message: ClientMessage, now: float) -> None:
        client = self._client_for(peer, message.client, now)
        if client is None:
            self._notify()
            return
        client.last_seen = now
        scheduler = self.scheduler
        match message:
            case Request(client_id, req, shard):
                if not self._grant_again(client, (client_id, req), now):
                    scheduler.request((client_id, req), shard,
                                      lead=self._lead if client.same_clock else 0.0)
            case Cancel(client_id, req):
                scheduler.cancel((client_id, req))
            case Release(client_id, req, sent_at):
                self._release(client, client_id, req, sent_at, now)
            case Rejected(client_id, req, shard, after):
                self._rejected(client_id, req, shard, after, now)
            case Ping(client_id, seq, clock):
                client.same_clock = self._same_clock(client_id, clock, client.same_clock)
                queued = [r for _, r in scheduler.waiting_of(client_id)]
                self._service_or_raise().send_pong(peer, seq, queued)
            case Configure():
                self._configure(peer, message)
                return
        self._pump()

    def _client_for(self, peer: bytes, client_id: str, now: float) -> _Client | None:
        """The client ``peer`` speaks for; None (refused) if that id is another's."""
        service = self._service_or_raise()
        if service.role_of(peer) == "consumer":  # subscribes to events, nothing else
            service.send_refused(peer, client_id, "the consumer role may not use the limiter")
            return None
        principal = service.principal_of(peer)
        client = self._clients.get(client_id)
        if client is None:
            client = self._clients[client_id] = _Client(peer, now, principal=principal)
            log.info("limiter: client %s connected", client_id)
        elif client.peer != peer:
            # The same client after a reconnect, or someone reusing its id: only the same
            # principal, and only once the old connection is gone, may carry it on.
            if principal != client.principal or service.connected(client.peer):
                service.send_refused(peer, client_id, (
                    f"client id {client_id} is in use by another connection; pick another "
                    "(ids are random per process), or wait until that connection is gone"))
                return None
            log.info("limiter: client %s reconnected", client_id)
            client.peer = peer
        if client.parked:
            back = self.scheduler.put_back(client.parked)
            client.parked = []
            log.info("limiter: client %s is back; %d waiting request(s) keep their places",
                     client_id, back)
        return client

    def _grant_again(self, client: _Client, key: RequestKey, now: float) -> bool:
        """A request whose grant is still held: its grant was lost on the way (the client
        would not ask again otherwise).  Send that grant again rather than spend a second
        slot: its bucket has waited on the hold since, and the client uses one grant per
        request, so a repeat can never make a second IDENTIFY."""
        held = self.scheduler.held(key)
        if held is None:
            return False
        shard, start = held
        not_before = start if client.same_clock and start > now else None
        self._service_or_raise().send_grant(client.peer, key[1], shard, not_before=not_before)
        log.debug("limiter: client %s asked again for held grant %d; sent it again",
                  key[0], key[1])
        return True

    def _configure(self, peer: bytes, message: Configure) -> None:
        """Only the roles that may set the pace do; every configure with a seq is answered."""
        service = self._service_or_raise()
        reason = service.may_configure(peer)
        if reason is None:
            try:
                self.update(max_concurrency=message.max_concurrency,
                            remaining=message.remaining, total=message.total,
                            reset_after=message.reset_after)
            except ValueError as exc:  # a bad value from the wire: refuse, keep serving
                reason = f"invalid limits: {exc}"
        if reason is not None and service.first_time(peer, "configure refused"):
            log.warning("limiter: refused limits from client %s: %s (logged once per peer)",
                        message.client, reason)
        if message.seq is not None:
            service.send_configured(peer, message.seq, reason)

    def _same_clock(self, client_id: str, clock: str | None, before: bool) -> bool:
        same = clock is not None and clock == self._clock
        if same != before:
            log.info("limiter: client %s %s this monotonic clock", client_id,
                     "shares" if same else "does not share")
        return same

    def _release(self, client: _Client, client_id: str, req: int, sent_at: float | None,
                 now: float) -> None:
        believed = sent_at if client.same_clock and self._pace_from_sent else None
        held = self.scheduler.held((client_id, req))
        if held is None or not self.scheduler.release((client_id, req), now, sent_at=believed):
            return
        shard, start = held
        paced_from = now if believed is None else min(max(believed, start), now)
        bucket = self.scheduler.bucket_of(shard)
        self._note(LimiterEvent("release", paced_from, client_id, shard, bucket, detail=(
            f"req={req} handled={now:.6f}"
            + ("" if sent_at is None else f" sent_at={sent_at:.6f}")
            + f" margin={self.scheduler.margin(bucket):.6f}")))

    def _rejected(self, client_id: str, req: int, shard: int, after: float | None,
                  now: float) -> None:
        """Discord answered the IDENTIFY of grant ``req`` with op 9: widen its bucket's
        margin.  A report naming no recent grant of this client is ignored (sent twice, or
        to a service that restarted since)."""
        if self._granted.pop((client_id, req), None) != shard:
            log.debug("limiter: ignored an op 9 report for an unknown grant (client %s, req %d)",
                      client_id, req)
            return
        scheduler = self.scheduler
        before, widened = scheduler.identify_rejected(shard)
        bucket = scheduler.bucket_of(shard)
        policy, interval = scheduler.margin_policy, scheduler.interval
        log.warning(
            "limiter: Discord answered shard %d's IDENTIFY with op 9%s: it read it less than "
            "%.3g s after the previous one of bucket %d. Every bucket's margin is now %.1f "
            "ms (was %.1f; base %.1f ms, at most %.1f ms; a step back after %d clean "
            "IDENTIFYs of bucket %d); op 9s so far: %d. If this recurs, raise "
            "--identify-margin-ms", shard,
            "" if after is None else f" {after:.3f} s after it was sent", interval, bucket,
            widened * 1000, before * 1000, policy.base(interval) * 1000,
            policy.widest(interval) * 1000, policy.decay_after, bucket,
            scheduler.rejections_total)
        self._note(LimiterEvent("rejected", now, client_id, shard, bucket, detail=(
            f"req={req} after={after} margin={before:.6f}->{widened:.6f}")))

    def _service_or_raise(self) -> LimiterWireServer:
        if self._service is None:
            raise RuntimeError("the limiter is not serving")
        return self._service

    def _pump(self, *, replan: bool = True) -> None:
        """Issue every grant that is due now, then (``replan``) wake the timer to re-plan."""
        now = anyio.current_time()
        service = self._service_or_raise()
        gone: set[str] = set()

        def deliver(grant: Grant[RequestKey]) -> bool:
            client_id, req = grant.key
            client = self._clients.get(client_id)
            if client is None or client_id in gone:
                return False
            not_before = grant.start if grant.start > grant.at else None
            if service.send_grant(client.peer, req, grant.shard_id, not_before=not_before):
                return True
            gone.add(client_id)
            return False

        def undelivered(parked: Parked[RequestKey]) -> None:
            client = self._clients.get(parked.key[0])
            if client is not None:
                client.parked.append(parked)

        for grant in self.scheduler.poll(now, deliver, undelivered):
            self._remember(grant)
            self._note(LimiterEvent("grant", grant.start, grant.key[0], grant.shard_id,
                                    grant.bucket, issued=grant.at))
        for client_id in gone:
            self._set_aside(client_id, now, "connection gone")
        self._log_budget(now)
        if replan:
            self._wakeup.set()
        self._notify()

    def _remember(self, grant: Grant[RequestKey]) -> None:
        """Keep a grant for the ``rejected`` report that may follow it."""
        self._granted[grant.key] = grant.shard_id
        while len(self._granted) > GRANTS_REMEMBERED:
            self._granted.popitem(last=False)

    def _set_aside(self, client_id: str, now: float, reason: str) -> None:
        """The client's connection is gone, but the client may only be reconnecting (a
        DEALER does, with a new routing id, after a heartbeat timeout): what it held was
        sent before now, if at all; its waiting requests keep their places until it speaks
        again, and go when it stays silent (``client_timeout``).  Dropping them made every
        reconnect of a 2,500-shard worker ask for all of them again, at the back of the
        queues."""
        client = self._clients.get(client_id)
        if client is None:
            return
        self.scheduler.release_where(lambda key: key[0] == client_id, now)
        client.parked.extend(self.scheduler.set_aside(lambda key: key[0] == client_id))
        log.info("limiter: client %s unreachable (%s); %d waiting request(s) set aside until "
                 "it is back", client_id, reason, len(client.parked))
        self._note(LimiterEvent("drop", now, client_id, detail=reason))

    def _drop(self, client_id: str, now: float, reason: str) -> None:
        client = self._clients.pop(client_id, None)
        # Whatever it held was sent before now, if at all.
        self.scheduler.release_where(lambda key: key[0] == client_id, now)
        dropped = self.scheduler.cancel_where(lambda key: key[0] == client_id)
        parked = 0 if client is None else len(client.parked)
        log.info("limiter: client %s gone (%s); dropped %d waiting request(s)",
                 client_id, reason, len(dropped) + parked)
        self._note(LimiterEvent("drop", now, client_id, detail=reason))

    def _probe_holders(self, now: float) -> None:
        service = self._service_or_raise()
        gone: set[str] = set()
        # One probe per client per probe interval, however many grants it holds and however
        # often the loop wakes: a probe per held grant per wake-up (every message) filled a
        # 2,500-shard worker's queue, and the grants and pongs behind them were dropped.
        for (client_id, _), _, at in list(self.scheduler.holding()):
            if now - at < self._probe_interval or client_id in gone:
                continue
            client = self._clients.get(client_id)
            if client is not None and now - client.last_probe < self._probe_interval:
                continue
            if client is not None:
                client.last_probe = now
            if client is None or not service.probe(client.peer):
                gone.add(client_id)
                self._set_aside(client_id, now, "connection gone while holding a grant")

    def _probe_deadline(self) -> float | None:
        """When the first holder is due a probe (see :meth:`_probe_holders`).  Exactly then:
        waking a probe interval after *now* found a holder a hair short of due and put its
        probe off by another interval, and a dead holder's bucket waited for it."""
        due = None
        for (client_id, _), _, at in self.scheduler.holding():
            client = self._clients.get(client_id)
            last = at if client is None else max(at, client.last_probe)
            when = last + self._probe_interval
            due = when if due is None else min(due, when)
        return due

    def _liveness_deadline(self) -> float | None:
        # O(clients + holds) per wake-up: the loop wakes after every message, and a sort of
        # 10,000 waiting requests per message starved it (issue 14).
        waiting = {str(c) for c in self.scheduler.owners()}
        waiting |= {c for (c, _), _, _ in self.scheduler.holding()}
        seen = [c.last_seen for cid, c in self._clients.items()
                if cid in waiting or c.parked]
        return min(seen) + self._client_timeout if seen else None

    def _heard_until(self, now: float) -> float:
        """Up to when every client message has been read: now, unless messages wait unread
        (a busy loop), then the last time none did.  A client is silent only if nothing of
        it came by then: its pings may be in the backlog."""
        return now if not self._service_or_raise().backlog() else self._caught_up

    def _expire_silent(self, now: float, heard: float) -> None:
        for client_id, client in list(self._clients.items()):
            if heard - client.last_seen >= self._client_timeout:
                self._drop(client_id, now, f"silent for {self._client_timeout:g}s")

    def _log_budget(self, now: float) -> None:
        scheduler = self.scheduler
        if not scheduler.budget_exhausted():
            self._held_logged = None
            return
        until = scheduler.reset_at
        marker = math.inf if until is None else until
        if self._held_logged == marker:
            return
        self._held_logged = marker
        log.warning("session start budget exhausted; next grant at %s",
                    "an unknown time (waiting for a budget update)" if until is None
                    else _wall(until, now))

    def _note(self, event: LimiterEvent) -> None:
        self.record.append(event)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
