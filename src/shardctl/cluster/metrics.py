"""Prometheus metrics, ``/livez`` and ``/readyz``, served by the supervisor (``--metrics-port``).

Read at scrape time from the supervisor's own state: the shard states, latencies and event
counts the workers report every beat, the limiter's budget, the workers' restarts and the
bus counters.  Nothing is sampled in between, so a scrape costs nothing while nobody
scrapes.  The HTTP side is a few lines of anyio on the supervisor's event loop.

A scrape must not stall that loop (forwarding, liveness and the limiter run on it): at
10,000 shards the answer is 3.4 MB of per-shard series.  So the loop only copies what the
scrape reports (:func:`snapshot`, a few milliseconds: no thread ever reads state a task is
changing) and a worker thread writes the text from the copy (:func:`render`, with the
hand-written writer of cluster/exposition.py rather than prometheus-client's per-sample
objects).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.abc
import anyio.to_thread
from anyio.abc import SocketAttribute
from prometheus_client import CONTENT_TYPE_LATEST

from shardctl.cluster.counters import DISCONNECT, READY, RESUMED
from shardctl.cluster.exposition import Family, label_value, number, series
from shardctl.cluster.status_report import READY as READY_STATE
from shardctl.cluster.supervisor import Supervisor
from shardctl.errors import ConfigurationError

log = logging.getLogger(__name__)

#: A request line and headers larger than this are not a scraper's.
MAX_REQUEST_BYTES: Final = 16 * 1024
#: A client that sends no complete request in this time is dropped.
REQUEST_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What a scrape reports, copied on the event loop so it can be rendered anywhere.

    ``shards``: (id, worker, state, latency) of each shard, in order; ``bases`` and
    ``currents``: :meth:`EventTotals.snapshot`; ``families``: everything that is not per
    shard (a few samples each), ready to write.
    """

    shards: list[tuple[int, int, str, float | None]]
    bases: Mapping[int, Mapping[str, int]]
    currents: Mapping[int, Mapping[str, int]]
    families: list[Family]


def snapshot(supervisor: Supervisor) -> MetricsSnapshot:
    """On the loop: a few milliseconds at 10,000 shards (nothing per shard is formatted)."""
    sup = supervisor
    families = [*_budget(sup), *_identify_pace(sup), *_workers(sup), *_control(sup),
                *_bus(sup), *_stream(sup)]
    return MetricsSnapshot(sup.status_rows("worker", "state", "latency"),
                           *sup.event_totals.snapshot(), families)


def render(snap: MetricsSnapshot) -> bytes:
    """The Prometheus text of ``snap``: the same bytes prometheus-client would write for
    these families (cluster/exposition.py), in a fraction of its time.  Reads only
    ``snap``, so it may run in a thread while the loop goes on."""
    by_type, parts = _per_shard(snap)
    by_state = Counter(state for _, _, state, _ in snap.shards)
    return "".join([
        Family("shardctl_shards", "gauge", "Shards of this instance by state", ("state",),
               [((name,), n) for name, n in sorted(by_state.items())]).text(),
        *parts,
        Family("shardctl_events_total", "counter", "Events received, by type", ("type",),
               [((name,), n) for name, n in sorted(by_type.items())]).text(),
        Family.single("shardctl_identifies_total", "counter",
                      "Sessions started (READY received) by this instance",
                      by_type.get(READY, 0)).text(),
        *(family.text() for family in snap.families),
    ]).encode()


async def scrape(supervisor: Supervisor, renders: anyio.CapacityLimiter) -> bytes:
    """``/metrics``: copied on the loop, rendered in a worker thread, ``renders`` at a
    time (a scraper that asks again before its answer came waits, holding no copy)."""
    async with renders:
        snap = snapshot(supervisor)
        return await anyio.to_thread.run_sync(render, snap)


