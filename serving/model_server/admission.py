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

The queue lives on the gRPC front end's event loop (`grpc_service`): `enter` and `leave` are
called from that loop only, and a waiting RPC is a suspended coroutine, not a blocked thread.
The queue's length is the gauge `/tensorflow/serving/request_queue_depth`; refusals count in
`/tensorflow/serving/request_queue_refused_count`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

import grpc

from serving.model_server.errors import ServingError
from serving.model_server.metrics import ServingMetrics


def remaining_seconds(context: grpc.ServicerContext) -> float | None:
    """Seconds until the RPC's deadline; None without one (gRPC then reports ~9.2e18 s, more
    than `threading` can wait)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > threading.TIMEOUT_MAX:
        return None
    return remaining


class AdmissionQueue:
    """A FIFO of RPCs waiting for one of `max_running` slots (module doc). Not thread-safe: one
    event loop calls it."""

    def __init__(self, max_running: int, max_queued: int,
                 metrics: ServingMetrics | None = None):
        if max_running < 1 or max_queued < 0:
            raise ValueError(f"max_running must be >= 1 and max_queued >= 0, got "
                             f"{max_running} and {max_queued}")
        self.max_running = max_running
        self.max_queued = max_queued
        self._metrics = metrics
        self._running = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._publish_depth()

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def enter(self, context) -> None:
        """Returns when the RPC may run (call `leave()` after it ran); raises ServingError
        RESOURCE_EXHAUSTED (queue full) or DEADLINE_EXCEEDED (it waited until its deadline).
        A waiter whose RPC is cancelled leaves the queue (CancelledError goes on)."""
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
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._publish_depth()
        try:
            # `leave` hands its slot over by setting the result: taken even if the deadline
            # passes in the same loop iteration
            await asyncio.wait_for(asyncio.shield(waiter), remaining_seconds(context))
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            if waiter.done() and not waiter.cancelled():  # admitted meanwhile: give it back
                self.leave()
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
                self._publish_depth()
            if isinstance(e, asyncio.CancelledError):
                raise
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "Deadline exceeded while the request waited for a gRPC thread"
                               ) from None

    def leave(self) -> None:
        """Frees the slot of an RPC that `enter` let run: the longest waiter takes it over."""
        if self._waiters:
            self._waiters.popleft().set_result(True)
            self._publish_depth()
        else:
            self._running -= 1

    def _publish_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.request_queue_depth.set(len(self._waiters))
