"""One rendering node as the farm sees it: its public API, its health, what it is doing for the farm."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiofiles
import aiohttp

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=5)


class NodeLost(Exception):
    """The node stopped answering (connection refused, reset, or timed out)."""


class FrameDownloadError(Exception):
    pass


@dataclass(eq=False)
class NodeLink:
    id: str
    url: str
    session: aiohttp.ClientSession
    token: str | None = None
    state: str = "unknown"  # up, down, unknown
    blender_version: str | None = None
    capacity: int = 1
    last_error: str | None = None
    checked_at: float | None = None
    active: dict[int, str] = field(default_factory=dict)  # chunk id -> "from-to" of the farm job's frames
    removed: bool = False
    abandoned: list[str] = field(default_factory=list)  # node job ids of chunks given up when it was lost
    _scenes: set[str] = field(default_factory=set)  # sha256 of scenes known to be on the node

    seconds_per_frame: float | None = None  # moving average of the time between delivered frames
    _last_frame_at: float | None = None

    def free_slots(self, prefetch: int = 0) -> int:
        """Chunks this node may still take: its Blender slots, plus ``prefetch`` waiting in its queue."""
        if self.state != "up" or self.removed:
            return 0
        return max(self.capacity + prefetch - len(self.active), 0)

    def note_frame(self, now: float) -> None:
        """Track the node's pace from frame arrivals (start-up and download included, as the farm sees it)."""
        if self._last_frame_at is not None and now - self._last_frame_at < 60:
            sample = now - self._last_frame_at
            previous = self.seconds_per_frame
            self.seconds_per_frame = sample if previous is None else 0.7 * previous + 0.3 * sample
        self._last_frame_at = now

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _json(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        try:
            async with self.session.request(
                method, self.url + path, headers=headers, timeout=REQUEST_TIMEOUT, **kwargs
            ) as response:
                body = await response.json(content_type=None)
                return response.status, dict(response.headers), body
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
            raise NodeLost(f"{self.url}: {exc.__class__.__name__}: {exc}") from exc

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "state": self.state,
            "blender_version": self.blender_version,
            "capacity": self.capacity,
            "current_chunks": sorted(self.active.values()),
            "last_error": self.last_error,
            "checked_at": self.checked_at,
        }

    async def check(self) -> bool:
        """Ask /health; returns True when the state changed."""
        before = self.state
        try:
            status, _, body = await self._json("GET", "/health")
            if status == 200:
                self.state = "up"
                self.blender_version = body.get("blender", {}).get("version")
                self.capacity = max(int(body.get("capacity", 1)), 1)
                self.last_error = None
            else:
                self.state = "down"
                self.last_error = str(body.get("blender", {}).get("error") or f"/health answered {status}")
        except NodeLost as exc:
            self.state = "down"
            self.last_error = str(exc)
        self.checked_at = time.time()
        return self.state != before

    async def ensure_scene(self, path: Path, sha256: str) -> str:
        """The node's name for the scene, uploading it first unless the node already has that content."""
        name = f"{sha256}.blend"
        if sha256 in self._scenes:
            return name
        status, _, listing = await self._json("GET", "/scenes")
        if status == 200 and any(s.get("sha256") == sha256 for s in listing.get("scenes", [])):
            self._scenes.add(sha256)
            return name

        async def chunks() -> AsyncIterator[bytes]:
            async with aiofiles.open(path, "rb") as handle:
                while chunk := await handle.read(256 * 1024):
                    yield chunk

        status, _, body = await self._json(
            "POST", "/scenes", data=chunks(), headers={"Content-Type": "application/octet-stream"}
        )
        if status not in (200, 201) or body.get("sha256") != sha256:
            raise NodeLost(f"{self.url} refused the scene upload: {status} {body}")
        self._scenes.add(sha256)
        return name

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        status, _, answer = await self._json("POST", "/job", json=body)
        if status != 202:
            raise NodeLost(f"{self.url} refused the chunk: {status} {answer.get('message', answer)}")
        return dict(answer)

    async def job(self, node_job_id: str) -> tuple[int, dict[str, Any], float]:
        status, headers, body = await self._json("GET", f"/job/{node_job_id}")
        retry = float(headers.get("Retry-After", "1")) if status == 202 else 0.0
        return status, dict(body), retry

    async def cancel(self, node_job_id: str) -> None:
        try:
            await self._json("DELETE", f"/job/{node_job_id}")
        except NodeLost as exc:
            log.warning("could not cancel %s on %s: %s", node_job_id, self.url, exc)

    async def events(self, node_job_id: str) -> AsyncIterator[dict[str, Any]]:
        """The node job's events over its WebSocket (raises NodeLost if the socket cannot be held)."""
        url = self.url.replace("http", "ws", 1) + f"/job/{node_job_id}/ws"
        try:
            async with self.session.ws_connect(
                url, headers=self._headers(), heartbeat=15, timeout=aiohttp.ClientWSTimeout(ws_close=5)
            ) as ws:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    yield json.loads(msg.data)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise NodeLost(f"{self.url}: WebSocket: {exc}") from exc

    async def download(self, url_path: str, destination: Path) -> int:
        """Fetch one frame into ``destination`` (via a temporary file), checking its size."""
        partial = destination.with_name(destination.name + ".partial")
        try:
            async with self.session.get(
                self.url + url_path, headers=self._headers(), timeout=REQUEST_TIMEOUT
            ) as response:
                if response.status != 200:
                    raise FrameDownloadError(f"{self.url}{url_path} answered {response.status}")
                expected = response.content_length
                size = 0
                async with aiofiles.open(partial, "wb") as out:
                    async for chunk in response.content.iter_chunked(256 * 1024):
                        size += len(chunk)
                        await out.write(chunk)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise NodeLost(f"{self.url}: download: {exc}") from exc
        if size == 0 or (expected is not None and size != expected):
            partial.unlink(missing_ok=True)
            raise FrameDownloadError(f"{self.url}{url_path}: got {size} bytes, expected {expected}")
        partial.replace(destination)
        return size
