"""In-process publish/subscribe for job events, with sequence numbers and a bounded replay buffer.

``publish`` is synchronous and never waits on a subscriber: each subscriber has
its own bounded queue, and one that falls behind is evicted rather than allowed
to slow Blender's reader or the other subscribers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


TERMINAL_TYPES = frozenset({"job_completed", "job_failed", "job_cancelled"})

EVICTED = _Signal("EVICTED")
CLOSED = _Signal("CLOSED")


@dataclass(eq=False)
class Subscription:
    job_id: str | None
    maxsize: int
    queue: deque[str | _Signal] = field(default_factory=deque)
    waiter: asyncio.Future[None] | None = None
    evicted: bool = False
    closed: bool = False
    # Called once when the stream ends, e.g. to interrupt a send stuck on a full socket.
    on_end: Callable[[_Signal], None] | None = None
    # Fast path: writes one event straight to the peer; returns False when it cannot right now.
    write_now: Callable[[bytes], bool] | None = None

    @property
    def idle(self) -> bool:
        """The reader is parked on an empty queue, so a direct write cannot overtake anything."""
        return self.waiter is not None and not self.queue

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def offer(self, text: str, data: bytes) -> bool:
        """Deliver or queue one serialised event; False when the subscriber is too far behind."""
        if self.closed:
            return True
        if self.write_now is not None and self.idle and self.write_now(data):
            return True
        if len(self.queue) >= self.maxsize:
            return False
        self.queue.append(text)
        self._wake()
        return True

    def end(self, why: _Signal) -> None:
        """Stop the stream: pending events are dropped and the reader sees ``why`` next."""
        if self.closed:
            return
        self.closed = True
        self.evicted = why is EVICTED
        self.queue.clear()
        self.queue.append(why)
        self._wake()
        if self.on_end is not None:
            self.on_end(why)

    async def next(self) -> str | _Signal:
        while not self.queue:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.queue.popleft()


class EventHub:
    def __init__(
        self,
        replay_per_job: int = 2000,
        replay_global: int = 10000,
        subscriber_queue: int = 1000,
        tracked_jobs: int = 200,
    ) -> None:
        self.replay_per_job = replay_per_job
        self.subscriber_queue = subscriber_queue
        # Sequence numbers and replay buffers are kept for every live job but only for the most
        # recently ended ones: a node that has run 10,000 jobs must not hold 10,000 buffers. Anyone
        # reconnecting to a forgotten job with an old ?since= gets a fresh snapshot.
        self.tracked_jobs = tracked_jobs
        self._job_seq: dict[str, int] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._global_seq = 0
        self._job_replay: dict[str, deque[tuple[int, str]]] = {}
        self._global_replay: deque[tuple[int, str]] = deque(maxlen=replay_global)
        self._by_job: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self.evictions = 0
        # Synchronous observers of every event (metrics); they must be quick and must not raise.
        self.listeners: list[Callable[[Event], None]] = []

    # --- publishing ---
    def publish(self, job_id: str, event_type: str, **data: Any) -> Event:
        seq = self._job_seq.get(job_id, 0) + 1
        self._job_seq[job_id] = seq
        self._global_seq += 1
        event: Event = {"type": event_type, "job_id": job_id, "seq": seq, "gseq": self._global_seq, "ts": time.time()}
        event.update(data)
        text = json.dumps(event, separators=(",", ":"))
        encoded = text.encode()
        replay = self._job_replay.get(job_id)
        if replay is None:
            replay = self._job_replay[job_id] = deque(maxlen=self.replay_per_job)
        replay.append((seq, text))
        self._global_replay.append((self._global_seq, text))
        for sub in list(self._by_job.get(job_id, ())) + list(self._all):
            if not sub.offer(text, encoded):
                self.evict(sub)
        for listener in self.listeners:
            listener(event)
        if event_type in TERMINAL_TYPES:
            self._ended[job_id] = None
            while len(self._ended) > self.tracked_jobs:
                oldest, _ = self._ended.popitem(last=False)
                self._job_seq.pop(oldest, None)
                self._job_replay.pop(oldest, None)
        return event

    def forget(self, job_id: str) -> None:
        """Drop the replay buffer of a job that ended long ago (bounded memory for long-lived nodes)."""
        self._job_replay.pop(job_id, None)

    def job_seq(self, job_id: str) -> int:
        return self._job_seq.get(job_id, 0)

    @property
    def global_seq(self) -> int:
        return self._global_seq

    # --- subscribing ---
    def subscribe(self, job_id: str | None) -> Subscription:
        sub = Subscription(job_id, self.subscriber_queue)
        if job_id is None:
            self._all.add(sub)
        else:
            self._by_job.setdefault(job_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.job_id is None:
            self._all.discard(sub)
        else:
            subs = self._by_job.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_job[sub.job_id]

    def evict(self, sub: Subscription) -> None:
        self.unsubscribe(sub)
        sub.end(EVICTED)
        self.evictions += 1

    @property
    def subscriber_count(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_job.values())

    def replay_since(self, job_id: str | None, since: int) -> list[str] | None:
        """Events after ``since`` (per-job seq, or global seq when ``job_id`` is None).

        ``None`` means the buffer no longer reaches back that far (or ``since`` is
        from another run of the node), and the caller must send a fresh snapshot.
        """
        if job_id is None:
            buffer: deque[tuple[int, str]] = self._global_replay
            latest = self._global_seq
        else:
            buffer = self._job_replay.get(job_id, deque())
            latest = self.job_seq(job_id)
        if since > latest:
            return None
        if since == latest:
            return []
        if not buffer or buffer[0][0] > since + 1:
            return None
        return [text for seq, text in buffer if seq > since]
