"""The metrics registry: counters, gauges and histograms with labels, as Prometheus text.

Owns metric values and their exposition (text format 0.0.4: `# HELP` and `# TYPE`
lines, escaped label values, histograms as cumulative `_bucket{le=...}` series ending
in `+Inf`, then `_sum` and `_count`). Pure: no I/O, no clock, no locks (one event loop
updates and reads it). `metrics/http.py` serves `render()`; the agent's exit line
prints `snapshot()`.

Hot path: a caller resolves a labelled child once (`family.labels(...)`) and keeps
it; `inc` and `observe` are then a couple of attribute updates (a histogram finds its
bucket by bisect over fixed bounds). Counts a component already keeps cost nothing
between scrapes: a child reads them through a function at scrape time
(`set_function`), and collectors (`add_collector`) refresh label sets that change
(one series per consumer group and partition).
"""

from __future__ import annotations

import abc
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

# Seconds: from a local disk's fsync to a slow object-store request.
DEFAULT_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class Observer(Protocol):
    """What a component needs to time something: a histogram child, or nothing."""

    def observe(self, value: float) -> None: ...


class _NullObserver:
    def observe(self, value: float) -> None:
        return None


# The default of instrumented components that no registry was attached to.
NULL_OBSERVER: Observer = _NullObserver()


