"""The gRPC front end: `tensorflow.serving.PredictionService` and `ModelService`.

Servicers from tensorflow-serving-api's generated modules, so the wire format is TF Serving's;
every method answers (the generated base classes would say UNIMPLEMENTED). Like
`model_servers/server.cc`: message size limits raised to INT32_MAX both ways, and at most
`grpc_max_threads` RPCs running at once. Unlike it, an RPC beyond that waits in a queue of
`grpc_max_queued_requests` (until its deadline) instead of being refused at once; only an RPC
that finds the queue full is RESOURCE_EXHAUSTED (`admission.py`; a queue of 0 is TF Serving's
behaviour). Predict, Classify and Regress are counted in `request_count` and timed in
`request_latency` (entrypoint `GRPC`), as `prediction_service_impl.cc` does.

The server is gRPC Python's asyncio server, on an event loop of its own thread. A request's
Python (parsing, checks, response) runs on that loop; its model calls (`core.ModelCall`) run on
a pool of `grpc_max_threads` threads, or, with batching on, join the batch scheduler's queue
while the request's coroutine waits: a request waiting for its batch holds no thread, and the
batch thread wakes the loop once for all the requests it has finished (`_LoopWaker`), where a
thread per request would cost a wake-up, a context switch and a GIL hand-off each (the
profile in docs/BENCHMARKS.md). Metadata, status and config reloads run on the pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.model_server.admission import AdmissionQueue, remaining_seconds
from serving.model_server.core import ModelCall, ServingCore, Steps
from serving.model_server.errors import ServingError, internal
from serving.model_server.metrics import ServingMetrics

logger = logging.getLogger("serving.model_server")

INT32_MAX = 2**31 - 1
SERVER_OPTIONS = (
    ("grpc.max_send_message_length", INT32_MAX),
    ("grpc.max_receive_message_length", INT32_MAX),
    ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
)
BATCH_DEADLINE = "Deadline exceeded while the request waited for its batch"
# gRPC cancels a handler when its deadline passes, by its own clock: within this many seconds
# of the deadline a cancellation is counted as DEADLINE_EXCEEDED.
_DEADLINE_SLACK_S = 0.05

Handler = Callable[[object, grpc.aio.ServicerContext], Awaitable[object]]


class _LoopWaker:
    """Resolves the loop's futures from other threads, one loop wake-up for all the futures
    resolved before the loop gets to them (a batch of 32 requests wakes it once)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Future, Callable[[], object]]] = []
        self._scheduled = False

    def resolve(self, future: asyncio.Future, result: Callable[[], object]) -> None:
        """Sets `future` to `result()` (or its exception), on the loop."""
        with self._lock:
            self._pending.append((future, result))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop has closed (server stopped): nobody waits
            pass

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, [], False
        for future, result in pending:
            if future.done():  # its deadline passed first
                continue
            try:
                future.set_result(result())
            except Exception as e:  # noqa: BLE001  (the request's error, raised where it waits)
                future.set_exception(e)


class _Workers:
    """`count` threads running functions for the loop: each result (or exception) is set on
    the loop's future through the waker, so results finished close together cost the loop one
    wake-up."""

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop):
        self.waker = _LoopWaker(loop)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"grpc_{i}")
                         for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, function: Callable[[], object], future: asyncio.Future) -> None:
        self._jobs.put((function, future))

    def stop(self) -> None:
        """Lets the queued functions run, then ends the threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            function, future = job
            try:
                result = function()
            except Exception as e:  # noqa: BLE001  (raised again where the request waits)
                self.waker.resolve(future, functools.partial(_reraise, e))
            else:
                self.waker.resolve(future, functools.partial(_identity, result))


def _identity(value):
    return value


def _reraise(error: Exception):
    raise error


class _Front:
    """What every servicer method needs: the core, the metrics, the admission queue and the
    worker threads."""

    def __init__(self, core: ServingCore, metrics: ServingMetrics, admission: AdmissionQueue,
                 workers: _Workers, loop: asyncio.AbstractEventLoop):
        self.core = core
        self.metrics = metrics
        self.admission = admission
        self._loop = loop
        self._workers = workers
        self._waker = workers.waker

    async def call(self, handler: Handler, request, context: grpc.aio.ServicerContext,
                   api: str | None, model_name: str):
        """Waits for a slot (`admission`), runs `handler`; a ServingError (or any bug) becomes
        the RPC's status, never a crash."""
        start = time.perf_counter()
        error: ServingError | None = None
        try:
            await self.admission.enter(context)
        except ServingError as e:
            error = e
        except asyncio.CancelledError:
            self._record(api, model_name, self._cancelled_status(context), start)
            raise
        else:
            try:
                response = await handler(request, context)
            except ServingError as e:
                error = e
            except asyncio.CancelledError:
                self._record(api, model_name, self._cancelled_status(context), start)
                raise
            except Exception as e:  # noqa: BLE001  (a bug must cost one request, not the server)
                logger.exception("%s failed", api or getattr(handler, "__name__", "RPC"))
                error = internal(f"{type(e).__name__}: {e}")
            finally:
                self.admission.leave()
        self._record(api, model_name, error.code.name if error else "OK", start)
        if error is not None:
            await context.abort(error.code, error.wire_message)
        return response

    def _record(self, api: str | None, model_name: str, status: str, start: float) -> None:
        if api is not None:
            self.metrics.record_request(model_name, status, api, "GRPC",
                                        (time.perf_counter() - start) * 1e6)

    @staticmethod
    def _cancelled_status(context: grpc.aio.ServicerContext) -> str:
        remaining = context.time_remaining()
        return ("DEADLINE_EXCEEDED" if remaining is not None and remaining <= _DEADLINE_SLACK_S
                else "CANCELLED")

    # -- handlers ----------------------------------------------------------------------------

    def steps(self, handler: Callable[[object], Steps]) -> Handler:
        """A `core.*_steps` handler: its Python on the loop, its model calls awaited."""
        async def run(request, context):
            return await self.complete(handler(request), remaining_seconds(context))
        return run

    def blocking(self, handler: Callable, **kwargs) -> Handler:
        """A plain core handler, run on the pool (`kwargs` may be functions of the context)."""
        async def run(request, context):
            bound = {key: value(context) for key, value in kwargs.items()}
            future = self._loop.create_future()
            self._workers.submit(functools.partial(handler, request, **bound), future)
            return await future
        return run

    async def complete(self, steps: Steps, timeout: float | None):
        """`ServingCore.complete` for the loop: each model call awaited, not waited for."""
        try:
            call = next(steps)
            while True:
                call = steps.send(await self._model_call(call, timeout))
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    def _model_call(self, call: ModelCall, timeout: float | None) -> asyncio.Future:
        future = self._loop.create_future()
        if call.key is None:
            self._workers.submit(functools.partial(call.run, call.inputs), future)
            return future
        self.core.batcher.submit(call.key, call.run, call.inputs,
                                 on_finish=lambda task: self._waker.resolve(future, task.result))
        if timeout is not None and not future.done():
            timer = self._loop.call_later(timeout, _expire, future)
            future.add_done_callback(lambda _: timer.cancel())
        return future


