"""TF Serving's metrics and their Prometheus text (`util/prometheus_exporter.cc`).

Metric names, labels and histogram buckets are TF Serving's: `/tensorflow/serving/request_count`
is exported as `:tensorflow:serving:request_count{model_name="m",status="OK"} 3`, histograms as
cumulative `_bucket{...,le="..."}` lines (TF's bucket limits, the last one `+Inf`) plus `_sum`
and `_count`. Each server instance has its own registry. Two are this server's own, for its gRPC
request queue (`admission.py`): the gauge `/tensorflow/serving/request_queue_depth` (exported
as `:tensorflow:serving:request_queue_depth{} 0`) and the counter
`/tensorflow/serving/request_queue_refused_count`.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Sequence


def exponential_buckets(scale: float, growth_factor: float, count: int) -> list[float]:
    """TF's `Buckets::Exponential`: `scale * growth_factor**i` for i < count (then +Inf)."""
    return [scale * growth_factor ** i for i in range(count)]


def prometheus_name(name: str) -> str:
    """`/tensorflow/serving/request_count` -> `:tensorflow:serving:request_count`."""
    name = re.sub(r"[^a-zA-Z0-9_]", ":", name)
    return "_" + name if name[:1].isdigit() else name


def _labels(names: Sequence[str], values: Sequence[str]) -> list[str]:
    out = []
    for name, value in zip(names, values, strict=True):
        name = re.sub(r"[^a-zA-Z0-9]", "_", name)
        value = str(value).replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'{name}="{value}"')
    return out


def _number(value: float) -> str:
    """absl::StrCat(double): six significant digits, as TF's exporter prints limits and sums."""
    return f"{value:g}"


class _IntCells:
    """An int64 value per label tuple, exported as one Prometheus `KIND` family."""

    KIND = ""

    def __init__(self, name: str, description: str, label_names: Sequence[str] = ()):
        self.name, self.description, self.label_names = name, description, tuple(label_names)
        self._cells: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def value(self, *labels: str) -> int:
        with self._lock:
            return self._cells.get(labels, 0)

    def first_value(self) -> int:
        with self._lock:
            return next(iter(self._cells.values()), 0)

    def lines(self) -> list[str]:
        name = prometheus_name(self.name)
        with self._lock:
            cells = sorted(self._cells.items())
        lines = [f"# TYPE {name} {self.KIND}"]
        for labels, value in cells:
            lines.append(f"{name}{{{','.join(_labels(self.label_names, labels))}}} {value}")
        return lines


class Counter(_IntCells):
    """A cumulative int64 counter with labels."""

    KIND = "counter"

    def increment(self, *labels: str, by: int = 1) -> None:
        with self._lock:
            self._cells[labels] = self._cells.get(labels, 0) + by


class Gauge(_IntCells):
    """An int64 value that goes up and down, with labels; exported as 0 before any set()."""

    KIND = "gauge"

    def __init__(self, name: str, description: str, label_names: Sequence[str] = ()):
        super().__init__(name, description, label_names)
        if not self.label_names:
            self._cells[()] = 0

    def set(self, value: int, *labels: str) -> None:
        with self._lock:
            self._cells[labels] = int(value)


class Histogram:
    """A sampler with TF's bucket rule: a value goes to the first bucket whose limit exceeds it."""

    def __init__(self, name: str, description: str, label_names: Sequence[str],
                 bucket_limits: Sequence[float]):
        self.name, self.description, self.label_names = name, description, tuple(label_names)
        self.limits = list(bucket_limits)
        self._cells: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        index = bisect.bisect_right(self.limits, value)
        with self._lock:
            counts, total = self._cells.setdefault(labels, ([0] * (len(self.limits) + 1), [0.0]))
            counts[index] += 1
            total[0] += value

    def count(self, *labels: str) -> int:
        with self._lock:
            cell = self._cells.get(labels)
            return sum(cell[0]) if cell else 0

    def total(self, *labels: str) -> float:
        with self._lock:
            cell = self._cells.get(labels)
            return cell[1][0] if cell else 0.0

    def lines(self) -> list[str]:
        name = prometheus_name(self.name)
        with self._lock:
            cells = sorted((k, (list(v[0]), v[1][0])) for k, v in self._cells.items())
        lines = [f"# TYPE {name} histogram"]
        for labels, (counts, total) in cells:
            label_text = _labels(self.label_names, labels)
            prefix = f"{name}_bucket{{{','.join(label_text)}{',' if label_text else ''}"
            cumulative = 0
            for i, count in enumerate(counts):
                cumulative += count
                limit = _number(self.limits[i]) if i < len(self.limits) else "+Inf"
                lines.append(f'{prefix}le="{limit}"}} {cumulative}')
            lines.append(f"{name}_sum{{{','.join(label_text)}}} {_number(total)}")
            lines.append(f"{name}_count{{{','.join(label_text)}}} {cumulative}")
        return lines


