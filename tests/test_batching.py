"""The coalescer that puts concurrent store calls of one group into one call."""

from __future__ import annotations

import asyncio

import pytest

from gateway.batching import Coalescer


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def run(self, group: str, members: list[int]) -> list[int]:
        self.calls.append((group, members))
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [member * 10 for member in members]


async def test_calls_made_during_one_in_flight_go_together_in_the_next() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.run)
    first = asyncio.create_task(coalescer.submit("a", 1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    later = [asyncio.create_task(coalescer.submit("a", n)) for n in (2, 3, 4)]
    other = asyncio.create_task(coalescer.submit("b", 5))
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == 10
    assert [await task for task in later] == [20, 30, 40]
    assert await other == 50
    assert recorder.calls == [("a", [1]), ("b", [5]), ("a", [2, 3, 4])]


async def test_a_batch_never_exceeds_its_size() -> None:
    recorder = Recorder()
    recorder.release.set()
    coalescer = Coalescer(recorder.run, max_batch=3)
    results = await asyncio.gather(*(coalescer.submit("a", n) for n in range(7)))
    assert results == [n * 10 for n in range(7)]
    assert [members for _, members in recorder.calls] == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_failed_call_fails_each_of_its_callers_and_the_next_call_runs() -> None:
    recorder = Recorder()
    recorder.fail_with = ConnectionError("store down")
    recorder.release.set()
    coalescer = Coalescer(recorder.run)
    results = await asyncio.gather(*(coalescer.submit("a", n) for n in range(3)),
                                   return_exceptions=True)  # fmt: skip
    assert all(isinstance(result, ConnectionError) for result in results)
    recorder.fail_with = None
    assert await coalescer.submit("a", 9) == 90


async def test_a_caller_that_gives_up_does_not_hold_up_the_others() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.run)
    impatient = asyncio.create_task(coalescer.submit("a", 1))
    patient = asyncio.create_task(coalescer.submit("a", 2))
    await asyncio.sleep(0)
    impatient.cancel()
    recorder.release.set()
    assert await patient == 20
    with pytest.raises(asyncio.CancelledError):
        await impatient
