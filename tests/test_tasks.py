"""cancel_and_wait stops a background task that swallows a cancel, and gives up on one that
never ends with a warning naming it (miaws/core/tasks.py)."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from miaws.core.tasks import cancel_and_wait


async def retrying_loop(errors: list[str]) -> None:
    """A background loop that retries on its library's error, as the broker's do; its library
    turns the first cancel into that error (as redis-py once did under load)."""
    swallowed = False
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True
            errors.append("cancel seen as a library error; retrying")


async def test_a_task_that_swallows_one_cancel_is_stopped() -> None:
    errors: list[str] = []
    task = asyncio.create_task(retrying_loop(errors))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await cancel_and_wait([task, None], timeout=5.0) is True
    assert task.cancelled() and errors == ["cancel seen as a library error; retrying"]
    assert loop.time() - started < 1.0


async def test_a_task_that_never_ends_is_named_and_left(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="miaws"):
        assert await cancel_and_wait([task], timeout=0.3) is False
    assert not task.done()
    assert "1 background task(s) still running 0.3 s after being cancelled: stubborn" in (
        caplog.text
    )
    stop.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)
    assert task.done()


async def test_a_failed_task_is_retrieved_not_reported_again() -> None:
    """Its error is not news at stop: asyncio's "exception was never retrieved" stays quiet."""
    reported: list[object] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))

    async def fails() -> None:
        raise RuntimeError("boom")

    try:
        task: asyncio.Task[None] | None = asyncio.create_task(fails())
        await asyncio.sleep(0)
        assert await cancel_and_wait([task]) is True
        task = None
        gc.collect()
        assert reported == []
    finally:
        loop.set_exception_handler(None)
