"""Fan-out of guest events to every open event stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from stratus_api.guest import GuestEvent

QUEUE_LIMIT = 1000


class EventHub:
    """Each subscriber gets its own bounded queue; a subscriber that falls behind by more
    than QUEUE_LIMIT events is told to resync instead of slowing everyone down."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[GuestEvent | None]] = set()

    def publish(self, event: GuestEvent) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # None tells the stream to end; the operator reconnects and resyncs.
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[GuestEvent | None]]:
        queue: asyncio.Queue[GuestEvent | None] = asyncio.Queue(QUEUE_LIMIT)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def close(self) -> None:
        """End every stream (agent shutdown): clients see a clean end and reconnect."""
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    @property
    def subscribers(self) -> int:
        return len(self._queues)
