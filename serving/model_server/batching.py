"""Server-side batching: concurrent requests to one model version and signature, one model call.

The rules are TF Serving's shared batch scheduler and batching session
(`batching/batching_session.cc`, TF's `shared_batch_scheduler.h`):

- one queue per (model, version, signature); a request (task) joins the open batch of its queue
  if the batch stays within `max_batch_size` rows, otherwise it opens a new batch; a queue holds
  at most `max_enqueued_batches` batches (the open one included): one more is UNAVAILABLE
  "The batch scheduling queue to which this task was submitted is full";
- a task larger than `max_batch_size` is INVALID_ARGUMENT
  "Task size N is larger than maximum batch size M";
- `num_batch_threads` threads run batches; a batch is taken when it is full, when a newer
  batch exists behind it, or when its first task has waited `batch_timeout_micros`;
- inputs are concatenated on dimension 0, padded up to the next `allowed_batch_sizes` entry
  with copies of the first row of the last task, run once, and the outputs split back.

Two choices differ from TF Serving, neither visible to a well-formed request: when a merged
call fails, each task of the batch is re-run alone, so one bad request does not fail the
requests that happened to share its batch; and tasks whose inner dimensions differ (with
`pad_variable_length_inputs` off) run one by one instead of failing the batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

import grpc
import numpy as np

from serving.model_server.config import BatchingParameters
from serving.model_server.errors import (
    ServingError,
    failed_precondition,
    internal,
    invalid_argument,
    unavailable,
)
from serving.model_server.metrics import ServingMetrics

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"


class Task:
    """One request's inputs, waiting for its rows of a batch's outputs.

    The waiter blocks on a lock the task holds until `finish` releases it (one lock per task,
    where an Event would build a Condition and a second lock for every request). `on_finish`,
    when set before the task is submitted, is called by the thread that finishes it (the
    asyncio front end wakes its event loop from there instead of blocking a thread).
    """

    __slots__ = ("inputs", "size", "enqueued", "on_finish", "_pending", "_result", "_error")

    def __init__(self, inputs: dict[str, np.ndarray], size: int,
                 on_finish: Callable[[Task], None] | None = None):
        self.inputs = inputs
        self.size = size
        self.enqueued = time.perf_counter()
        self.on_finish = on_finish
        self._pending = threading.Lock()
        self._pending.acquire()
        self._result: dict[str, np.ndarray] | None = None
        self._error: ServingError | None = None

    def finish(self, result: dict[str, np.ndarray] | None = None,
               error: ServingError | None = None) -> None:
        self._result, self._error = result, error
        self._pending.release()
        if self.on_finish is not None:
            self.on_finish(self)

    @property
    def done(self) -> bool:
        # not `_pending.locked()`: a waiter holds the lock for a moment after the task finished
        return self._result is not None or self._error is not None

    def result(self) -> dict[str, np.ndarray]:
        """The outputs of a finished task (raises its error)."""
        if self._error is not None:
            raise self._error
        return self._result

    def wait(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """The task's outputs; DEADLINE_EXCEEDED if they are not ready within `timeout` s."""
        if not self._pending.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "Deadline exceeded while the request waited for its batch")
        self._pending.release()  # a second wait() returns at once
        return self.result()


class _Batch:
    def __init__(self):
        self.tasks: list[Task] = []
        self.size = 0
        self.opened = time.perf_counter()


class _Queue:
    def __init__(self, run: RunFn):
        self.run = run
        self.batches: deque[_Batch] = deque()


def batch_size(inputs: dict[str, np.ndarray]) -> int:
    """Dimension 0 shared by every input (BatchingSession's checks)."""
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise invalid_argument(
                "Batching session Run() input tensors must have at least one dimension")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise invalid_argument(
            "Batching session Run() input tensors must have equal 0th-dimension size")
    return sizes.pop() if sizes else 0


