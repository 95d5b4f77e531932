"""Admission of gRPC requests: at most `max_running` run at once, up to `max_queued` more wait.

gRPC Python's `maximum_concurrent_rpcs` (like the gRPC thread quota of `tensorflow_model_server`,
tensorflow/serving#1795) refuses the RPC after the limit at once with RESOURCE_EXHAUSTED, so a
burst of more concurrent clients than `--grpc_max_threads` fails although every request would be
answered a few milliseconds later. Here an RPC that finds every slot taken waits, in arrival
order, until one frees:

- at most `max_running` RPCs run their handler at once (`--grpc_max_threads`);
- up to `max_queued` more wait for a slot (`--grpc_max_queued_requests`), each at most until its
  gRPC deadline: one still waiting then is answered DEADLINE_EXCEEDED (CANCELLED if its client
  gave up) and never runs;
- an RPC that finds the queue full is answered RESOURCE_EXHAUSTED at once. With
  `max_queued=0` that is the old behaviour: the (max_running+1)-th concurrent RPC is refused.

Every waiting RPC holds one thread of the gRPC server's pool (blocked, not running), so the
pool and gRPC's own concurrency ceiling are sized above `max_running + max_queued`
(`grpc_service.start_grpc_server`). The queue's length is the gauge
`/tensorflow/serving/request_queue_depth`; refusals count in
`/tensorflow/serving/request_queue_refused_count`.
"""

from __future__ import annotations

import threading
from collections import deque

import grpc

from serving.model_server.errors import ServingError
from serving.model_server.metrics import ServingMetrics

_DEADLINE_SLACK_S = 0.05


def remaining_seconds(context: grpc.ServicerContext) -> float | None:
    """Seconds until the RPC's deadline; None without one (gRPC then reports ~9.2e18 s, more
    than `threading` can wait)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > threading.TIMEOUT_MAX:
        return None
    return remaining


class _Waiter:
    __slots__ = ("admitted", "event")

    def __init__(self) -> None:
        self.admitted = False
        self.event = threading.Event()


class AdmissionQueue:
    """A FIFO of RPCs waiting for one of `max_running` slots (module doc). Thread-safe."""

    def __init__(self, max_running: int, max_queued: int,
                 metrics: ServingMetrics | None = None):
        if max_running < 1 or max_queued < 0:
            raise ValueError(f"max_running must be >= 1 and max_queued >= 0, got "
                             f"{max_running} and {max_queued}")
        self.max_running = max_running
        self.max_queued = max_queued
        self._metrics = metrics
        self._lock = threading.Lock()
        self._running = 0
        self._waiters: deque[_Waiter] = deque()
        self._publish_depth()

    @property
    def running(self) -> int:
        with self._lock:
            return self._running

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._waiters)

    def enter(self, context: grpc.ServicerContext) -> None:
        """Returns when the RPC may run (call `leave()` after it ran); raises ServingError
        RESOURCE_EXHAUSTED (queue full), DEADLINE_EXCEEDED or CANCELLED (it waited in vain)."""
        with self._lock:
            if self._running < self.max_running and not self._waiters:
                self._running += 1
                return
            if len(self._waiters) >= self.max_queued:
                if self._metrics is not None:
                    self._metrics.request_queue_refused_count.increment()
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Concurrent RPC limit exceeded! {self.max_running} requests are running "
                    f"(--grpc_max_threads) and {len(self._waiters)} wait for a thread "
                    f"(--grpc_max_queued_requests={self.max_queued})")
            waiter = _Waiter()
            self._waiters.append(waiter)
            self._publish_depth()
        # Wakes the waiter when the RPC ends early (deadline passed, client cancelled).
        if not context.add_callback(waiter.event.set):
            waiter.event.set()  # it has ended already
        waiter.event.wait(remaining_seconds(context))
        with self._lock:
            if waiter.admitted:  # `leave` handed over its slot
                return
            self._waiters.remove(waiter)
            self._publish_depth()
        # gRPC wakes the waiter (callback) when the deadline passes, by its own clock: allow
        # for a few ms of difference before calling it a cancellation.
        if context.time_remaining() <= _DEADLINE_SLACK_S:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "Deadline exceeded while the request waited for a gRPC thread")
        raise ServingError(grpc.StatusCode.CANCELLED,
                           "The request was cancelled while it waited for a gRPC thread")

    def leave(self) -> None:
        """Frees the slot of an RPC that `enter` let run: the longest waiter takes it over."""
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.admitted = True
                waiter.event.set()
                self._publish_depth()
            else:
                self._running -= 1

    def _publish_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.request_queue_depth.set(len(self._waiters))
