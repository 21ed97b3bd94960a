"""WebSocket channels: a snapshot, then every later event in order, with resume and eviction.

The subscription is registered before anything is awaited, so no event can
fall between the snapshot and the stream. A subscriber whose queue overflows
is closed with 1013 (try again later) and may reconnect with ``?since=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from rendernode.events import CLOSED, EVICTED, Subscription
from rendernode.jobs import Forbidden, InvalidRequest, NotFound
from rendernode.keys import HUB, VIEWS

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 20.0
SNAPSHOT_JOBS = 50
CLOSE_TIMEOUT = 2.0


def check_origin(request: web.Request) -> None:
    """Browsers send Origin on WebSocket handshakes; only the node's own pages may connect."""
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser: curl, the CLI, the farm
    try:
        parsed = URL(origin)
        origin_host = f"{parsed.host}:{parsed.port}" if parsed.port else str(parsed.host)
    except ValueError:
        raise Forbidden("bad Origin header") from None
    host = request.host
    if ":" not in host and parsed.port:
        host = f"{host}:{80 if request.scheme == 'http' else 443}"
    if origin_host.lower() != host.lower():
        raise Forbidden(f"cross-origin WebSocket from {origin} refused")


def _since(request: web.Request) -> int | None:
    raw = request.query.get("since")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest("'since' must be an integer sequence number", field="since") from None
    if value < 0:
        raise InvalidRequest("'since' must not be negative", field="since")
    return value


async def job_ws(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    if await request.app[VIEWS].job_view(job_id) is None:
        raise NotFound(f"no job {job_id!r} here")
    return await _serve(request, job_id)


async def all_ws(request: web.Request) -> web.StreamResponse:
    return await _serve(request, None)


async def _serve(request: web.Request, job_id: str | None) -> web.StreamResponse:
    check_origin(request)
    since = _since(request)
    hub = request.app[HUB]
    # No per-message compression: events are small, and identical frames let the hub write them directly.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=64 * 1024, compress=False)
    await ws.prepare(request)
    sockets = request.app[OPEN_SOCKETS]
    sockets.add(ws)
    # Subscribe and read the replay position in one synchronous step: the gap-free point.
    sub = hub.subscribe(job_id)
    seq_now = hub.job_seq(job_id) if job_id is not None else hub.global_seq
    replay = hub.replay_since(job_id, since) if since is not None else None
    pump = asyncio.create_task(_pump(ws, sub, request, job_id, seq_now, replay))
    reader = asyncio.create_task(_read_until_closed(ws))
    reader.add_done_callback(lambda _t: sub.end(CLOSED))

    def stop_stuck_send(why: object) -> None:
        # A subscriber stuck in send() (its socket is full) is cut off now, not after the send.
        if why is EVICTED and not pump.done():
            pump.cancel()

    sub.on_end = stop_stuck_send
    if request.transport is not None:
        sub.write_now = direct_writer(request.transport)
    try:
        await asyncio.wait({pump})
        if sub.evicted:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"subscriber too slow; reconnect with since"),
                    CLOSE_TIMEOUT,
                )
            if not ws.closed and request.transport is not None:
                request.transport.abort()
        elif not ws.closed:
            await ws.close()
    finally:
        hub.unsubscribe(sub)
        reader.cancel()
        pump.cancel()
        sockets.discard(ws)
    return ws


# Beyond this much unsent data, events queue (and may evict the subscriber) instead of piling up in the kernel.
DIRECT_WRITE_LIMIT = 256 * 1024


def text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed WebSocket text frame (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def direct_writer(transport: asyncio.BaseTransport) -> Callable[[bytes], bool]:
    """Write an event frame straight to the socket, skipping a task switch per subscriber.

    Publishing then costs one ``transport.write`` per idle subscriber instead of
    waking one coroutine each, which is what keeps fan-out to hundreds of
    dashboards cheap. Frames are written whole and only while the subscriber's
    queue is empty, so ordering with the queued path is preserved.
    """
    assert isinstance(transport, asyncio.WriteTransport)

    def write(payload: bytes) -> bool:
        if transport.is_closing() or transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT:
            return False
        transport.write(text_frame(payload))
        return True

    return write


async def _pump(
    ws: web.WebSocketResponse,
    sub: Subscription,
    request: web.Request,
    job_id: str | None,
    seq_now: int,
    replay: list[str] | None,
) -> None:
    try:
        if replay is None:
            views = request.app[VIEWS]

            async def build() -> str:
                snapshot: dict[str, Any]
                if job_id is not None:
                    job = await views.job_view(job_id)
                    snapshot = {"type": "snapshot", "job_id": job_id, "seq": seq_now, "job": job}
                else:
                    jobs, total = await views.page(SNAPSHOT_JOBS, 0, None)
                    snapshot = {"type": "snapshot", "gseq": seq_now, "total": total, "jobs": jobs}
                return json.dumps(snapshot, separators=(",", ":"))

            await ws.send_str(await request.app[SNAPSHOTS].get(job_id, seq_now, build))
        else:
            for text in replay:
                await ws.send_str(text)
        while True:
            item = await sub.next()
            if item is EVICTED or item is CLOSED:
                return
            assert isinstance(item, str)
            await ws.send_str(item)
    except (ConnectionResetError, RuntimeError):
        return  # the peer went away mid-send


async def _read_until_closed(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.TEXT and msg.data == "ping":
            await ws.send_str('{"type":"pong"}')
        elif msg.type == WSMsgType.ERROR:
            return


class SnapshotCache:
    """One snapshot per stream position, shared by every subscriber that arrives at that position.

    A dashboard reload storm (or a farm reattaching) then costs one database read and one
    serialisation instead of one per socket. Nothing changes a job without an event, so a snapshot
    taken at sequence ``seq`` is still exact for anyone subscribing at ``seq``.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: dict[str | None, tuple[int, asyncio.Task[str]]] = {}

    async def get(self, key: str | None, seq: int, build: Callable[[], Awaitable[str]]) -> str:
        entry = self._entries.get(key)
        if entry is None or entry[0] != seq or (entry[1].done() and entry[1].exception() is not None):
            entry = (seq, asyncio.ensure_future(build()))
            self._entries.pop(key, None)
            self._entries[key] = entry
            while len(self._entries) > self.size:
                self._entries.pop(next(iter(self._entries)))
        # Shielded: one subscriber leaving must not cancel the build the others wait for.
        return await asyncio.shield(entry[1])


SNAPSHOTS = web.AppKey("snapshots", SnapshotCache)
OPEN_SOCKETS = web.AppKey("open_sockets", set[web.WebSocketResponse])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ws", all_ws)
    app.router.add_get("/job/{job_id}/ws", job_ws)


async def close_sockets(app: web.Application) -> None:
    sockets: set[web.WebSocketResponse] = app[OPEN_SOCKETS]
    for ws in tuple(sockets):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down")
