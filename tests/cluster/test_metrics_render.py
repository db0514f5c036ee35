"""``/metrics`` as rendered from a snapshot: every family README documents, with the values
the supervisor holds, in the bytes prometheus-client wrote before the hand-written writer."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from statekit import reported_supervisor

from shardctl.cluster.metrics import render, snapshot
from shardctl.cluster.supervisor import ShardStatus, Supervisor
from shardctl.ipc import control_messages as wire
from shardctl.ipc.bus import ForwarderStats

README = Path(__file__).resolve().parents[2] / "README.md"


class PerShard(Collector):
    """What the supervisor's collector yielded per shard with prometheus-client's objects
    before this writer (kept as the reference the hand-written text must equal)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self):  # type: ignore[no-untyped-def]
        shards = self.sup.status()
        by_state = GaugeMetricFamily("shardctl_shards", "Shards of this instance by state",
                                     labels=["state"])
        for name, count in sorted(Counter(s.state for s in shards).items()):
            by_state.add_metric([name], count)
        yield by_state
        state = GaugeMetricFamily("shardctl_shard_state", "1 for the current state of each shard",
                                  labels=["shard", "worker", "state"])
        ready = GaugeMetricFamily("shardctl_shard_ready", "1 when the shard is READY",
                                  labels=["shard"])
        latency = GaugeMetricFamily("shardctl_shard_heartbeat_latency_seconds",
                                    "Last heartbeat round trip", labels=["shard"])
        events = CounterMetricFamily("shardctl_shard_events", "Events received by the shard",
                                     labels=["shard"])
        reconnects = CounterMetricFamily("shardctl_shard_reconnects",
                                         "Connections of the shard that closed", labels=["shard"])
        resumes = CounterMetricFamily("shardctl_shard_resumes", "Sessions the shard resumed",
                                      labels=["shard"])
        by_type: Counter[str] = Counter()
        for s in shards:
            label = str(s.id)
            state.add_metric([label, str(s.worker), s.state], 1)
            ready.add_metric([label], 1 if s.state == "ready" else 0)
            if s.latency is not None:
                latency.add_metric([label], s.latency)
            totals = self.sup.event_totals.totals(s.id)
            by_type.update(totals)
            events.add_metric([label], sum(totals.values()))
            reconnects.add_metric([label], totals.get("SHARD_DISCONNECT", 0))
            resumes.add_metric([label], totals.get("SHARD_RESUMED", 0))
        yield from (state, ready, latency, events, reconnects, resumes)
        typed = CounterMetricFamily("shardctl_events", "Events received, by type",
                                    labels=["type"])
        for name, count in sorted(by_type.items()):
            typed.add_metric([name], count)
        yield typed
        yield CounterMetricFamily("shardctl_identifies",
                                  "Sessions started (READY received) by this instance",
                                  value=by_type.get("READY", 0))


def reference_text(sup: Supervisor) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PerShard(sup))
    per_shard = generate_latest(registry).decode()
    rest = "".join(family.text() for family in snapshot(sup).families)  # test_exposition.py
    return per_shard + rest


def with_services(sup: Supervisor) -> Supervisor:
    """The limiter, the bus and the stream a running supervisor has (what /metrics reads)."""
    scheduler = SimpleNamespace(remaining=990, total=1000, margins=lambda: {0: 0.02, 1: 0.5},
                                rejections=lambda: {1: 3})
    sup.limiter = SimpleNamespace(scheduler=scheduler)  # type: ignore[assignment]
    sup._forwarder = SimpleNamespace(stats=ForwarderStats(  # type: ignore[assignment]
        events=12, upstream_gaps=1, duplicates=2, malformed=3, refused=4, foreign=5, blocked=6,
        stamped=13, restamped=14, rebased=15), outlet=SimpleNamespace(messages=11),
        batch_subscribers=2)
    sup._stream = SimpleNamespace(acked=7, duplicates=8, stalls=9, pending=10,  # type: ignore[assignment]
                                  connected=True)
    return sup


