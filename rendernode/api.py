"""HTTP handlers: parse, call the supervisor or the store, shape the JSON. Errors are raised, not returned."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from rendernode import __version__
from rendernode.jobs import (
    ApiError,
    InvalidRequest,
    JobStatus,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    parse_job_spec,
)
from rendernode.keys import HUB, SCENES, SETTINGS, STORE, SUPERVISOR, TOKEN, VIEWS
from rendernode.store import FrameRecord, JobRecord, Store
from rendernode.supervisor import Supervisor, frame_url

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths anyone may read even when a token is configured: liveness and the page itself.
PUBLIC_PATHS = ("/health", "/", "/index.html", "/openapi.yaml")
PUBLIC_PREFIXES = ("/static/",)


# --- middlewares ---------------------------------------------------------------


def _error_response(status: int, body: dict[str, Any], retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where errors become responses: domain errors, aiohttp's own, and bugs."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error_response(exc.status, exc.body(), exc.retry_after)
    except web.HTTPRequestEntityTooLarge as exc:
        return _error_response(413, {"error": "payload_too_large", "message": exc.text or "request body too large"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason.lower().replace(" ", "_")
        response = _error_response(exc.status, {"error": reason, "message": exc.reason})
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(500, {"error": "internal_error", "message": "the node hit a bug; see its log"})


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query.get("token")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app.get(TOKEN)
    if expected and request.path not in PUBLIC_PATHS and not request.path.startswith(PUBLIC_PREFIXES):
        given = bearer_token(request) or ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized("this node needs `Authorization: Bearer <token>`")
    return await handler(request)


class RateLimiter:
    """Sliding one-minute window of job submissions per client address."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[str, deque[float]] = defaultdict(deque)

    def check(self, client: str, now: float) -> None:
        if self.per_minute <= 0:
            return
        hits = self._hits[client]
        while hits and now - hits[0] >= 60.0:
            hits.popleft()
        if len(hits) >= self.per_minute:
            raise TooManyRequests(
                f"more than {self.per_minute} submissions a minute from {client}",
                retry_after=max(1, int(60.0 - (now - hits[0])) + 1),
            )
        hits.append(now)


# --- shaping -------------------------------------------------------------------


def job_body(
    job: JobRecord,
    supervisor: Supervisor,
    frames_done: int,
    results: list[FrameRecord] | None = None,
) -> dict[str, Any]:
    live = supervisor.live_progress(job.id) if not job.status.terminal else None
    total = len(job.frames)
    body: dict[str, Any] = {
        "id": job.id,
        "status": job.status.value,
        "pid": job.pid,
        "scene": job.scene,
        "engine": job.engine,
        "format": job.format,
        "from": job.frame_from,
        "to": job.frame_to,
        "frames": {"from": job.frame_from, "to": job.frame_to, "total": total, "done": frames_done},
        "percent": live["percent"] if live else round(100.0 * frames_done / total, 2),
        "eta_seconds": live["eta_seconds"] if live else (0.0 if job.status.terminal else None),
        "current_frame": live["current_frame"] if live else None,
        "current_frame_percent": live["current_frame_percent"] if live else None,
        "queue_position": supervisor.queue_position(job.id),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "exit_code": job.exit_code,
        "error": job.error,
        "blender_version": job.blender_version,
        "links": {
            "self": f"/job/{job.id}",
            "log": f"/job/{job.id}/log",
            "ws": f"/job/{job.id}/ws",
        },
    }
    if results is not None:
        body["results"] = [
            {"frame": f.frame, "render_seconds": f.render_seconds, "url": frame_url(job.id, f.frame)} for f in results
        ]
    return body


