"""The orchestrator's HTTP face: the node's job contract, aggregated across nodes, plus node management."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from rendernode import __version__, api, ws
from rendernode.app import MAX_JSON_BODY, static_dir
from rendernode.config import default_data_dir
from rendernode.events import EventHub
from rendernode.farm.scheduler import FarmScheduler, resolve_scene
from rendernode.farm.store import FarmFrame, FarmJob, FarmStore
from rendernode.jobs import InvalidRequest, NotFound, parse_job_spec
from rendernode.keys import HUB, SCENES, TOKEN, VIEWS
from rendernode.metrics import METRICS, Metrics, metrics_handler
from rendernode.scenes import SceneLibrary


@dataclass
class FarmSettings:
    host: str = "127.0.0.1"
    port: int = 4000
    data_dir: Path = field(default_factory=lambda: default_data_dir() / "farm")
    nodes: list[str] = field(default_factory=list)
    chunk_size: int = 0
    token: str | None = None
    node_token: str | None = None
    max_frames: int = 100000
    max_upload_mb: int = 2048
    health_interval: float = 2.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "output"

    @property
    def scenes_dir(self) -> Path:
        return self.data_dir / "scenes"


def read_nodes_file(path: str) -> list[str]:
    """One node URL per line; blank lines and # comments ignored."""
    lines = Path(path).read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


FARM_SETTINGS = web.AppKey("farm_settings", FarmSettings)
FARM_STORE = web.AppKey("farm_store", FarmStore)
SCHEDULER = web.AppKey("scheduler", FarmScheduler)


def farm_job_body(
    job: FarmJob, scheduler: FarmScheduler, frames_done: int, frames: list[FarmFrame] | None = None
) -> dict[str, Any]:
    live = scheduler.progress(job.id)
    total = len(job.frames)
    body: dict[str, Any] = {
        "id": job.id,
        "status": job.status.value,
        "pid": None,
        "scene": job.scene or "(node default)",
        "engine": job.engine,
        "format": job.format,
        "from": job.frame_from,
        "to": job.frame_to,
        "frames": {"from": job.frame_from, "to": job.frame_to, "total": total, "done": frames_done},
        "percent": round(100.0 * frames_done / total, 2),
        "eta_seconds": live["eta_seconds"] if live else (0.0 if job.status.terminal else None),
        "current_frame": None,
        "current_frame_percent": None,
        "queue_position": None,
        "chunk_size": job.chunk_size or None,
        "chunks_running": live["chunks_running"] if live else [],
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "exit_code": None,
        "error": job.error,
        "blender_version": None,
        "links": {"self": f"/job/{job.id}", "ws": f"/job/{job.id}/ws"},
    }
    if frames is not None:
        body["results"] = [
            {
                "frame": f.frame,
                "node": f.node_id,
                "render_seconds": f.render_seconds,
                "size": f.size,
                "url": f"/job/{job.id}/frames/{f.frame}",
            }
            for f in frames
        ]
    return body


class FarmJobViews:
    def __init__(self, store: FarmStore, scheduler: FarmScheduler) -> None:
        self.store = store
        self.scheduler = scheduler

    async def job_view(self, job_id: str) -> dict[str, Any] | None:
        job = await self.store.farm_job(job_id)
        if job is None:
            return None
        frames = await self.store.farm_frames(job_id)
        return farm_job_body(job, self.scheduler, len(frames), frames)

    async def page(self, limit: int, offset: int, status: str | None) -> tuple[list[dict[str, Any]], int]:
        jobs, total = await self.store.farm_jobs(limit, offset, status)
        counts = await self.store.farm_frame_counts([j.id for j in jobs])
        return [farm_job_body(j, self.scheduler, counts.get(j.id, 0)) for j in jobs], total


def _retry_after(body: dict[str, Any]) -> int:
    eta = body.get("eta_seconds")
    return 2 if eta is None else int(min(max(math.ceil(eta / 4), 1), 30))


def _answer(request: web.Request, body: dict[str, Any]) -> web.Response:
    if body["status"] in ("completed", "failed", "cancelled"):
        return web.json_response(body)
    headers = {"Location": f"/job/{body['id']}", "Retry-After": str(_retry_after(body))}
    return web.json_response(body, status=202, headers=headers)


async def post_job(request: web.Request) -> web.Response:
    settings = request.app[FARM_SETTINGS]
    spec = parse_job_spec(await api.read_json(request), max_frames=settings.max_frames)
    scene, path, sha = await resolve_scene(settings.scenes_dir, spec.scene)
    job = await request.app[SCHEDULER].submit(spec, scene, path, sha)
    body = farm_job_body(job, request.app[SCHEDULER], 0)
    return web.json_response(body, status=202, headers={"Location": f"/job/{job.id}", "Retry-After": "2"})


async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    body = await request.app[VIEWS].job_view(job_id)
    if body is None:
        raise NotFound(f"no farm job {job_id!r}")
    return _answer(request, body)


async def delete_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    await request.app[SCHEDULER].cancel(job_id)
    body = await request.app[VIEWS].job_view(job_id)
    assert body is not None
    return web.json_response(body)


