"""Stopping background tasks for sure.

One ``task.cancel()`` is not always enough: a task can swallow it. Python 3.11's
``asyncio.wait_for`` returns the result instead of raising when its awaitable finishes in the
same loop step as the cancel (fixed in 3.12), and a library may turn ``CancelledError`` into
its own error, which a loop that retries on that error then survives (seen with redis-py under
load: a node's SIGTERM then waited for ever on its heartbeat task).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]

log = logging.getLogger("miaws")

RECANCEL = 0.1  # seconds between cancels of a task that is still running


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None], timeout: float = 5.0) -> bool:
    """Cancel tasks (``None`` skipped) and wait until every one has ended, cancelling again
    those still running every :data:`RECANCEL` seconds, for up to timeout seconds.

    True when all ended; else a warning names those left running.  Their exceptions are
    retrieved (a stopping task's error is not news)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {task for task in tasks if task is not None}
    _retrieve({task for task in pending if task.done()})
    pending = {task for task in pending if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            log.warning(
                "%d background task(s) still running %g s after being cancelled: %s",
                len(pending),
                timeout,
                ", ".join(sorted(task.get_name() for task in pending)),
            )
            return False
        done, pending = await asyncio.wait(pending, timeout=min(RECANCEL, left))
        _retrieve(done)
    return True


def _retrieve(done: set[asyncio.Task[Any]]) -> None:
    for task in done:
        if not task.cancelled():
            task.exception()