def _expire(future: asyncio.Future) -> None:
    if not future.done():  # the task stays in its batch; its rows are dropped when it runs
        future.set_exception(ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, BATCH_DEADLINE))


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference, GetModelMetadata."""

    def __init__(self, front: _Front):
        self._front = front
        core = front.core
        self._predict = front.steps(core.predict_steps)
        self._classify = front.steps(core.classify_steps)
        self._regress = front.steps(core.regress_steps)
        self._multi_inference = front.steps(core.multi_inference_steps)
        self._metadata = front.blocking(core.get_model_metadata)

    async def Predict(self, request, context):  # noqa: N802  (gRPC method names)
        return await self._front.call(self._predict, request, context, "Predict",
                                      request.model_spec.name)

    async def Classify(self, request, context):  # noqa: N802
        return await self._front.call(self._classify, request, context, "Classify",
                                      request.model_spec.name)

    async def Regress(self, request, context):  # noqa: N802
        return await self._front.call(self._regress, request, context, "Regress",
                                      request.model_spec.name)

    async def MultiInference(self, request, context):  # noqa: N802
        return await self._front.call(self._multi_inference, request, context, None, "")

    async def GetModelMetadata(self, request, context):  # noqa: N802
        return await self._front.call(self._metadata, request, context, None, "")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, HandleReloadConfigRequest."""

    def __init__(self, front: _Front):
        self._front = front
        self._status = front.blocking(front.core.get_model_status)
        self._reload = front.blocking(front.core.reload_config,
                                      is_cancelled=lambda context: context.cancelled)

    async def GetModelStatus(self, request, context):  # noqa: N802
        return await self._front.call(self._status, request, context, None, "")

    async def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        return await self._front.call(self._reload, request, context, None, "")


class GrpcServer:
    """The asyncio gRPC server on its own event loop thread, driven from synchronous code.

    At most `max_threads` RPCs run at once and `max_queued` more wait (`admission.py`); model
    calls without batching, and the blocking handlers, run on a pool of `max_threads` threads.
    """

    def __init__(self, core: ServingCore, metrics: ServingMetrics, max_threads: int,
                 max_queued: int = 0):
        self._core = core
        self._metrics = metrics
        self._max_threads = max_threads
        self._max_queued = max_queued
        self._loop = asyncio.new_event_loop()
        self._workers = _Workers(max_threads, self._loop)
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc_loop",
                                        daemon=True)
        self._server: grpc.aio.Server | None = None

    def start(self, addresses: list[str]) -> list[int]:
        """Binds every address ("0.0.0.0:8500", "unix:/path"), starts; returns the bound
        ports. OSError (and nothing left running) when an address cannot be bound."""
        self._thread.start()
        try:
            return self._run(self._start(addresses))
        except BaseException:
            self.stop(0)
            raise

    async def _start(self, addresses: list[str]) -> list[int]:
        server = self._server = grpc.aio.server(options=SERVER_OPTIONS)
        admission = AdmissionQueue(self._max_threads, self._max_queued, self._metrics)
        front = _Front(self._core, self._metrics, admission, self._workers, self._loop)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(front), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(front), server)
        ports = []
        for address in addresses:
            try:
                port = server.add_insecure_port(address)
            except RuntimeError as e:
                raise OSError(f"Could not bind the gRPC server to {address}: {e}") from None
            if port == 0 and not address.startswith("unix:"):
                raise OSError(f"Could not bind the gRPC server to {address}")
            ports.append(port)
        await server.start()
        return ports

    def stop(self, grace: float | None = None) -> None:
        """Stops listening (in-flight RPCs get `grace` seconds), then the loop and the
        worker threads."""
        if self._thread.is_alive():
            if self._server is not None:
                self._run(self._server.stop(grace))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        if not self._loop.is_closed():
            self._loop.close()
        self._workers.stop()

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


def start_grpc_server(core: ServingCore, metrics: ServingMetrics, addresses: list[str],
                      max_threads: int, max_queued: int = 0) -> tuple[GrpcServer, list[int]]:
    """A started `GrpcServer` on `addresses` and its bound ports."""
    server = GrpcServer(core, metrics, max_threads, max_queued)
    return server, server.start(addresses)
