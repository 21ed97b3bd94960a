"""``create_app(settings)``: wiring only — state keys, one cleanup context per resource, routes, static files."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from rendernode import api, ws
from rendernode.blender import DEMO_SCENE_NAME, BlenderUnavailable, ensure_demo_scene, probe_version
from rendernode.config import Settings
from rendernode.events import EventHub
from rendernode.keys import HUB, SCENES, SETTINGS, STORE, SUPERVISOR, TOKEN, VIEWS
from rendernode.metrics import METRICS, Metrics, metrics_handler
from rendernode.scenes import SceneLibrary
from rendernode.store import Store
from rendernode.supervisor import Supervisor

log = logging.getLogger(__name__)

# JSON bodies are tiny; scene uploads stream past this limit on their own path.
MAX_JSON_BODY = 64 * 1024


def static_dir() -> Path:
    """``static/`` beside the package in a checkout or editable install, else where setup.cfg installs it."""
    for candidate in (
        Path(__file__).resolve().parent.parent / "static",
        Path(sys.prefix) / "share" / "rendernode" / "static",
    ):
        if (candidate / "index.html").is_file():
            return candidate
    raise FileNotFoundError("rendernode's static/ directory is missing from this installation")


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    yield
    await store.close()


async def supervisor_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    supervisor = app[SUPERVISOR]
    for directory in (settings.outputs, settings.scenes, settings.logs_dir):
        directory.mkdir(parents=True, exist_ok=True)
    try:
        supervisor.blender_info = await probe_version(settings.blender_executable())
        log.info("Blender %s at %s", supervisor.blender_info.version, supervisor.blender_info.executable)
        if settings.scene is None:
            await ensure_demo_scene(supervisor.blender_info, settings.scenes, settings.data_dir)
    except BlenderUnavailable as exc:
        # Keep serving (jobs, history, health) and say loudly why nothing can render.
        supervisor.blender_error = str(exc)
        log.error("Blender unavailable: %s", exc)
    await supervisor.start()
    yield
    await supervisor.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=MAX_JSON_BODY,
        middlewares=[api.error_middleware, api.auth_middleware],
    )
    store = Store(settings.db_path)
    hub = EventHub()
    scenes = SceneLibrary(settings.scenes, settings.scene or DEMO_SCENE_NAME, settings.max_upload_mb * 1024 * 1024)
    app[SETTINGS] = settings
    app[STORE] = store
    app[HUB] = hub
    app[SCENES] = scenes
    app[SUPERVISOR] = Supervisor(settings, store, hub, scenes)
    app[VIEWS] = api.NodeJobViews(store, app[SUPERVISOR])
    if settings.token:
        app[TOKEN] = settings.token
    app[api.RATE_LIMITER] = api.RateLimiter(settings.rate_limit)
    app[api.STATIC_DIR] = static_dir()
    app[ws.OPEN_SOCKETS] = set()
    app[ws.SNAPSHOTS] = ws.SnapshotCache()
    app[METRICS] = node_metrics(store, hub, app[SUPERVISOR])

    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(supervisor_ctx)
    app.on_shutdown.append(ws.close_sockets)

    api.add_routes(app)
    ws.add_routes(app)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_static("/static/", app[api.STATIC_DIR], name="static")
    return app


def node_metrics(store: Store, hub: EventHub, supervisor: Supervisor) -> Metrics:
    async def refresh(m: Metrics) -> None:
        m.set_jobs(await store.counts_by_status())
        m.queue.set(supervisor.queued_count)
        m.running.set(supervisor.running_count)
        m.subscribers.set(hub.subscriber_count)

    return Metrics.following(hub, refresh)