class NodeJobViews:
    """Job bodies as this node's API shapes them, for the WebSocket snapshots."""

    def __init__(self, store: Store, supervisor: Supervisor) -> None:
        self.store = store
        self.supervisor = supervisor

    async def job_view(self, job_id: str) -> dict[str, Any] | None:
        found = await self.store.get_job_with_frames(job_id)
        if found is None:
            return None
        job, frames = found
        return job_body(job, self.supervisor, len(frames), frames)

    async def page(self, limit: int, offset: int, status: str | None) -> tuple[list[dict[str, Any]], int]:
        jobs, total = await self.store.list_jobs(limit, offset, status)
        counts = await self.store.frame_counts([j.id for j in jobs])
        return [job_body(j, self.supervisor, counts.get(j.id, 0)) for j in jobs], total


def _accepted(request: web.Request, body: dict[str, Any], retry_after: int, status: int = 202) -> web.Response:
    location = str(request.app.router["job"].url_for(job_id=body["id"]))
    return web.json_response(body, status=status, headers={"Location": location, "Retry-After": str(retry_after)})


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer", field=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}", field=name)
    return value


async def read_json(request: web.Request) -> Any:
    if request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise UnsupportedMediaType("send the job as JSON with `Content-Type: application/json`")
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON, bad UTF-8 and integers past Python's digit limit.
        raise InvalidRequest(f"the body is not valid JSON: {str(exc)[:120]}") from None


# --- handlers ------------------------------------------------------------------


async def post_job(request: web.Request) -> web.Response:
    app = request.app
    app[RATE_LIMITER].check(request.remote or "unknown", asyncio.get_running_loop().time())
    spec = parse_job_spec(await read_json(request), max_frames=app[SETTINGS].max_frames)
    supervisor = app[SUPERVISOR]
    job = await supervisor.submit(spec)
    # Read back: a fast job may already be running (pid set) by the time we answer.
    job = await app[STORE].get_job(job.id) or job
    body = job_body(job, supervisor, 0)
    return _accepted(request, body, supervisor.retry_after(job, 0))


async def _job_or_404(request: web.Request) -> tuple[JobRecord, list[FrameRecord]]:
    job_id = request.match_info["job_id"]
    found = await request.app[STORE].get_job_with_frames(job_id)
    if found is None:
        raise NotFound(f"no job {job_id!r} on this node")
    return found


async def get_job(request: web.Request) -> web.Response:
    job, frames = await _job_or_404(request)
    supervisor = request.app[SUPERVISOR]
    body = job_body(job, supervisor, len(frames), frames)
    if job.status.terminal:
        return web.json_response(body)
    return _accepted(request, body, supervisor.retry_after(job, len(frames)))


async def delete_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    await request.app[SUPERVISOR].cancel(job_id)
    job, frames = await _job_or_404(request)
    return web.json_response(job_body(job, request.app[SUPERVISOR], len(frames), frames))


async def list_jobs(request: web.Request) -> web.Response:
    """``GET /jobs``, newest first, for a node and for the farm alike."""
    limit = int_query(request, "limit", 50, 1, 500)
    offset = int_query(request, "offset", 0, 0, 2**31)
    status = request.query.get("status")
    if status is not None and status not in {s.value for s in JobStatus}:
        raise InvalidRequest("'status' must be queued, running, completed, failed or cancelled", field="status")
    jobs, total = await request.app[VIEWS].page(limit, offset, status)
    next_offset = offset + len(jobs)
    return web.json_response(
        {
            "jobs": jobs,
            "total": total,
            "limit": limit,
            "offset": offset,
            "next": f"/jobs?limit={limit}&offset={next_offset}" if next_offset < total else None,
        }
    )

def inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


async def get_frame(request: web.Request) -> web.StreamResponse:
    job, frames = await _job_or_404(request)
    raw = request.match_info["frame"]
    try:
        number = int(raw)
    except ValueError:
        raise InvalidRequest("the frame must be an integer", field="frame") from None
    record = next((f for f in frames if f.frame == number), None)
    if record is None:
        raise NotFound(f"frame {number} of job {job.id} has not been rendered")
    path = Path(record.path)
    # Only ever serve files under the output dir, whatever the database says.
    if not inside(path, request.app[SETTINGS].outputs) or not path.is_file():
        raise NotFound(f"the image of frame {number} is gone from the output dir")
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


