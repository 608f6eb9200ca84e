"""The metrics registry: its exposition parses with prometheus_client's parser and says
what was counted; label values are escaped; histogram buckets are cumulative; the
snapshot is a flat view of the same values."""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from driftlog.metrics.registry import NULL_OBSERVER, Registry


def _parse(text: str) -> dict[str, tuple[str, str, list[Sample]]]:
    """Family name -> (type, help, samples); fails on a sample the parser saw as untyped
    (a sample whose name does not belong to the family declared before it)."""
    out: dict[str, tuple[str, str, list[Sample]]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type != "untyped", f"stray sample {family.samples}"
        assert family.name not in out, f"{family.name} declared twice"
        out[family.name] = (family.type, family.documentation, list(family.samples))
    return out


def test_counters_and_gauges_parse_with_their_values_and_types() -> None:
    registry = Registry()
    requests = registry.counter("app_requests_total", "Requests handled.", ["api", "error"])
    produce_ok = requests.labels("produce", "none")
    produce_ok.inc()
    produce_ok.inc(4)
    requests.labels(api="fetch", error="none").inc(2)
    connections = registry.gauge("app_connections", "Open connections.")
    connections.labels().set(7)
    connections.labels().dec(2)
    ratio = registry.gauge("app_ratio", "A ratio.")
    ratio.labels().set(0.25)

    families = _parse(registry.render())

    kind, help_text, samples = families["app_requests"]  # the parser drops _total
    assert (kind, help_text) == ("counter", "Requests handled.")
    assert {(s.name, s.labels["api"], s.labels["error"], s.value) for s in samples} == {
        ("app_requests_total", "produce", "none", 5.0),
        ("app_requests_total", "fetch", "none", 2.0),
    }
    assert families["app_connections"][0] == "gauge"
    assert families["app_connections"][2][0].value == 5.0
    assert families["app_ratio"][2][0].value == 0.25


def test_an_unlabelled_family_shows_zero_before_anything_happens() -> None:
    registry = Registry()
    registry.counter("app_errors_total", "Errors.")
    registry.histogram("app_wait_seconds", "Waits.", buckets=(1.0,))
    families = _parse(registry.render())
    assert families["app_errors"][2][0].value == 0
    assert [s.value for s in families["app_wait_seconds"][2]] == [0, 0, 0, 0]


def test_label_values_and_help_are_escaped() -> None:
    registry = Registry()
    nasty = 'quote " backslash \\ newline \n end'
    help_text = 'Help with \\ and\na second line and "quotes".'
    family = registry.counter("app_odd_total", help_text, ["v"])
    family.labels(nasty).inc()

    text = registry.render()
    assert 'app_odd_total{v="quote \\" backslash \\\\ newline \\n end"} 1\n' in text
    assert "# HELP app_odd_total Help with \\\\ and\\na second line" in text
    families = _parse(text)
    _, parsed_help, samples = families["app_odd"]
    assert parsed_help == help_text
    assert samples[0].labels == {"v": nasty}


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    registry = Registry()
    latency = registry.histogram(
        "app_latency_seconds", "Latency.", ["op"], buckets=(0.01, 0.1, 1.0)
    )
    put = latency.labels("put")
    for value in (0.005, 0.01, 0.05, 0.1, 0.5, 2.0, 30.0):
        put.observe(value)
    latency.labels("get").observe(0.2)

    kind, _, samples = _parse(registry.render())["app_latency_seconds"]
    assert kind == "histogram"
    put_samples = [s for s in samples if s.labels["op"] == "put"]
    buckets = {s.labels["le"]: s.value for s in put_samples if s.name.endswith("_bucket")}
    # A value equal to a bound is counted in that bound's bucket ("le").
    assert buckets == {"0.01": 2, "0.1": 4, "1": 5, "+Inf": 7}
    by_name = {s.name: s.value for s in put_samples if not s.name.endswith("_bucket")}
    assert by_name["app_latency_seconds_count"] == 7
    assert by_name["app_latency_seconds_sum"] == pytest.approx(32.665)
    get_buckets = [s.value for s in samples if s.labels["op"] == "get" and "le" in s.labels]
    assert get_buckets == [0, 0, 1, 1]


def test_scrape_time_functions_and_collectors() -> None:
    registry = Registry()
    kept = {"hits": 3}
    hits = registry.counter("app_hits_total", "Hits a component counts itself.")
    hits.labels().set_function(lambda: kept["hits"])
    lag = registry.gauge("app_lag", "Lag per partition.", ["partition"])
    partitions = {"0": 5, "1": 0}

    def refresh_lag() -> None:
        lag.clear()
        for partition, value in partitions.items():
            lag.labels(partition).set(value)

    registry.add_collector(refresh_lag)
    assert registry.snapshot() == {
        "app_hits_total": 3,
        'app_lag{partition="0"}': 5,
        'app_lag{partition="1"}': 0,
    }
    kept["hits"] = 10
    del partitions["1"]
    families = _parse(registry.render())
    assert families["app_hits"][2][0].value == 10
    assert [(s.labels, s.value) for s in families["app_lag"][2]] == [({"partition": "0"}, 5)]


def test_a_failing_function_leaves_its_series_out_and_is_counted() -> None:
    registry = Registry()
    broken = registry.gauge("app_broken", "Reads a component that fails.")
    broken.labels().set_function(lambda: 1 / 0)
    registry.gauge("app_fine", "Fine.").labels().set(1)
    registry.add_collector(lambda: [][0])

    families = _parse(registry.render())
    assert families["app_broken"][2] == []
    assert families["app_fine"][2][0].value == 1
    assert registry.callback_errors == 2


def test_snapshot_is_flat_and_keeps_counts_integral() -> None:
    registry = Registry()
    registry.counter("app_puts_total", "Puts.").labels().inc(3)
    registry.counter("app_calls_total", "Calls.", ["op"]).labels("get").inc()
    hist = registry.histogram("app_seconds", "Time.", ["op"], buckets=(1.0,)).labels("put")
    hist.observe(0.5)
    hist.observe(2.0)

    snapshot = registry.snapshot()
    assert snapshot == {
        "app_puts_total": 3,
        'app_calls_total{op="get"}': 1,
        'app_seconds_sum{op="put"}': 2.5,
        'app_seconds_count{op="put"}': 2,
    }
    # The exit line is JSON: integral counts stay integers there.
    assert json.loads(json.dumps(snapshot))["app_puts_total"] == 3
    assert isinstance(snapshot["app_puts_total"], int)


def test_special_values_are_spelled_as_the_format_wants() -> None:
    registry = Registry()
    family = registry.gauge("app_value", "Values.", ["case"])
    family.labels("inf").set(math.inf)
    family.labels("ninf").set(-math.inf)
    family.labels("nan").set(math.nan)
    family.labels("small").set(1e-7)
    text = registry.render()
    assert 'app_value{case="inf"} +Inf\n' in text
    assert 'app_value{case="ninf"} -Inf\n' in text
    assert 'app_value{case="nan"} NaN\n' in text
    values = {s.labels["case"]: s.value for s in _parse(text)["app_value"][2]}
    assert values["inf"] == math.inf and values["ninf"] == -math.inf
    assert math.isnan(values["nan"]) and values["small"] == 1e-7


def test_declarations_are_checked() -> None:
    registry = Registry()
    registry.counter("app_x_total", "X.")
    registry.histogram("app_h", "H.")
    with pytest.raises(ValueError, match="twice"):
        registry.counter("app_x_total", "again")
    with pytest.raises(ValueError, match="twice"):
        registry.gauge("app_h_count", "collides with the histogram's _count series")
    with pytest.raises(ValueError, match="_total"):
        registry.counter("app_y", "a counter without _total")
    with pytest.raises(ValueError, match="invalid metric name"):
        registry.gauge("app-z", "dash")
    with pytest.raises(ValueError, match="label"):
        registry.gauge("app_l", "L.", ["bad-label"])
    with pytest.raises(ValueError, match="le"):
        registry.histogram("app_le", "L.", ["le"])
    with pytest.raises(ValueError, match="increase"):
        registry.histogram("app_b", "B.", buckets=(1.0, 0.5))
    family = registry.counter("app_c_total", "C.", ["a", "b"])
    with pytest.raises(ValueError):
        family.labels("only one")
    with pytest.raises(ValueError):
        family.labels(a="x", c="y")
    with pytest.raises(ValueError, match="only goes up"):
        family.labels("x", "y").inc(-1)


def test_removed_series_disappear() -> None:
    registry = Registry()
    family = registry.gauge("app_g", "G.", ["group"])
    family.labels("a").set(1)
    family.labels("b").set(2)
    family.remove("a")
    assert registry.snapshot() == {'app_g{group="b"}': 2}


def test_null_observer_accepts_anything() -> None:
    NULL_OBSERVER.observe(1.0)  # components not attached to a registry time into it
