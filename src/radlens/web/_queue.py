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

import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


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
        self._mean_seconds = 0.1
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

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread; :class:`QueueFull` at once if ``capacity`` are admitted."""
        with self._lock:
            if self._admitted >= self.capacity:
                self.rejected += 1
                raise QueueFull(self.name, self.retry_after())
            self._admitted += 1
        try:
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(self.workers)
            return await anyio.to_thread.run_sync(self._timed, fn, args, limiter=self._limiter)
        finally:
            with self._lock:
                self._admitted -= 1

    def _timed(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * elapsed
                self.completed += 1

    def stats(self) -> dict[str, int]:
        """Capacity, workers and counters, for the health endpoint."""
        return {
            "capacity": self.capacity,
            "workers": self.workers,
            "pending": self._admitted,
            "completed": self.completed,
            "rejected": self.rejected,
        }
