"""An async client of the node's HTTP and WebSocket API, used by the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

TERMINAL = {"completed", "failed", "cancelled"}


class NodeError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


@dataclass
class NodeClient:
    base_url: str
    token: str | None = None
    session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> NodeClient:
        self.session = aiohttp.ClientSession(headers=self._headers())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        assert self.session is not None
        async with self.session.request(method, self.url(path), **kwargs) as response:
            try:
                body = await response.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                body = await response.text()
            if response.status >= 400:
                raise NodeError(response.status, body)
            return response.status, dict(response.headers), body

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        _, _, job = await self._request("POST", "/job", json=body)
        return dict(job)

    async def status(self, job_id: str) -> tuple[dict[str, Any], float | None]:
        """The job and the server's Retry-After (None once the job has ended)."""
        status, headers, job = await self._request("GET", f"/job/{job_id}")
        retry = float(headers["Retry-After"]) if status == 202 and "Retry-After" in headers else None
        return dict(job), retry

    async def cancel(self, job_id: str) -> dict[str, Any]:
        _, _, job = await self._request("DELETE", f"/job/{job_id}")
        return dict(job)

    async def events(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """The job's snapshot and then its events, until the job ends or the socket closes."""
        assert self.session is not None
        ws_url = self.url(f"/job/{job_id}/ws").replace("http", "ws", 1)
        async with self.session.ws_connect(ws_url, heartbeat=30) as ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(msg.data)
                yield event
                if event.get("type") in {"job_completed", "job_failed", "job_cancelled"}:
                    return
                if event.get("type") == "snapshot" and event["job"]["status"] in TERMINAL:
                    return

    async def wait_polling(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """Poll ``GET /job/{id}`` at the pace the server asks for, yielding each answer."""
        while True:
            job, retry = await self.status(job_id)
            yield job
            if retry is None:
                return
            await asyncio.sleep(retry)
