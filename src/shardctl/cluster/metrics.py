"""Prometheus metrics, ``/livez`` and ``/readyz``, served by the supervisor (``--metrics-port``).

One registry per supervisor with one collector that reads the supervisor's own state at
scrape time: the shard states, latencies and event counts the workers report every beat,
the limiter's budget, the workers' restarts and the bus counters.  Nothing is sampled in
between, so a scrape costs nothing while nobody scrapes.  The HTTP side is a few lines of
anyio on the supervisor's event loop (no thread reads state a task is changing).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shardctl.cluster.counters import DISCONNECT, READY, RESUMED
from shardctl.cluster.status_report import READY as READY_STATE
from shardctl.cluster.supervisor import Supervisor
from shardctl.errors import ConfigurationError

log = logging.getLogger(__name__)

#: A request line and headers larger than this are not a scraper's.
MAX_REQUEST_BYTES: Final = 16 * 1024
#: A client that sends no complete request in this time is dropped.
REQUEST_TIMEOUT: Final = 5.0


class SupervisorCollector(Collector):
    """Every shardctl metric, read from one :class:`Supervisor` when scraped."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    def collect(self) -> Iterable[Metric]:
        sup = self._sup
        shards = sup.status()
        by_state = GaugeMetricFamily("shardctl_shards", "Shards of this instance by state",
                                     labels=["state"])
        for name, count in sorted(Counter(s.state for s in shards).items()):
            by_state.add_metric([name], count)
        yield by_state
        state = GaugeMetricFamily("shardctl_shard_state",
                                  "1 for the current state of each shard",
                                  labels=["shard", "worker", "state"])
        ready = GaugeMetricFamily("shardctl_shard_ready", "1 when the shard is READY",
                                  labels=["shard"])
        latency = GaugeMetricFamily("shardctl_shard_heartbeat_latency_seconds",
                                    "Last heartbeat round trip", labels=["shard"])
        events = CounterMetricFamily("shardctl_shard_events", "Events received by the shard",
                                     labels=["shard"])
        reconnects = CounterMetricFamily("shardctl_shard_reconnects",
                                         "Connections of the shard that closed",
                                         labels=["shard"])
        resumes = CounterMetricFamily("shardctl_shard_resumes",
                                      "Sessions the shard resumed", labels=["shard"])
        by_type: Counter[str] = Counter()
        for s in shards:
            label = str(s.id)
            state.add_metric([label, str(s.worker), s.state], 1)
            ready.add_metric([label], 1 if s.state == READY_STATE else 0)
            if s.latency is not None:
                latency.add_metric([label], s.latency)
            totals = sup.event_totals.totals(s.id)
            by_type.update(totals)
            events.add_metric([label], sum(totals.values()))
            reconnects.add_metric([label], totals.get(DISCONNECT, 0))
            resumes.add_metric([label], totals.get(RESUMED, 0))
        yield from (state, ready, latency, events, reconnects, resumes)
        typed = CounterMetricFamily("shardctl_events", "Events received, by type",
                                    labels=["type"])
        for name, count in sorted(by_type.items()):
            typed.add_metric([name], count)
        yield typed
        yield CounterMetricFamily("shardctl_identifies",
                                  "Sessions started (READY received) by this instance",
                                  value=by_type.get(READY, 0))
        yield from self._budget()
        yield from self._identify_pace()
        yield from self._workers()
        yield from self._control()
        yield from self._bus()
        yield from self._stream()

    def _budget(self) -> Iterable[Metric]:
        sup = self._sup
        remaining: int | None = None
        total: int | None = None
        if sup.limiter is not None:
            with contextlib.suppress(RuntimeError):  # not serving yet
                remaining, total = sup.limiter.scheduler.remaining, sup.limiter.scheduler.total
        elif sup.info is not None:  # a shared limiter: what GET /gateway/bot said at start
            limit = sup.info.session_start_limit
            remaining, total = limit.remaining, limit.total
        if remaining is not None:
            yield GaugeMetricFamily("shardctl_session_starts_remaining",
                                    "session_start_limit.remaining: identifies left",
                                    value=remaining)
        if total is not None:
            yield GaugeMetricFamily("shardctl_session_starts_limit",
                                    "session_start_limit.total: identifies per window",
                                    value=total)

    def _identify_pace(self) -> Iterable[Metric]:
        """The built-in limiter's margin and op 9 count per bucket (a shared one has its own)."""
        if self._sup.limiter is None:
            return
        try:
            scheduler = self._sup.limiter.scheduler
        except RuntimeError:  # not serving yet
            return
        margin = GaugeMetricFamily(
            "shardctl_identify_margin_seconds",
            "What each identify bucket's gap gets on top of the interval (widens on op 9)",
            labels=["bucket"])
        rejected = CounterMetricFamily(
            "shardctl_identify_rejected", "IDENTIFYs Discord answered with op 9, by bucket",
            labels=["bucket"])
        op9 = scheduler.rejections()
        for bucket, seconds in scheduler.margins().items():
            margin.add_metric([str(bucket)], seconds)
            rejected.add_metric([str(bucket)], op9.get(bucket, 0))
        yield margin
        yield rejected

    def _workers(self) -> Iterable[Metric]:
        restarts = CounterMetricFamily("shardctl_worker_restarts",
                                       "Times the worker process was respawned",
                                       labels=["worker"])
        up = GaugeMetricFamily("shardctl_worker_up", "1 while the worker process runs",
                               labels=["worker"])
        for slot in self._sup.slots:
            restarts.add_metric([str(slot.index)], slot.restarts)
            up.add_metric([str(slot.index)], 1 if slot.alive else 0)
        yield restarts
        yield up

    def _control(self) -> Iterable[Metric]:
        refused = CounterMetricFamily(
            "shardctl_control_refused", "Control messages refused: replies dropped for peers "
            "gone or not reading, requests over a peer's rate, registrations without a proof, "
            "command requests refused",
            labels=["reason"])
        for reason, count in sorted(self._sup.control_refusals.items()):
            refused.add_metric([reason], count)
        yield refused

    def _bus(self) -> Iterable[Metric]:
        forwarder = self._sup._forwarder
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
                    ("blocked", stats.blocked, "Sends refused by a full consumer pipe")):
                yield CounterMetricFamily(f"shardctl_bus_{name}", doc, value=value)
        yield CounterMetricFamily("shardctl_listener_drops",
                                  "In-process events dropped by a full listener buffer",
                                  value=self._sup.listener_drops)


    def _stream(self) -> Iterable[Metric]:
        stream = self._sup._stream
        if stream is None:
            return
        for name, value, doc in (
                ("stored", stream.acked, "Events the stream acknowledged (with --stream)"),
                ("duplicates", stream.duplicates,
                 "Events the stream had stored already (a resend or a replay)"),
                ("stalls", stream.stalls,
                 "Times the events waiting for the stream held the workers back")):
            yield CounterMetricFamily(f"shardctl_stream_{name}", doc, value=value)
        yield GaugeMetricFamily("shardctl_stream_pending",
                                "Events not yet acknowledged by the stream",
                                value=stream.pending)
        yield GaugeMetricFamily("shardctl_stream_connected", "1 while NATS is reachable",
                                value=1 if stream.connected else 0)


def registry_for(supervisor: Supervisor) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(supervisor))
    return registry


def readiness(supervisor: Supervisor) -> tuple[bool, str]:
    """Ready when every shard this instance runs is READY."""
    shards = supervisor.status()
    waiting = [s for s in shards if s.state != READY_STATE]
    if shards and not waiting:
        return True, f"ready: {len(shards)} shards READY\n"
    return False, f"not ready: {len(waiting)} of {len(shards)} shards not READY\n"


async def serve_metrics(supervisor: Supervisor, port: int, host: str = "127.0.0.1", *,
                        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
                        ) -> None:
    """Serve ``/metrics``, ``/livez`` and ``/readyz`` until cancelled; starts with the port."""
    registry = registry_for(supervisor)
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
                        await _route(stream, path, supervisor, registry)
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
                 registry: CollectorRegistry) -> None:
    if path == "/metrics":
        await _respond(stream, 200, generate_latest(registry), CONTENT_TYPE_LATEST)
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
