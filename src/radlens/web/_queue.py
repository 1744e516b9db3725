"""A bounded inference queue: model work runs on worker threads, never on the event loop.

Each request that needs the model takes a slot; at most ``workers`` of them run at once (an
``anyio.CapacityLimiter`` over ``anyio.to_thread``), the others wait. When ``capacity`` requests are
already running or waiting, :meth:`InferenceQueue.run` refuses at once with :class:`QueueFull`, which
the app answers with 503 and a ``Retry-After`` estimate — so a burst of requests makes clients back
off instead of piling up memory and latency without bound.

Why not ``asyncio.Queue`` + worker tasks: the limiter already gives "N workers, the rest wait" and the
waiting requests are just suspended coroutines; the only thing missing is the bound, which is a counter.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """The queue holds ``capacity`` requests already; ``retry_after`` is a wait estimate in seconds."""

    def __init__(self, name: str, retry_after: int) -> None:
        super().__init__(f"the {name} queue is full")
        self.name = name
        self.retry_after = retry_after


class InferenceQueue:
    """Run blocking functions on at most ``workers`` threads with at most ``capacity`` admitted at once.

    ``capacity`` counts running and waiting calls together. The average duration of recent calls
    (an exponential moving average) gives the ``Retry-After`` estimate of a refused call.
    """

    def __init__(self, name: str, capacity: int, workers: int = 1) -> None:
        if capacity < 1 or workers < 1:
            raise ValueError(f"capacity and workers must be at least 1, got {capacity} and {workers}")
        self.name = name
        self.capacity = capacity
        self.workers = workers
        self._limiter: anyio.CapacityLimiter | None = None  # created lazily inside the event loop
        self._lock = threading.Lock()
        self._admitted = 0
        self._mean_seconds = 0.1  # per call, a running average
        self.completed = 0
        self.rejected = 0

    @property
    def pending(self) -> int:
        """Calls admitted and not finished (running + waiting)."""
        return self._admitted

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the time the admitted calls need, at least 1."""
        backlog = self._admitted * self._mean_seconds / self.workers
        return max(1, math.ceil(backlog))

    def _admit(self) -> None:
        """Take a slot, or refuse at once with :class:`QueueFull`."""
        with self._lock:
            if self._admitted >= self.capacity:
                self.rejected += 1
                raise QueueFull(self.name, self.retry_after())
            self._admitted += 1

    def _done(self, count: int, seconds: float) -> None:
        """Free ``count`` slots whose work took ``seconds`` in all."""
        with self._lock:
            self._admitted -= count
            self.completed += count
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds / max(count, 1)

    def _limiter_here(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.workers)
        return self._limiter

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread; :class:`QueueFull` at once if ``capacity`` are admitted."""
        self._admit()
        start = time.perf_counter()
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter_here())
        finally:
            self._done(1, time.perf_counter() - start)

    def stats(self) -> dict[str, int]:
        """Capacity, workers and counters, for the health endpoint."""
        return {
            "capacity": self.capacity,
            "workers": self.workers,
            "pending": self._admitted,
            "completed": self.completed,
            "rejected": self.rejected,
        }


class BatchingQueue(InferenceQueue, Generic[T, R]):
    """A bounded queue that runs the calls waiting at the same moment as one batch (dynamic batching).

    ``run_batch(items) -> results`` (one result, or an exception instance, per item) runs on one worker
    thread; while it runs, new items gather, and the next batch takes up to ``max_batch`` of them. No
    call waits for others to arrive: a lone request is a batch of one. A model embeds 8 short queries in
    about twice the time of one, so under concurrent load this multiplies throughput.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        run_batch: Callable[[list[T]], list[R | Exception]],
        max_batch: int = 16,
    ) -> None:
        super().__init__(name, capacity, workers=1)
        self.run_batch = run_batch
        self.max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.batches = 0

    async def submit(self, item: T) -> R:
        """The result for ``item``; :class:`QueueFull` at once if ``capacity`` items are admitted."""
        self._admit()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            items = [item for item, _ in batch]
            start = time.perf_counter()
            try:
                results: list[Any] = await anyio.to_thread.run_sync(self.run_batch, items)
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch gave {len(results)} results for {len(batch)} items")
            except Exception as exc:  # the whole batch failed: every caller gets the error
                results = [exc] * len(batch)
            self._done(len(batch), time.perf_counter() - start)
            self.batches += 1
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the caller went away
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "batches": self.batches}