class CounterChild:
    """One series of a counter: only goes up (or reads a count kept elsewhere)."""

    __slots__ = ("_function", "value")

    def __init__(self) -> None:
        self.value: float = 0
        self._function: Callable[[], float] | None = None

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up (inc by {amount})")
        self.value += amount

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value from `function` at scrape time (a count the component keeps)."""
        self._function = function

    def get(self) -> float:
        return self._function() if self._function is not None else self.value


class GaugeChild:
    """One series of a gauge: any value, set, moved, or read at scrape time."""

    __slots__ = ("_function", "value")

    def __init__(self) -> None:
        self.value: float = 0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set_function(self, function: Callable[[], float]) -> None:
        self._function = function

    def get(self) -> float:
        return self._function() if self._function is not None else self.value


class HistogramChild:
    """One series of a histogram: per-bucket counts (not cumulative), sum and count."""

    __slots__ = ("_bounds", "bucket_counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        # The last slot is the +Inf bucket.
        self.bucket_counts = [0] * (len(bounds) + 1)
        self.sum: float = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.bucket_counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        # Summed when read, so an observation costs one update less.
        return sum(self.bucket_counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (+Inf, count)."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self._bounds, math.inf), self.bucket_counts, strict=True):
            total += n
            out.append((bound, total))
        return out


_Child = TypeVar("_Child", CounterChild, GaugeChild, HistogramChild)


class _Family(abc.ABC, Generic[_Child]):
    kind = ""
    sample_suffixes: tuple[str, ...] = ("",)

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}

    @abc.abstractmethod
    def _new_child(self) -> _Child: ...

    def labels(self, *values: str, **by_name: str) -> _Child:
        """The child of these label values, created on first use; keep it for the hot path."""
        if by_name:
            if values:
                raise ValueError("label values by position or by name, not both")
            if set(by_name) != set(self.labelnames):
                raise ValueError(f"{self.name} has labels {self.labelnames}, not {tuple(by_name)}")
            values = tuple(by_name[n] for n in self.labelnames)
        elif len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} has labels {self.labelnames}, got {len(values)} values")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new_child()
        return child

    def remove(self, *values: str) -> None:
        """Drop one series (a group that no longer exists)."""
        self._children.pop(tuple(values), None)

    def clear(self) -> None:
        self._children.clear()

    def children(self) -> Iterator[tuple[tuple[str, ...], _Child]]:
        return iter(list(self._children.items()))


class CounterFamily(_Family[CounterChild]):
    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()


class GaugeFamily(_Family[GaugeChild]):
    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()


class HistogramFamily(_Family[HistogramChild]):
    kind = "histogram"
    sample_suffixes = ("_bucket", "_sum", "_count")

    def __init__(
        self, name: str, help_text: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help_text, labelnames)
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if not bounds or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: histogram buckets must be numbers")
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: histogram buckets must increase")
        self.bounds = bounds

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)


Family = CounterFamily | GaugeFamily | HistogramFamily
_F = TypeVar("_F", CounterFamily, GaugeFamily, HistogramFamily)


class Registry:
    """Every metric of one process, in the order they were declared."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._sample_names: set[str] = set()
        self._collectors: list[Callable[[], None]] = []
        # Scrape-time functions and collectors that raised (their series are left out).
        self.callback_errors = 0

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> CounterFamily:
        if not name.endswith("_total"):
            # The format's convention, and prometheus_client's parser relies on it.
            raise ValueError(f"counter {name!r} must end in _total")
        return self._add(CounterFamily(name, help_text, labelnames))

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> GaugeFamily:
        return self._add(GaugeFamily(name, help_text, labelnames))

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS_S,
    ) -> HistogramFamily:
        if "le" in labelnames:
            raise ValueError(f"histogram {name!r}: 'le' is the bucket label")
        return self._add(HistogramFamily(name, help_text, labelnames, buckets))

    def add_collector(self, collector: Callable[[], None]) -> None:
        """Call `collector` before each render or snapshot (to refresh changing label sets)."""
        self._collectors.append(collector)

    def family(self, name: str) -> Family | None:
        return self._families.get(name)

    def _add(self, family: _F) -> _F:
        if not _METRIC_NAME.match(family.name):
            raise ValueError(f"invalid metric name {family.name!r}")
        for label in family.labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"{family.name}: invalid label name {label!r}")
        if len(set(family.labelnames)) != len(family.labelnames):
            raise ValueError(f"{family.name}: duplicate label names")
        samples = {family.name + suffix for suffix in family.sample_suffixes}
        if family.name in self._families or samples & self._sample_names:
            raise ValueError(f"metric {family.name!r} is declared twice")
        self._families[family.name] = family
        self._sample_names |= samples
        if not family.labelnames:
            family.labels()  # a series without labels exists (at zero) from the start
        return family

    def _collect(self) -> None:
        for collector in self._collectors:
            try:
                collector()
            except Exception:
                self.callback_errors += 1

    def _value(self, child: CounterChild | GaugeChild) -> float | None:
        try:
            return child.get()
        except Exception:
            self.callback_errors += 1
            return None

    def render(self) -> str:
        """The exposition in text format 0.0.4 (`text/plain; version=0.0.4`)."""
        self._collect()
        lines: list[str] = []
        for family in list(self._families.values()):
            lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            names = family.labelnames
            if isinstance(family, HistogramFamily):
                for values, hist in family.children():
                    pairs = list(zip(names, values, strict=True))
                    for bound, n in hist.cumulative():
                        labels = _labels([*pairs, ("le", _format(bound))])
                        lines.append(f"{family.name}_bucket{labels} {n}")
                    labels = _labels(pairs)
                    lines.append(f"{family.name}_sum{labels} {_format(hist.sum)}")
                    lines.append(f"{family.name}_count{labels} {hist.count}")
                continue
            for values, child in family.children():
                value = self._value(child)
                if value is not None:
                    labels = _labels(list(zip(names, values, strict=True)))
                    lines.append(f"{family.name}{labels} {_format(value)}")
        lines.append("")
        return "\n".join(lines)

    def snapshot(self) -> dict[str, float]:
        """Every series by its flat name (`name` or `name{label="value",...}`); histograms
        as their `_sum` and `_count`. Counts stay ints, so JSON shows them as such."""
        self._collect()
        out: dict[str, float] = {}
        for family in list(self._families.values()):
            names = family.labelnames
            if isinstance(family, HistogramFamily):
                for values, hist in family.children():
                    labels = _labels(list(zip(names, values, strict=True)))
                    out[f"{family.name}_sum{labels}"] = hist.sum
                    out[f"{family.name}_count{labels}"] = hist.count
                continue
            for values, child in family.children():
                value = self._value(child)
                if value is not None:
                    out[family.name + _labels(list(zip(names, values, strict=True)))] = value
        return out


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{n}="{_escape_label_value(v)}"' for n, v in pairs) + "}"


def _format(value: float) -> str:
    """A sample value or bucket bound as the format spells it (Go's ParseFloat reads it)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