shard_reports = st.lists(st.tuples(
    st.text(max_size=10), st.none() | st.floats(allow_nan=False),
    st.dictionaries(st.text(max_size=8), st.integers(0, 10**18), max_size=4),
    st.integers(0, 3)), max_size=12)


@settings(max_examples=50, deadline=None)
@given(shard_reports)
def test_per_shard_families_are_the_bytes_prometheus_client_wrote(
        reports: list[tuple[str, float | None, dict[str, int], int]]) -> None:
    sup = Supervisor(token="sandbox-token", api_url="http://127.0.0.1:9")
    for shard_id, (state, latency, counts, worker) in enumerate(reports):
        sup._status[shard_id] = status = ShardStatus(shard_id, worker=worker)
        status.observe(wire.ShardReport(shard_id, state, latency=latency), 1, lambda _: True)
        sup.event_totals.observe(shard_id, 1, counts)
    assert render(snapshot(sup)).decode() == reference_text(sup)


def test_a_2000_shard_scrape_reads_back_as_the_supervisor_holds_it() -> None:
    sup = reported_supervisor(2_000, latency=lambda shard: None if shard % 7 == 0 else shard / 1e4)
    text = render(snapshot(sup)).decode()
    assert text == reference_text(sup)
    got = {f.name: f for f in text_string_to_metric_families(text)}

    def per_shard(name: str) -> dict[int, float]:
        return {int(s.labels["shard"]): s.value for s in got[name].samples}

    statuses = sup.status()
    totals = {s.id: sup.event_totals.totals(s.id) for s in statuses}
    assert per_shard("shardctl_shard_ready") == {
        s.id: 1.0 if s.state == "ready" else 0.0 for s in statuses}
    assert per_shard("shardctl_shard_heartbeat_latency_seconds") == {
        s.id: s.latency for s in statuses if s.latency is not None}
    assert per_shard("shardctl_shard_events") == {i: sum(t.values()) for i, t in totals.items()}
    assert per_shard("shardctl_shard_reconnects") == {
        i: t["SHARD_DISCONNECT"] for i, t in totals.items()}
    assert per_shard("shardctl_shard_resumes") == {
        i: t["SHARD_RESUMED"] for i, t in totals.items()}
    assert {(s.labels["shard"], s.labels["worker"], s.labels["state"])
            for s in got["shardctl_shard_state"].samples} == {
        (str(s.id), str(s.worker), s.state) for s in statuses}
    assert {s.labels["state"]: s.value for s in got["shardctl_shards"].samples} == Counter(
        s.state for s in statuses)
    by_type: Counter[str] = Counter()
    for t in totals.values():
        by_type.update(t)
    assert {s.labels["type"]: s.value for s in got["shardctl_events"].samples} == by_type
    assert got["shardctl_identifies"].samples[0].value == by_type["READY"]


def readme_table() -> dict[str, tuple[str, frozenset[str]]]:
    """README's metrics table: name -> (type, labels)."""
    section = README.read_text().split("### Metrics, `/livez`, `/readyz`", 1)[1]
    rows = re.findall(r"^\| `(shardctl_\w+)` \| (\w+) \|([^|]*)\|", section, re.MULTILINE)
    return {name: (kind, frozenset(re.findall(r"`(\w+)`", labels)))
            for name, kind, labels in rows}


def exposed(metric: Metric) -> str:
    return metric.name + "_total" if metric.type == "counter" else metric.name


def test_every_family_readme_documents_is_served_with_its_type_and_labels() -> None:
    text = render(snapshot(with_services(reported_supervisor(8)))).decode()
    served = {}
    for family in text_string_to_metric_families(text):
        labels = frozenset(k for s in family.samples for k in s.labels)
        served[exposed(family)] = (family.type, labels)
    assert served == readme_table()
