"""The hand-written Prometheus text writer writes what prometheus-client would, byte for byte."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from shardctl.cluster.exposition import Family, number

values = st.one_of(
    st.integers(), st.integers(min_value=-10**17, max_value=10**17),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans())
label_names = st.lists(st.sampled_from(["shard", "worker", "state", "type", "bucket", "a_b"]),
                       unique=True, max_size=4)


@given(values)
def test_numbers_are_written_as_prometheus_client_writes_them(value: float) -> None:
    assert number(value) == floatToGoString(value)


def test_numbers_switch_to_go_exponents_at_a_million() -> None:
    assert [number(v) for v in (0, 999_999, 1_000_000, 1_234_567, 0.25, math.inf)] == [
        "0.0", "999999.0", "1e+06", "1.234567e+06", "0.25", "+Inf"]


class _One(Collector):
    def __init__(self, family: GaugeMetricFamily | CounterMetricFamily) -> None:
        self.family = family

    def collect(self):  # type: ignore[no-untyped-def]
        yield self.family


def reference(family: Family) -> str:
    """prometheus-client's rendering of the same family."""
    kind = GaugeMetricFamily if family.kind == "gauge" else CounterMetricFamily
    if not family.labels:
        ((_, value),) = family.samples
        metric = kind(family.name, family.doc, value=value)
    else:
        metric = kind(family.name, family.doc, labels=list(family.labels))
        for labels, value in family.samples:
            metric.add_metric(list(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_One(metric))
    return generate_latest(registry).decode()


@st.composite
def families(draw: st.DrawFn) -> Family:
    kind = draw(st.sampled_from(["gauge", "counter"]))
    name = draw(st.sampled_from(["shardctl_x", "shardctl_shard_events"]))
    name += "_total" if kind == "counter" else ""
    doc = draw(st.text(max_size=30))
    labels = tuple(draw(label_names))
    if not labels:
        return Family.single(name, kind, doc, draw(values))
    samples = draw(st.lists(st.tuples(
        st.tuples(*[st.text(max_size=12) for _ in labels]), values), max_size=5))
    return Family(name, kind, doc, labels, samples)


@given(families())
def test_a_family_is_written_as_prometheus_client_writes_it(family: Family) -> None:
    assert family.text() == reference(family)


def test_label_values_and_help_are_escaped() -> None:
    family = Family("shardctl_x", "gauge", 'a \\ b\nc "d"', ("state",),
                    [(('we"ird\\\nstate',), 1)])
    assert family.text() == ('# HELP shardctl_x a \\\\ b\\nc "d"\n# TYPE shardctl_x gauge\n'
                             'shardctl_x{state="we\\"ird\\\\\\nstate"} 1.0\n')
