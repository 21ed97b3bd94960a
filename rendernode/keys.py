"""Typed application state keys, shared by the handlers and ``create_app``."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from rendernode.config import Settings
from rendernode.events import EventHub
from rendernode.scenes import SceneLibrary
from rendernode.store import Store
from rendernode.supervisor import Supervisor

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
HUB = web.AppKey("hub", EventHub)
SCENES = web.AppKey("scenes", SceneLibrary)
SUPERVISOR = web.AppKey("supervisor", Supervisor)


class JobViews(Protocol):
    """How the WebSocket layer reads jobs, whether from a node or from the farm."""

    async def job_view(self, job_id: str) -> dict[str, Any] | None: ...

    async def page(self, limit: int, offset: int, status: str | None) -> tuple[list[dict[str, Any]], int]:
        """Job bodies newest first, and how many jobs match in all."""
        ...


VIEWS = web.AppKey("views", JobViews)
# The bearer token every non-public endpoint needs, or None.
TOKEN = web.AppKey("token", str)