def _per_shard(snap: MetricsSnapshot) -> tuple[dict[str, int], list[str]]:
    """The six per-shard families (one f-string per series) and the counts by type."""
    shards = snap.shards
    escaped = {state: label_value(state) for state in {row[2] for row in shards}}
    by_type: dict[str, int] = {}
    events, reconnects, resumes = [], [], []
    for shard, _, _, _ in shards:
        base = snap.bases.get(shard, _NONE)
        current = snap.currents.get(shard, _NONE)
        for counts in (base, current):
            for name, n in counts.items():
                by_type[name] = by_type.get(name, 0) + n
        events.append(f'shardctl_shard_events_total{{shard="{shard}"}} '
                      f"{number(sum(base.values()) + sum(current.values()))}\n")
        reconnects.append(f'shardctl_shard_reconnects_total{{shard="{shard}"}} '
                          f"{number(base.get(DISCONNECT, 0) + current.get(DISCONNECT, 0))}\n")
        resumes.append(f'shardctl_shard_resumes_total{{shard="{shard}"}} '
                       f"{number(base.get(RESUMED, 0) + current.get(RESUMED, 0))}\n")
    return by_type, [
        series("shardctl_shard_state", "gauge", "1 for the current state of each shard",
               [f'shardctl_shard_state{{shard="{shard}",state="{escaped[state]}",'
                f'worker="{worker}"}} 1.0\n' for shard, worker, state, _ in shards]),
        series("shardctl_shard_ready", "gauge", "1 when the shard is READY",
               [f'shardctl_shard_ready{{shard="{shard}"}} '
                f'{"1.0" if state == READY_STATE else "0.0"}\n' for shard, _, state, _ in shards]),
        series("shardctl_shard_heartbeat_latency_seconds", "gauge", "Last heartbeat round trip",
               [f'shardctl_shard_heartbeat_latency_seconds{{shard="{shard}"}} '
                f"{number(latency)}\n" for shard, _, _, latency in shards
                if latency is not None]),
        series("shardctl_shard_events_total", "counter", "Events received by the shard",
               events),
        series("shardctl_shard_reconnects_total", "counter",
               "Connections of the shard that closed", reconnects),
        series("shardctl_shard_resumes_total", "counter", "Sessions the shard resumed",
               resumes),
    ]


_NONE: Final[Mapping[str, int]] = {}


def _budget(sup: Supervisor) -> Iterator[Family]:
    remaining: int | None = None
    total: int | None = None
    if sup.limiter is not None:
        with contextlib.suppress(RuntimeError):  # not serving yet
            remaining, total = sup.limiter.scheduler.remaining, sup.limiter.scheduler.total
    elif sup.info is not None:  # a shared limiter: what GET /gateway/bot said at start
        limit = sup.info.session_start_limit
        remaining, total = limit.remaining, limit.total
    if remaining is not None:
        yield Family.single("shardctl_session_starts_remaining", "gauge",
                            "session_start_limit.remaining: identifies left", remaining)
    if total is not None:
        yield Family.single("shardctl_session_starts_limit", "gauge",
                            "session_start_limit.total: identifies per window", total)


def _identify_pace(sup: Supervisor) -> Iterator[Family]:
    """The built-in limiter's margin and op 9 count per bucket (a shared one has its own)."""
    if sup.limiter is None:
        return
    try:
        scheduler = sup.limiter.scheduler
    except RuntimeError:  # not serving yet
        return
    margins = scheduler.margins()
    op9 = scheduler.rejections()
    yield Family("shardctl_identify_margin_seconds", "gauge",
                 "What each identify bucket's gap gets on top of the interval (widens on op 9)",
                 ("bucket",), [((str(bucket),), seconds) for bucket, seconds in margins.items()])
    yield Family("shardctl_identify_rejected_total", "counter",
                 "IDENTIFYs Discord answered with op 9, by bucket",
                 ("bucket",), [((str(bucket),), op9.get(bucket, 0)) for bucket in margins])


def _workers(sup: Supervisor) -> Iterator[Family]:
    yield Family("shardctl_worker_restarts_total", "counter",
                 "Times the worker process was respawned", ("worker",),
                 [((str(slot.index),), slot.restarts) for slot in sup.slots])
    yield Family("shardctl_worker_up", "gauge", "1 while the worker process runs", ("worker",),
                 [((str(slot.index),), 1 if slot.alive else 0) for slot in sup.slots])


def _control(sup: Supervisor) -> Iterator[Family]:
    yield Family(
        "shardctl_control_refused_total", "counter",
        "Control messages refused: replies dropped for peers gone or not reading, requests "
        "over a peer's rate, registrations without a proof, command requests refused",
        ("reason",), [((reason,), n) for reason, n in sorted(sup.control_refusals.items())])