class BatchScheduler:
    """A shared scheduler: per-key queues, `num_batch_threads` threads running batches."""

    def __init__(self, params: BatchingParameters, metrics: ServingMetrics):
        self.params = params
        self._metrics = metrics
        self._timeout = params.batch_timeout_micros / 1e6
        self._queues: dict[Hashable, _Queue] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, daemon=True,
                                          name=f"{params.thread_pool_name}_{i}")
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, run: RunFn, inputs: dict[str, np.ndarray],
               on_finish: Callable[[Task], None] | None = None) -> Task:
        """Enqueues one request; raises UNAVAILABLE (queue full) or INVALID_ARGUMENT (size).

        `on_finish(task)` is called when the task is finished, from the thread that finished
        it (which is the caller's own thread for a task of 0 rows)."""
        size = batch_size(inputs)
        if size > self.params.max_batch_size:
            raise invalid_argument(f"Task size {size} is larger than maximum batch size "
                                   f"{self.params.max_batch_size}")
        task = Task(inputs, size, on_finish)
        if size == 0:  # nothing to merge: run on the caller's thread
            self._run_alone(run, task)
            return task
        with self._cond:
            if self._closed:
                raise unavailable("The batch scheduler is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(run)
            batch = queue.batches[-1] if queue.batches else None
            opened = batch is None or batch.size + size > self.params.max_batch_size
            if opened:
                if len(queue.batches) >= self.params.max_enqueued_batches:
                    raise unavailable(QUEUE_FULL)
                batch = _Batch()
                queue.batches.append(batch)
            batch.tasks.append(task)
            batch.size += size
            # A batch thread has to act only when a batch opens (a new deadline to wait for,
            # or the batch before it is now ready) or fills up; a task joining an open batch
            # changes neither, so it wakes no thread (one wake-up per request would cost a
            # context switch and a GIL hand-off each).
            if opened or batch.size >= self.params.max_batch_size:
                self._cond.notify()
        self._metrics.input_batch_size.observe(size)
        return task

    def close(self) -> None:
        """Runs what is queued, then stops the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    # -- batch threads ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                picked = self._pick()
                while picked is None:
                    if self._closed and not self._queues:
                        return
                    self._cond.wait(self._next_wait())
                    picked = self._pick()
            self._process(*picked)

    def _ready(self, queue: _Queue, now: float) -> bool:
        first = queue.batches[0]
        return (len(queue.batches) > 1 or first.size >= self.params.max_batch_size
                or now - first.opened >= self._timeout or self._closed)

    def _pick(self) -> tuple[RunFn, _Batch] | None:
        now = time.perf_counter()
        ready = [(q.batches[0].opened, key) for key, q in self._queues.items()
                 if self._ready(q, now)]
        if not ready:
            return None
        key = min(ready, key=lambda item: item[0])[1]
        queue = self._queues[key]
        batch = queue.batches.popleft()
        if not queue.batches:
            del self._queues[key]
        return queue.run, batch

    def _next_wait(self) -> float | None:
        if not self._queues:
            return None
        now = time.perf_counter()
        return max(0.0, min(q.batches[0].opened + self._timeout - now
                            for q in self._queues.values()))

    def _process(self, run: RunFn, batch: _Batch) -> None:
        now = time.perf_counter()
        for task in batch.tasks:
            self._metrics.queuing_latency.observe((now - task.enqueued) * 1e6,
                                                  self.params.thread_pool_name)
        merged = self._merge(batch)
        if merged is None:
            for task in batch.tasks:
                self._run_alone(run, task)
            return
        inputs, padded = merged
        try:
            outputs = self._call(run, inputs)
        except ServingError as e:
            if len(batch.tasks) == 1:
                batch.tasks[0].finish(error=e)
            else:
                for task in batch.tasks:
                    self._run_alone(run, task)
            return
        self._split(outputs, padded, batch)

    def _call(self, run: RunFn, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._metrics.wrapped_run_count.increment()
        try:
            return run(inputs)
        except ServingError:
            raise
        except Exception as e:  # noqa: BLE001  (a batch thread must survive anything)
            raise internal(f"Batched model call failed: {type(e).__name__}: {e}") from None

    def _run_alone(self, run: RunFn, task: Task) -> None:
        try:
            task.finish(result=self._call(run, task.inputs))
        except ServingError as e:
            task.finish(error=e)

    def _padded_size(self, size: int) -> int:
        for allowed in self.params.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size

    def _merge(self, batch: _Batch) -> tuple[dict[str, np.ndarray], int] | None:
        """Concatenated (and padded) inputs, or None when the tasks' shapes do not line up."""
        padded = self._padded_size(batch.size)
        self._metrics.processed_batch_size.observe(padded)
        self._metrics.padding_size.observe(padded - batch.size, str(padded))
        if len(batch.tasks) == 1 and padded == batch.size:
            return batch.tasks[0].inputs, padded
        merged = {}
        for name in batch.tasks[0].inputs:
            arrays = [task.inputs[name] for task in batch.tasks]
            if self.params.pad_variable_length_inputs:
                arrays = _pad_inner_dims(arrays)
            if any(a.dtype != arrays[0].dtype or a.shape[1:] != arrays[0].shape[1:]
                   for a in arrays):
                return None
            if padded > batch.size:
                first_row = arrays[-1][:1]
                arrays.append(np.repeat(first_row, padded - batch.size, axis=0))
            merged[name] = np.concatenate(arrays, axis=0)
        return merged, padded

    def _split(self, outputs: dict[str, np.ndarray], padded: int, batch: _Batch) -> None:
        for key, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != padded:
                error = failed_precondition(
                    f"Batched output tensor {key} has 0th dimension "
                    f"{value.shape[0] if value.ndim else 'none (scalar)'} but the batch has "
                    f"{padded} rows; a batched signature must keep the batch dimension")
                for task in batch.tasks:
                    task.finish(error=error)
                return
        start = 0
        for task in batch.tasks:
            end = start + task.size
            task.finish(result={key: value[start:end] for key, value in outputs.items()})
            start = end


def _pad_inner_dims(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """pad_variable_length_inputs: pad dims >= 1 to the batch maximum with each tensor's
    first value (BatchingSession's PadTensor)."""
    if len({a.ndim for a in arrays}) != 1 or arrays[0].ndim < 2:
        return arrays
    target = np.max([a.shape for a in arrays], axis=0)
    out = []
    for a in arrays:
        widths = [(0, 0)] + [(0, int(t - s)) for s, t in zip(a.shape[1:], target[1:], strict=True)]
        if a.size and any(w for _, w in widths):
            a = np.pad(a, widths, mode="constant", constant_values=a.flat[0])
        out.append(a)
    return out
