"""A tiny Prometheus registry: counters, gauges, histograms; snapshots that merge across processes.

Leaf and pure: standard library only, no I/O, no locks (each process has its own registry and the
event loop is single-threaded). Hot-path cost is a dict get/set per increment. Labels are tuples
of values in `labelnames` order; they are stringified only when rendering.

Several worker processes: each one turns its registry into a `snapshot()` (plain JSON-able data),
somebody persists or ships those, and whoever answers a scrape `merge()`s them and `render()`s the
result. Counters and histograms add up; gauges add up too (open connections, pool sizes), so a
gauge must mean "this process's share". `panelsrv.http.ops.MetricsShare` does the shipping.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

Labels = tuple[Any, ...]
Snapshot = dict[str, dict[str, Any]]

# Seconds; suits requests answered from memory (sub-ms) up to slow database round trips.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Counter:
    __slots__ = ("help", "labelnames", "name", "values")

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), n: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + n

    def _snapshot(self) -> dict[str, Any]:
        return {
            "type": "counter",
            "help": self.help,
            "labels": list(self.labelnames),
            "samples": [[list(k), v] for k, v in self.values.items()],
        }


class Gauge:
    """A value set by its owner, or read from `fn` at snapshot time (e.g. a pool's size)."""

    __slots__ = ("fn", "help", "name", "value")

    def __init__(self, name: str, help: str, fn: Callable[[], float] | None = None) -> None:
        self.name = name
        self.help = help
        self.fn = fn
        self.value: float = 0

    def _snapshot(self) -> dict[str, Any]:
        value = self.fn() if self.fn is not None else self.value
        return {"type": "gauge", "help": self.help, "labels": [], "samples": [[[], value]]}


class Histogram:
    __slots__ = ("buckets", "help", "labelnames", "name", "series")

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self.buckets = tuple(sorted(buckets))
        # per label tuple: [count in bucket 0 .. count above the last bound, sum]
        self.series: dict[Labels, list[float]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0] * (len(self.buckets) + 1) + [0.0]
        series[bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def _snapshot(self) -> dict[str, Any]:
        return {
            "type": "histogram",
            "help": self.help,
            "labels": list(self.labelnames),
            "buckets": list(self.buckets),
            "samples": [[list(k), list(v)] for k, v in self.series.items()],
        }


class Registry:
    __slots__ = ("_metrics",)

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}

    def _add(self, metric: Counter | Gauge | Histogram) -> Any:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> Counter:
        return self._add(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, fn: Callable[[], float] | None = None) -> Gauge:
        return self._add(Gauge(name, help, fn))

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: tuple[str, ...] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self._add(Histogram(name, help, labelnames, buckets))

    def snapshot(self) -> Snapshot:
        return {name: metric._snapshot() for name, metric in self._metrics.items()}

    def render(self) -> bytes:
        return render(self.snapshot())


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Add up several processes' snapshots (samples with equal labels are summed)."""
    out: Snapshot = {}
    sums: dict[str, dict[tuple[Any, ...], Any]] = {}
    for snap in snapshots:
        for name, metric in snap.items():
            if name not in out:
                out[name] = {k: v for k, v in metric.items() if k != "samples"}
                sums[name] = {}
            acc = sums[name]
            hist = metric["type"] == "histogram"
            for labels, value in metric["samples"]:
                key = tuple(labels)
                if key not in acc:
                    acc[key] = list(value) if hist else value
                elif hist:
                    acc[key] = [a + b for a, b in zip(acc[key], value, strict=True)]
                else:
                    acc[key] += value
    for name, acc in sums.items():
        out[name]["samples"] = [[list(k), v] for k, v in acc.items()]
    return out


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: list[str], values: Iterable[Any], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(snapshot: Snapshot) -> bytes:
    """Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for name, metric in snapshot.items():
        kind, names = metric["type"], metric["labels"]
        lines.append(f"# HELP {name} {metric['help']}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in metric["samples"]:
            if kind != "histogram":
                lines.append(f"{name}{_labels(names, labels)} {_number(value)}")
                continue
            cumulative = 0
            for bound, count in zip([*metric["buckets"], float("inf")], value, strict=False):
                cumulative += count
                le = f'le="{_number(bound)}"'
                lines.append(f"{name}_bucket{_labels(names, labels, le)} {_number(cumulative)}")
            lines.append(f"{name}_sum{_labels(names, labels)} {_number(value[-1])}")
            lines.append(f"{name}_count{_labels(names, labels)} {_number(cumulative)}")
    lines.append("")
    return "\n".join(lines).encode()


class ServerMetrics:
    """The HTTP listener's instruments, in one registry."""

    __slots__ = ("connections", "latency", "rejects", "requests")

    def __init__(self, registry: Registry) -> None:
        self.requests = registry.counter(
            "panelsrv_http_requests_total",
            "Responses sent, by action and status",
            ("action", "status"),
        )
        self.latency = registry.histogram(
            "panelsrv_http_request_duration_seconds",
            "From the request's last byte to its response, by action",
            ("action",),
        )
        self.rejects = registry.counter(
            "panelsrv_http_rejects_total",
            "Requests or connections refused early, by reason",
            ("reason",),
        )
        self.connections = registry.gauge(
            "panelsrv_http_open_connections", "Open client connections"
        )

    def request_done(self, action: str, status: int, seconds: float) -> None:
        self.requests.inc((action or "none", status))
        self.latency.observe((action or "none",), seconds)

    def reject(self, reason: str) -> None:
        self.rejects.inc((reason,))