def _bus(sup: Supervisor) -> Iterator[Family]:
    forwarder = sup._forwarder
    if forwarder is not None:
        stats = forwarder.stats
        for name, value, doc in (
                ("forwarded", stats.events, "Events forwarded to consumers"),
                ("upstream_gaps", stats.upstream_gaps,
                 "Times a shard's seq jumped forward between worker and supervisor"),
                ("duplicates", stats.duplicates, "Resume replays dropped as already sent"),
                ("malformed", stats.malformed, "Worker batches rejected as malformed"),
                ("refused", stats.refused,
                 "Batches dropped without a worker's current publish key"),
                ("foreign", stats.foreign,
                 "Events dropped: their shard is not the publishing worker's"),
                ("blocked", stats.blocked, "Sends refused by a full consumer pipe"),
                ("stamped_batches", stats.stamped,
                 "Worker-stamped batches forwarded untouched"),
                ("restamped_batches", stats.restamped,
                 "Worker-stamped batches that did not continue the bus: renumbered here"),
                ("rebases", stats.rebased,
                 "Workers asked to move their event numbering back in step with the bus"),
                ("batch_messages", forwarder.outlet.messages,
                 "Frames sent on events-batch (each carries up to 64 events)")):
            yield Family.single(f"shardctl_bus_{name}_total", "counter", doc, value)
        yield Family.single("shardctl_bus_batch_subscribers", "gauge",
                            "Consumers subscribed on events-batch", forwarder.batch_subscribers)
    yield Family.single("shardctl_listener_drops_total", "counter",
                        "In-process events dropped by a full listener buffer",
                        sup.listener_drops)


def _stream(sup: Supervisor) -> Iterator[Family]:
    stream = sup._stream
    if stream is None:
        return
    for name, value, doc in (
            ("stored", stream.acked, "Events the stream acknowledged (with --stream)"),
            ("duplicates", stream.duplicates,
             "Events the stream had stored already (a resend or a replay)"),
            ("stalls", stream.stalls,
             "Times the events waiting for the stream held the workers back")):
        yield Family.single(f"shardctl_stream_{name}_total", "counter", doc, value)
    yield Family.single("shardctl_stream_pending", "gauge",
                        "Events not yet acknowledged by the stream", stream.pending)
    yield Family.single("shardctl_stream_connected", "gauge", "1 while NATS is reachable",
                        1 if stream.connected else 0)


def readiness(supervisor: Supervisor) -> tuple[bool, str]:
    """Ready when every shard this instance runs is READY (its states alone: cheap enough
    for the loop at 10,000 shards)."""
    shards = supervisor.status_rows("state")
    waiting = sum(1 for _, state in shards if state != READY_STATE)
    if shards and not waiting:
        return True, f"ready: {len(shards)} shards READY\n"
    return False, f"not ready: {waiting} of {len(shards)} shards not READY\n"


async def serve_metrics(supervisor: Supervisor, port: int, host: str = "127.0.0.1", *,
                        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
                        ) -> None:
    """Serve ``/metrics``, ``/livez`` and ``/readyz`` until cancelled; starts with the port."""
    renders = anyio.CapacityLimiter(1)  # one render thread at a time, whoever scrapes
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:  # the CLI checked the address; another process took it since
        raise ConfigurationError(
            f"--metrics-port {port}: cannot listen on {host}: {exc.strerror or exc}") from None
    async with listener:
        bound = listener.listeners[0].extra(SocketAttribute.local_port)
        log.info("metrics: serving http://%s:%d/metrics (and /livez, /readyz)", host, bound)
        task_status.started(bound)

        async def handle(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                try:
                    with anyio.fail_after(REQUEST_TIMEOUT):
                        path = await _read_request_path(stream)
                    if path is None:
                        await _respond(stream, 400, b"bad request\n")
                    else:
                        await _route(stream, path, supervisor, renders)
                except (TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream,
                        OSError):
                    return

        await listener.serve(handle)


async def _read_request_path(stream: anyio.abc.SocketStream) -> str | None:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_REQUEST_BYTES:
            return None
        data += await stream.receive()
    parts = data.split(b"\r\n", 1)[0].split()
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
        return None
    return parts[1].decode("latin-1").split("?", 1)[0]


async def _route(stream: anyio.abc.SocketStream, path: str, supervisor: Supervisor,
                 renders: anyio.CapacityLimiter) -> None:
    if path == "/metrics":
        await _respond(stream, 200, await scrape(supervisor, renders), CONTENT_TYPE_LATEST)
    elif path == "/livez":
        failure = supervisor._failure
        if failure is None:
            await _respond(stream, 200, b"ok\n")
        else:
            await _respond(stream, 503, f"failed: {failure}\n".encode())
    elif path == "/readyz":
        ok, text = readiness(supervisor)
        await _respond(stream, 200 if ok else 503, text.encode())
    else:
        await _respond(stream, 404, b"not found: try /metrics, /livez or /readyz\n")


_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found",
                   503: "Service Unavailable"}


async def _respond(stream: anyio.abc.SocketStream, status: int, body: bytes,
                   content_type: str = "text/plain; charset=utf-8") -> None:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
    await stream.send(head + body)