async def get_frame(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    try:
        number = int(request.match_info["frame"])
    except ValueError:
        raise InvalidRequest("the frame must be an integer", field="frame") from None
    frames = await request.app[FARM_STORE].farm_frames(job_id)
    record = next((f for f in frames if f.frame == number), None)
    if record is None:
        raise NotFound(f"frame {number} of farm job {job_id} has not arrived")
    path = Path(record.path)
    if not api.inside(path, request.app[FARM_SETTINGS].output_dir) or not path.is_file():
        raise NotFound(f"the image of frame {number} is gone")
    return web.FileResponse(path)


async def list_nodes(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    stats = await request.app[FARM_STORE].stats_by_node()
    nodes = []
    for node in scheduler.nodes.values():
        entry = node.as_json()
        numbers = stats.get(node.id, {})
        entry["frames_rendered"] = numbers.get("frames_rendered", 0)
        entry["chunks_done"] = numbers.get("chunks_done", 0)
        entry["chunks_failed"] = numbers.get("chunks_failed", 0)
        nodes.append(entry)
    return web.json_response({"nodes": nodes})


async def add_node(request: web.Request) -> web.Response:
    body = await api.read_json(request)
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 500:
        raise InvalidRequest("'url' must be the node's http:// or https:// address", field="url")
    node, created = await request.app[SCHEDULER].add_node(url)
    return web.json_response(node.as_json(), status=201 if created else 200)


async def delete_node(request: web.Request) -> web.Response:
    await request.app[SCHEDULER].remove_node(request.match_info["node_id"])
    return web.json_response({"removed": request.match_info["node_id"]})


async def health(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    up = [n for n in scheduler.nodes.values() if n.state == "up"]
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "role": "farm",
            "blender": {"version": up[0].blender_version if up else None, "path": None},
            "capacity": sum(n.capacity for n in up),
            "running": sum(len(n.active) for n in scheduler.nodes.values()),
            "queued": sum(1 for s in scheduler.jobs.values() if not s.runs),
            "nodes": {"total": len(scheduler.nodes), "up": len(up)},
            "subscribers": request.app[HUB].subscriber_count,
        }
    )


async def farm_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[FARM_SETTINGS]
    for directory in (settings.output_dir, settings.scenes_dir):
        directory.mkdir(parents=True, exist_ok=True)
    await app[FARM_STORE].open()
    await app[SCHEDULER].start()
    yield
    await app[SCHEDULER].close()
    await app[FARM_STORE].close()


def create_farm_app(settings: FarmSettings) -> web.Application:
    app = web.Application(client_max_size=MAX_JSON_BODY, middlewares=[api.error_middleware, api.auth_middleware])
    store = FarmStore(settings.data_dir / "farm.sqlite3")
    hub = EventHub()
    scheduler = FarmScheduler(
        store,
        hub,
        settings.output_dir,
        node_urls=settings.nodes,
        chunk_size=settings.chunk_size,
        node_token=settings.node_token,
        health_interval=settings.health_interval,
    )
    app[FARM_SETTINGS] = settings
    app[FARM_STORE] = store
    app[HUB] = hub
    app[SCHEDULER] = scheduler
    app[VIEWS] = FarmJobViews(store, scheduler)
    app[SCENES] = SceneLibrary(settings.scenes_dir, None, settings.max_upload_mb * 1024 * 1024)
    if settings.token:
        app[TOKEN] = settings.token
    app[api.STATIC_DIR] = static_dir()
    app[ws.OPEN_SOCKETS] = set()
    app[ws.SNAPSHOTS] = ws.SnapshotCache()
    app[METRICS] = farm_metrics(store, hub, scheduler)
    app.cleanup_ctx.append(farm_ctx)
    app.on_shutdown.append(ws.close_sockets)

    for path in ("/job", "/render"):  # /render: the tutorial orchestrator's name for the same thing
        app.router.add_post(path, post_job)
    app.router.add_get("/job/{job_id}", get_job, name="job")
    app.router.add_get("/status/{job_id}", get_job)
    app.router.add_delete("/job/{job_id}", delete_job)
    app.router.add_get("/jobs", api.list_jobs)
    app.router.add_get("/job/{job_id}/frames/{frame}", get_frame)
    app.router.add_get("/nodes", list_nodes)
    app.router.add_post("/nodes", add_node)
    app.router.add_delete("/nodes/{node_id}", delete_node)
    app.router.add_get("/health", health)
    app.router.add_get("/scenes", api.list_scenes)
    app.router.add_post("/scenes", api.upload_scene)
    app.router.add_get("/", api.index)
    app.router.add_get("/openapi.yaml", api.openapi)
    app.router.add_get("/metrics", metrics_handler)
    ws.add_routes(app)
    app.router.add_static("/static/", app[api.STATIC_DIR], name="static")
    return app


def farm_metrics(store: FarmStore, hub: EventHub, scheduler: FarmScheduler) -> Metrics:
    async def refresh(m: Metrics) -> None:
        m.set_jobs(await store.farm_counts_by_status())
        m.queue.set(sum(len(s.pending()) for s in scheduler.jobs.values()))
        m.running.set(sum(len(n.active) for n in scheduler.nodes.values()))
        m.subscribers.set(hub.subscriber_count)
        stats = await store.stats_by_node()
        for node in scheduler.nodes.values():
            m.node_up.labels(node.id).set(1 if node.state == "up" else 0)
            numbers = stats.get(node.id, {})
            m.node_frames.labels(node.id).set(numbers.get("frames_rendered", 0))
            for status in ("done", "failed", "cancelled", "running"):
                m.node_chunks.labels(node.id, status).set(numbers.get(f"chunks_{status}", 0))

    return Metrics.following(hub, refresh)


def run_farm(settings: FarmSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web.run_app(
        create_farm_app(settings),
        host=settings.host,
        port=settings.port,
        print=lambda _m: print(
            f"rendernode farm {__version__} on http://{settings.host}:{settings.port}"
            f" with {len(settings.nodes)} node(s)",
            flush=True,
        ),
    )