def tail_lines(path: Path, count: int) -> bytes:
    """The last ``count`` lines of a file, read backwards in blocks."""
    with path.open("rb") as handle:
        handle.seek(0, 2)
        end = handle.tell()
        block = 64 * 1024
        data = b""
        position = end
        while position > 0 and data.count(b"\n") <= count:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
        lines = data.splitlines(keepends=True)
        return b"".join(lines[-count:]) if count else b""


async def get_log(request: web.Request) -> web.StreamResponse:
    job, _ = await _job_or_404(request)
    path = request.app[SETTINGS].logs_dir / f"{job.id}.log"
    tail = int_query(request, "tail", 0, 0, 100000) if "tail" in request.query else None
    if not path.is_file():
        return web.Response(text="", content_type="text/plain")
    if tail is None:
        return web.FileResponse(path, headers={"Content-Type": "text/plain; charset=utf-8"})
    data = await asyncio.to_thread(tail_lines, path, tail)
    return web.Response(body=data, content_type="text/plain", charset="utf-8")


async def health(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    info = supervisor.blender_info
    settings = request.app[SETTINGS]
    body = {
        "status": "ok" if info else "unavailable",
        "version": __version__,
        "blender": (
            {"path": info.executable, "version": info.version}
            if info
            else {"path": settings.blender_executable(), "error": supervisor.blender_error}
        ),
        "capacity": settings.max_concurrent,
        "running": supervisor.running_count,
        "queued": supervisor.queued_count,
        "queue_limit": settings.queue_limit,
        "subscribers": request.app[HUB].subscriber_count,
    }
    return web.json_response(body, status=200 if info else 503)


async def list_scenes(request: web.Request) -> web.Response:
    library = request.app[SCENES]
    scenes = await asyncio.to_thread(library.list)
    return web.json_response({"scenes": [s.as_json() for s in scenes], "default": library.default_scene})


async def _upload_chunks(request: web.Request) -> AsyncIterator[bytes]:
    if request.content_type.startswith("multipart/"):
        try:
            reader = await request.multipart()
            async for part in reader:
                if isinstance(part, BodyPartReader) and part.filename:
                    while chunk := await part.read_chunk(256 * 1024):
                        yield chunk
                    return
        except (HttpProcessingError, ValueError, AssertionError) as exc:
            # aiohttp's multipart parser reports malformed parts this way; they are the client's error.
            raise InvalidRequest(f"malformed multipart body: {str(exc)[:200]}") from None
        raise InvalidRequest("the multipart body has no file part")
    async for chunk in request.content.iter_chunked(256 * 1024):
        yield chunk


async def upload_scene(request: web.Request) -> web.Response:
    library = request.app[SCENES]
    if request.content_length is not None and request.content_length > library.max_upload_bytes:
        raise PayloadTooLarge(f"scene larger than this node's limit of {library.max_upload_bytes} bytes")
    result = await library.store_upload(_upload_chunks(request))
    body = {**result.scene.as_json(), "created": result.created}
    return web.json_response(body, status=201 if result.created else 200)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[STATIC_DIR] / "index.html")


async def openapi(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[STATIC_DIR] / "openapi.yaml", headers={"Content-Type": "application/yaml"})


RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
STATIC_DIR = web.AppKey("static_dir", Path)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/job", post_job)
    app.router.add_get("/job/{job_id}", get_job, name="job")
    app.router.add_delete("/job/{job_id}", delete_job)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_get("/job/{job_id}/frames/{frame}", get_frame)
    app.router.add_get("/job/{job_id}/log", get_log)
    app.router.add_get("/health", health)
    app.router.add_get("/scenes", list_scenes)
    app.router.add_post("/scenes", upload_scene)
    app.router.add_get("/", index)
    app.router.add_get("/openapi.yaml", openapi)