class ServingMetrics:
    """The metrics this server records, under TF Serving's names, labels and buckets."""

    def __init__(self):
        latency_buckets = exponential_buckets(10, 1.8, 33)
        size_buckets = exponential_buckets(1, 2, 14)
        self.request_count = Counter(
            "/tensorflow/serving/request_count", "The total number of requests.",
            ("model_name", "status"))
        self.request_latency = Histogram(
            "/tensorflow/serving/request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"), latency_buckets)
        self.runtime_latency = Histogram(
            "/tensorflow/serving/runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"), latency_buckets)
        self.request_example_counts = Histogram(
            "/tensorflow/serving/request_example_counts",
            "The number of tensorflow.Examples per request.", ("model",),
            exponential_buckets(1, 2, 15))
        self.request_example_count_total = Counter(
            "/tensorflow/serving/request_example_count_total",
            "The total number of tensorflow.Examples.", ("model",))
        self.model_warmup_latency = Histogram(
            "/tensorflow/serving/model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            ("model_path", "status"), latency_buckets)
        self.wrapped_run_count = Counter(
            "/tensorflow/serving/batching_session/wrapped_run_count",
            "Total count of run calls on the wrapped session")
        self.queuing_latency = Histogram(
            "/tensorflow/serving/batching_session/queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            ("thread_pool_name",), exponential_buckets(100, 1.2, 52))
        self.input_batch_size = Histogram(
            "/tensorflow/serving/batching_session/input_batch_size",
            "Tracks the batch size distribution on the inputs.", (), size_buckets)
        self.processed_batch_size = Histogram(
            "/tensorflow/serving/batching_session/processed_batch_size",
            "Tracks the batch size distribution on processing.", (), size_buckets)
        self.padding_size = Histogram(
            "/tensorflow/serving/batching_session/padding_size",
            "Tracks the padding size distribution on batches.", ("execution_batch_size",),
            size_buckets)
        # Not TF Serving's: the gRPC request queue (`admission.AdmissionQueue`).
        self.request_queue_depth = Gauge(
            "/tensorflow/serving/request_queue_depth",
            "Number of gRPC requests waiting for a thread (at most --grpc_max_queued_requests).")
        self.request_queue_refused_count = Counter(
            "/tensorflow/serving/request_queue_refused_count",
            "Number of gRPC requests refused with RESOURCE_EXHAUSTED: every thread busy and "
            "the queue full.")

    def all(self) -> list[Counter | Gauge | Histogram]:
        return [m for m in vars(self).values() if isinstance(m, Counter | Gauge | Histogram)]

    def find(self, name: str) -> Counter | Gauge | Histogram | None:
        return next((m for m in self.all() if m.name == name), None)

    def prometheus_text(self) -> str:
        lines: list[str] = []
        for metric in sorted(self.all(), key=lambda m: m.name):
            lines.extend(metric.lines())
        return "\n".join(lines) + "\n"

    def record_request(self, model_name: str, status: str, api: str, entrypoint: str,
                       latency_us: float) -> None:
        """RecordModelRequestCount always; RecordRequestLatency for successful requests."""
        self.request_count.increment(model_name, status)
        if status == "OK":
            self.request_latency.observe(latency_us, model_name, api, entrypoint)
