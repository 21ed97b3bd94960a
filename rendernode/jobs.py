"""What a job is: the validated request, its status, and the errors the API answers with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

# Blender's own frame limits (MINAFRAME/MAXFRAME); negative frames are left out on purpose.
MAX_FRAME_NUMBER = 1048574

ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH")
FORMATS = {"PNG": "png", "JPEG": "jpg", "OPEN_EXR": "exr"}
SCENE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,200}\.blend$")


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class ApiError(Exception):
    """A domain error that knows its HTTP status; mapped to a JSON response in one middleware."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidRequest(ApiError):
    status = 400
    code = "invalid_request"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class TooManyRequests(ApiError):
    status = 429
    code = "too_many_requests"


class QueueFull(ApiError):
    status = 503
    code = "queue_full"


@dataclass(frozen=True)
class JobSpec:
    """A validated ``POST /job`` body."""

    frame_from: int
    frame_to: int
    scene: str | None
    engine: str
    format: str

    @property
    def frames(self) -> list[int]:
        return list(range(self.frame_from, self.frame_to + 1))

    @property
    def extension(self) -> str:
        return FORMATS[self.format]


class QueuedJob(Protocol):
    """What a node's and the farm's job records share: enough to announce a new job."""

    @property
    def frame_from(self) -> int: ...
    @property
    def frame_to(self) -> int: ...
    @property
    def scene(self) -> str | None: ...
    @property
    def engine(self) -> str: ...
    @property
    def format(self) -> str: ...


def queued_event(job: QueuedJob) -> dict[str, Any]:
    """The ``job_queued`` event's fields, the same on a node and on the farm."""
    total = job.frame_to - job.frame_from + 1
    return {
        "frames": {"from": job.frame_from, "to": job.frame_to, "total": total},
        "scene": job.scene,
        "engine": job.engine,
        "format": job.format,
    }


def _frame(body: dict[str, Any], name: str) -> int:
    if name not in body:
        raise InvalidRequest(
            f"'{name}' is required: the {'first' if name == 'from' else 'last'} frame to render", field=name
        )
    value = body[name]
    # bool is an int subclass in Python; JSON true is not a frame number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(
            f"'{name}' must be an integer frame number, got {type(value).__name__} {value!r:.40}", field=name
        )
    if not 0 <= value <= MAX_FRAME_NUMBER:
        raise InvalidRequest(f"'{name}' must be between 0 and {MAX_FRAME_NUMBER}", field=name)
    return value


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name, default)
    if value is None:
        value = default
    if not isinstance(value, str) or value.upper() not in allowed:
        raise InvalidRequest(f"'{name}' must be one of {', '.join(allowed)}", field=name)
    return value.upper()


def parse_job_spec(body: Any, *, max_frames: int) -> JobSpec:
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object like {"from": 1, "to": 5}')
    frame_from = _frame(body, "from")
    frame_to = _frame(body, "to")
    if frame_from > frame_to:
        raise InvalidRequest(f"'from' ({frame_from}) is after 'to' ({frame_to})", field="from")
    count = frame_to - frame_from + 1
    if count > max_frames:
        raise InvalidRequest(f"{count} frames asked for; this node renders at most {max_frames} per job", field="to")
    scene = body.get("scene")
    if scene is not None:
        scene = validate_scene_name(scene)
    engine = _choice(body, "engine", ENGINES, "CYCLES")
    fmt = _choice(body, "format", tuple(FORMATS), "PNG")
    return JobSpec(frame_from, frame_to, scene, engine, fmt)


def validate_scene_name(name: Any) -> str:
    if not isinstance(name, str) or not SCENE_NAME.match(name) or ".." in name:
        raise InvalidRequest(
            "'scene' must be the file name of a .blend in the scenes dir (no '/' or '..')", field="scene"
        )
    return name
