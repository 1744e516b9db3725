"""The bounded queues behind the model: batching, per-item errors, refusal when full, no hangs."""

from __future__ import annotations

import asyncio

import pytest

from radlens.web._queue import BatchingQueue, QueueFull


def test_each_caller_gets_its_own_result_or_error() -> None:
    seen: list[list[int]] = []

    def run_batch(items: list[int]) -> list[int | Exception]:
        seen.append(items)
        return [ValueError(f"bad {item}") if item < 0 else item * 10 for item in items]

    async def scenario() -> list[object]:
        queue: BatchingQueue[int, int] = BatchingQueue("test", capacity=8, run_batch=run_batch, max_batch=4)
        tasks = [asyncio.create_task(queue.submit(item)) for item in (1, -2, 3, 4, 5)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    assert results[0] == 10 and results[2:] == [30, 40, 50]
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad -2"
    assert sorted(item for batch in seen for item in batch) == [-2, 1, 3, 4, 5]
    assert max(len(batch) for batch in seen) <= 4


def test_a_batch_function_that_loses_items_fails_its_callers_instead_of_hanging() -> None:
    async def scenario() -> None:
        queue: BatchingQueue[int, int] = BatchingQueue("test", capacity=4, run_batch=lambda items: [])
        await asyncio.wait_for(queue.submit(1), timeout=10)

    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        asyncio.run(scenario())


def test_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        queue: BatchingQueue[int, int] = BatchingQueue("test", capacity=1, run_batch=lambda items: items)
        first = asyncio.create_task(queue.submit(1))
        await asyncio.sleep(0)  # the first item is admitted and running
        with pytest.raises(QueueFull):
            await queue.submit(2)
        assert await first == 1
        assert queue.rejected == 1 and await queue.submit(3) == 3  # its slot is free again

    asyncio.run(scenario())
